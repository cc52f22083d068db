"""A cohort as read and checked: patients, their slides, labels (possibly missing), expression.

:class:`Cohort` is what :func:`pathgen_batch.cohort.load_cohort` returns, whatever the files
looked like (CSV or Parquet, slide columns in the clinical table or a slides table, any
declared expression unit). Tables are normalised:

- ``clinical``: one row per patient, in the clinical table's order: ``patient_id`` (str),
  ``grade`` (str or None), ``grade_index`` (Int64 into ``grade_classes``, <NA> unknown),
  ``time`` (float64, NaN unknown), ``event`` (nullable boolean, <NA> unknown), ``fold``
  (Int64, <NA> when the table gives none), then the covariates as given.
- ``slides``: one row per slide: ``patient_id``, ``slide_id``, ``slide_uri`` (an absolute
  path or an ``s3://`` URI), ``mpp`` (float64, NaN when the table gives none).
- ``expression``: (patients, genes) float64 in log units, one row per patient with
  expression (RNA may be measured for only some patients; ``without_expression`` lists the
  others), indexed by patient_id in clinical order, columns in panel order.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from pathgen_batch import storage
from pathgen_batch.cohort.format import CohortSettings
from pathgen_batch.cohort.splits import grade_event_strata, stratified_folds
from pathgen_batch.errors import DataError
from pathgen_batch.omics.panel import GenePanel

MAX_FOLDS = 10  # the most folds the inventory considers
# patients with expression that a training part needs: the generator trains on two at least
# and early-stops on two at least (its per-gene Pearson needs a pair)
MIN_EXPRESSION = 4


@dataclass(eq=False)
class Cohort:
    """A checked cohort (see the module docstring for the columns of each table)."""

    root: str
    settings: CohortSettings
    clinical: pd.DataFrame
    slides: pd.DataFrame
    expression: pd.DataFrame
    panel: GenePanel
    grade_classes: tuple[str, ...]
    covariates: tuple[str, ...] = ()
    ignored_genes: int = 0  # expression columns not in the panel
    digest: str = field(init=False)

    def __post_init__(self) -> None:
        self.digest = _digest(self)

    @property
    def patient_ids(self) -> list[str]:
        return self.clinical["patient_id"].tolist()

    @property
    def n_patients(self) -> int:
        return len(self.clinical)

    @property
    def without_expression(self) -> list[str]:
        """The patients the expression table has no row for (clinical order)."""
        have = set(self.expression.index)
        return [p for p in self.patient_ids if p not in have]

    @property
    def slide_ids(self) -> list[str]:
        """Every slide, patients in clinical order, each patient's slides in table order."""
        return self.slides["slide_id"].tolist()

    def slides_of(self, patient_id: str) -> list[str]:
        return self.slides.loc[self.slides["patient_id"] == patient_id, "slide_id"].tolist()

    def slide_uri(self, slide_id: str) -> str:
        """A slide's absolute path or ``s3://`` URI."""
        hit = self.slides.loc[self.slides["slide_id"] == slide_id, "slide_uri"]
        if hit.empty:
            ids = self.slide_ids
            raise DataError(
                f"{self.root}: no slide {slide_id!r} in this cohort "
                f"({len(ids)} slides, e.g. {ids[:3]})"
            )
        return str(hit.iloc[0])

    def slide_path(self, slide_id: str) -> Path:
        """A local slide's path (a slide in object storage is staged by the batch pipeline)."""
        uri = self.slide_uri(slide_id)
        if storage.is_s3(uri):
            raise DataError(f"slide {slide_id}: {uri} is in object storage, not a local file")
        return Path(uri)

    def folds(self) -> np.ndarray:
        """(P,) int64 fold of each patient: the table's ``fold`` column, else stratified folds
        (grade x event, ``settings.folds`` and ``settings.seed``)."""
        given = self.clinical["fold"]
        if given.notna().all():
            return given.to_numpy(dtype=np.int64)
        return stratified_folds(self.strata(), self.settings.folds, self.settings.seed)

    def strata(self) -> list[str]:
        gi = self.clinical["grade_index"]
        ev = self.clinical["event"]
        return grade_event_strata(
            [None if pd.isna(g) else int(g) for g in gi],
            ["na" if pd.isna(e) else bool(e) for e in ev],
        )

    def folds_possible(self) -> int:
        """The most folds (2..MAX_FOLDS; 0 when none) whose every training part keeps events
        and two grade classes: k needs k events and two grade classes of k patients each."""
        events = int(self.clinical["event"].fillna(False).astype(bool).sum())
        per_class = self.clinical["grade_index"].value_counts(dropna=True)
        second = int(per_class.sort_values(ascending=False).iloc[1]) if len(per_class) > 1 else 0
        k = min(events, second, self.n_patients, MAX_FOLDS)
        return k if k >= 2 else 0

    def inventory(self) -> str:
        """A human-readable summary: patients, slides, grades, events, genes, families, folds."""
        c, s = self.clinical, self.slides
        n = self.n_patients
        per = s.groupby("patient_id", sort=False).size()
        spread = ", ".join(f"{k} slide(s): {v}" for k, v in per.value_counts().sort_index().items())
        lines = [
            f"cohort {self.root} (format {self.settings.format_version}, digest "
            f"{self.digest[:19]})",
            f"  patients {n}, slides {len(s)} ({spread})",
        ]
        counts = c["grade"].value_counts(dropna=True)
        parts = [f"{g} {int(counts.get(g, 0))}" for g in self.grade_classes]
        lines.append("  grade: " + ", ".join([*parts, f"unknown {int(c['grade'].isna().sum())}"]))
        known = c["event"].notna()
        ev = int(c["event"].fillna(False).astype(bool).sum())
        t = c["time"][known]
        span = f", time {t.min():g}-{t.max():g} (median {t.median():g})" if len(t) else ""
        n_known = int(known.sum())
        lines.append(f"  events: {ev} of {n_known} known outcomes ({n - n_known} unknown){span}")
        lacking = self.without_expression
        if lacking:
            lines.append(
                f"  patients without expression: {len(lacking)} (warning; e.g. {lacking[:3]}): "
                "no generator, real-expression model or expression baseline uses them; the "
                "slide-only and synthetic-transcriptome models do"
            )
        unit = self.settings.expression_unit
        how = "log2(x + 1)" if unit in ("tpm", "fpkm", "counts") else "as given"
        extra = f"; {self.ignored_genes} expression column(s) not in the panel, unused"
        k = self.settings.n_families
        fams = (
            f"{min(k, self.panel.n_genes)} families clustered on each training fold"
            if self.panel.needs_families
            else f"{self.panel.n_families} families"
        )
        lines.append(
            f"  genes {self.panel.n_genes} in {fams}, expression "
            f"{unit} ({how}){extra if self.ignored_genes else ''}"
        )
        if not self.panel.needs_families:
            fam = ", ".join(
                f"{name} {size}"
                for name, size in zip(self.panel.family_names, self.panel.family_sizes, strict=True)
            )
            lines.append(f"  families: {fam}")
        if c["fold"].notna().all():
            sizes = c["fold"].value_counts().sort_index()
            lines.append(
                f"  folds given ({len(sizes)}): "
                + ", ".join(f"{f}: {int(m)}" for f, m in sizes.items())
            )
        else:
            lines.append(f"  folds: none given; {self.settings.folds} stratified folds are made")
        lines.append(f"  folds possible: up to {self.folds_possible()}")
        if self.covariates:
            lines.append(f"  covariates: {', '.join(self.covariates)}")
        return "\n".join(lines)


def _digest(c: Cohort) -> str:
    """sha256 of the normalised content: panel, grade classes, labels, slides, expression."""
    h = hashlib.sha256()
    h.update(c.panel.digest.encode() + b"\x1e")
    h.update("\x1f".join(c.grade_classes).encode() + b"\x1e")
    labels = c.clinical[["patient_id", "grade_index", "time", "event", "fold"]]
    h.update(labels.to_csv(index=False).encode())
    h.update(c.slides[["patient_id", "slide_id", "mpp"]].to_csv(index=False).encode())
    h.update(np.ascontiguousarray(c.expression.to_numpy(dtype=np.float64)).tobytes())
    if len(c.expression) != len(c.clinical):  # whose rows they are, when some patients lack one
        h.update(b"\x1e" + "\x1f".join(map(str, c.expression.index)).encode())
    return "sha256:" + h.hexdigest()
