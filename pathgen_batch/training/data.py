"""Training data: one row per patient with its tile bag, transcriptome and labels.

:func:`load_training_data` assembles a :class:`TrainingData` from a cohort (see
:mod:`pathgen_batch.cohort`; it runs the cohort's validation first and stops with its problem
lines) and a features folder (see :mod:`pathgen_batch.features`). A patient's bag is the union
of its slides' tiles; each tile keeps its slide and its level-0 x, y. Everything is checked when
the object is built, before any training starts; a problem raises a
:class:`~pathgen_batch.errors.DataError` that names the slide, patient, gene or fold at fault.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pathgen_batch.cohort import load_cohort
from pathgen_batch.cohort.splits import grade_event_strata
from pathgen_batch.errors import DataError
from pathgen_batch.features.contract import FeatureContract
from pathgen_batch.features.store import feature_uri, load_bags, read_contract
from pathgen_batch.omics.families import DEFAULT_FAMILIES, with_clustered_families
from pathgen_batch.omics.panel import GenePanel

CLINICAL_COLUMNS = ("patient_id", "grade_index", "time", "event", "fold")


@dataclass(frozen=True, eq=False)
class TrainingData:
    """A cohort ready for training; row i of every array is patient i.

    slides[i]: the patient's slide ids. bags[i]: (N_i, D) float32 features of the tiles of all
    its slides, N_i >= 1, D = contract.dim; coords[i]: (N_i, 2) int64 level-0 tile positions,
    each in its own slide; tile_slides[i]: (N_i,) int64 index into slides[i] of each tile's
    slide. expression: (P, G) float64, log units, columns in ``panel`` order; the row of a
    patient without expression (RNA measured for only some patients) is all NaN, every other
    row all finite (``expression_known``). grade: (P,) int64
    index into ``grade_classes``, -1 = unknown. time: (P,) float64 follow-up, NaN = outcome
    unknown; event: (P,) bool, True = event observed (False when unknown). folds: (P,) int64.
    """

    patient_ids: tuple[str, ...]
    slides: tuple[tuple[str, ...], ...]
    bags: tuple[np.ndarray, ...]
    coords: tuple[np.ndarray, ...]
    tile_slides: tuple[np.ndarray, ...]
    expression: np.ndarray
    grade: np.ndarray
    time: np.ndarray
    event: np.ndarray
    folds: np.ndarray
    panel: GenePanel
    contract: FeatureContract
    grade_classes: tuple[str, ...]
    n_families: int = DEFAULT_FAMILIES  # clustered per training part when the panel names none
    digest: str = field(init=False)

    def __post_init__(self) -> None:
        _validate(self)
        object.__setattr__(self, "digest", _digest(self))

    @property
    def n_patients(self) -> int:
        return len(self.patient_ids)

    @property
    def slide_ids(self) -> tuple[str, ...]:
        """Each patient's slide ids joined by ';' (the slide id itself for one slide)."""
        return tuple(";".join(s) for s in self.slides)

    @property
    def outcome_known(self) -> np.ndarray:
        """(P,) bool: the patient has a follow-up time and event status."""
        return np.isfinite(self.time)

    @property
    def expression_known(self) -> np.ndarray:
        """(P,) bool: the patient has an expression row (its other rows are all NaN)."""
        return ~np.isnan(self.expression).any(axis=1)

    def with_expression(self, idx: Sequence[int] | np.ndarray) -> np.ndarray:
        """The patients of ``idx`` (in that order) that have expression: those a generator,
        a real-expression model or an expression baseline can use."""
        ix = np.asarray(idx, dtype=np.int64)
        return ix[self.expression_known[ix]]

    @property
    def n_genes(self) -> int:
        return self.panel.n_genes

    @property
    def feature_dim(self) -> int:
        return self.contract.dim

    @property
    def n_grades(self) -> int:
        return len(self.grade_classes)

    def strata(self) -> list[str]:
        """grade x event stratum of every patient, for stratified splits."""
        grades = [None if g < 0 else int(g) for g in self.grade]
        return grade_event_strata(grades, self.event.tolist())

    def without_fold(self, fold: int) -> TrainingData:
        """Every patient except those of ``fold``: a hold-out set kept unseen for scoring."""
        keep = np.flatnonzero(self.folds != fold)
        if len(keep) == self.n_patients:
            raise DataError(f"hold-out fold {fold}: no patient has that fold")
        return self.subset(keep)

    def subset(self, idx: Sequence[int] | np.ndarray) -> TrainingData:
        """The patients at ``idx`` (in that order)."""
        ix = np.asarray(idx, dtype=np.int64)
        if ix.ndim != 1 or (ix.size and (ix.min() < 0 or ix.max() >= self.n_patients)):
            raise DataError(f"subset: expected indices in [0, {self.n_patients}), got {ix[:5]}")
        return TrainingData(
            patient_ids=tuple(self.patient_ids[i] for i in ix),
            slides=tuple(self.slides[i] for i in ix),
            bags=tuple(self.bags[i] for i in ix),
            coords=tuple(self.coords[i] for i in ix),
            tile_slides=tuple(self.tile_slides[i] for i in ix),
            expression=self.expression[ix],
            grade=self.grade[ix],
            time=self.time[ix],
            event=self.event[ix],
            folds=self.folds[ix],
            panel=self.panel,
            contract=self.contract,
            grade_classes=self.grade_classes,
            n_families=self.n_families,
        )

    def panel_for(self, idx: Sequence[int] | np.ndarray) -> GenePanel:
        """The panel of a model trained on the patients at ``idx``: the cohort's, or, when it
        names no families, its genes in families clustered on the expression of those of them
        that have expression."""
        ix = self.with_expression(idx)
        return with_clustered_families(self.panel, self.expression[ix], self.n_families)


def _validate(d: TrainingData) -> None:
    P = len(d.patient_ids)
    if P == 0:
        raise DataError("training data: no patients")
    if len(set(d.patient_ids)) != P:
        dup = sorted({p for p in d.patient_ids if d.patient_ids.count(p) > 1})
        raise DataError(f"clinical: patient id(s) {dup[:5]} appear more than once")
    if not len(d.slides) == len(d.bags) == len(d.coords) == len(d.tile_slides) == P:
        raise DataError(
            f"training data: {P} patients but {len(d.slides)} slide lists, {len(d.bags)} bags, "
            f"{len(d.coords)} coordinate arrays, {len(d.tile_slides)} tile slide arrays"
        )
    D = d.contract.dim
    for sid, bag, xy, ts, n_slides in zip(
        d.slide_ids, d.bags, d.coords, d.tile_slides, map(len, d.slides), strict=True
    ):
        if not isinstance(bag, np.ndarray) or bag.ndim != 2:
            raise DataError(f"slide {sid}: features must be an (N, D) array")
        if bag.shape[0] == 0:
            raise DataError(f"slide {sid}: feature bag has zero tiles; every slide needs >= 1")
        if bag.shape[1] != D:
            raise DataError(
                f"slide {sid}: features have dimension {bag.shape[1]}, expected {D} "
                f"(feature contract {d.contract.describe()})"
            )
        if bag.dtype != np.float32:
            raise DataError(f"slide {sid}: features must be float32, got {bag.dtype}")
        if not np.isfinite(bag).all():
            raise DataError(f"slide {sid}: features hold NaN or inf")
        if xy.shape != (bag.shape[0], 2):
            raise DataError(f"slide {sid}: coordinates must be ({bag.shape[0]}, 2), got {xy.shape}")
        if ts.shape != (bag.shape[0],) or (ts.size and (ts.min() < 0 or ts.max() >= n_slides)):
            raise DataError(
                f"slide {sid}: tile slides must be ({bag.shape[0]},) indices below {n_slides}"
            )
    G = d.panel.n_genes
    if d.expression.shape != (P, G):
        raise DataError(
            f"expression: expected shape (patients, genes) = ({P}, {G}), got {d.expression.shape}"
        )
    nan = np.isnan(d.expression)
    bad = np.isinf(d.expression) | (nan & ~nan.all(axis=1, keepdims=True))
    if bad.any():
        r, c = np.argwhere(bad)[0]
        raise DataError(
            f"expression: {int(bad.sum())} missing or non-finite value(s) in rows that are not "
            f"wholly missing, first for patient {d.patient_ids[r]} gene {d.panel.genes[c]}"
        )
    C = len(d.grade_classes)
    if C < 2:
        raise DataError(f"grade classes: expected at least 2, got {list(d.grade_classes)}")
    for name, arr in (("grade", d.grade), ("time", d.time), ("event", d.event), ("fold", d.folds)):
        if arr.shape != (P,):
            raise DataError(f"{name}: expected shape ({P},), got {arr.shape}")
    out = (d.grade < -1) | (d.grade >= C)
    if out.any():
        i = int(np.flatnonzero(out)[0])
        raise DataError(
            f"grade: patient {d.patient_ids[i]} has grade index {int(d.grade[i])}, expected "
            f"0..{C - 1} or unknown"
        )
    badt = np.isinf(d.time) | (d.time < 0)
    if badt.any():
        i = int(np.flatnonzero(badt)[0])
        raise DataError(
            f"time: patient {d.patient_ids[i]} has follow-up time {d.time[i]}, expected a finite "
            "number >= 0 (or NaN: outcome unknown)"
        )
    if d.event.dtype != np.bool_:
        raise DataError(f"event: expected a bool array, got {d.event.dtype}")
    if (d.event & np.isnan(d.time)).any():
        i = int(np.flatnonzero(d.event & np.isnan(d.time))[0])
        raise DataError(f"event: patient {d.patient_ids[i]} has an event but no time")


def _digest(d: TrainingData) -> str:
    h = hashlib.sha256()
    for s in (d.patient_ids, d.slide_ids, d.grade_classes):
        h.update("\x1f".join(s).encode() + b"\x1e")
    h.update(d.panel.digest.encode())
    h.update(d.contract.digest.encode())
    for a in (d.expression, d.grade, d.time, d.event, d.folds):
        h.update(np.ascontiguousarray(a).tobytes())
    for bag, ts in zip(d.bags, d.tile_slides, strict=True):
        h.update(np.ascontiguousarray(bag).tobytes())
        if ts.size and ts.max() > 0:  # several slides: which tile is whose
            h.update(np.ascontiguousarray(ts).tobytes())
    return "sha256:" + h.hexdigest()


def assemble(
    clinical: pd.DataFrame,
    expression: pd.DataFrame,
    panel: GenePanel,
    bags: Mapping[str, tuple[np.ndarray, np.ndarray]],
    contract: FeatureContract,
    grade_classes: Sequence[str],
    source: str = "cohort",
    *,
    slides: pd.DataFrame | None = None,
    n_families: int = DEFAULT_FAMILIES,
) -> TrainingData:
    """Build training data from tables and bags, checking every input.

    clinical: one row per patient with ``CLINICAL_COLUMNS`` (grade_index nullable; time NaN and
    event missing for an unknown outcome); expression: indexed by patient_id, one column per
    panel gene, in panel order, a row for some patients at least (the others get NaN rows);
    slides: patient_id, slide_id rows (several per patient allowed), or None for the clinical
    table's own ``slide_id`` column (one slide each); bags: slide_id -> (coords (N, 2),
    feats (N, D)). A patient's bag is its slides' bags, stacked.
    """
    missing = [c for c in CLINICAL_COLUMNS if c not in clinical.columns]
    if slides is None and "slide_id" not in clinical.columns:
        missing.append("slide_id (or a slides table)")
    if missing:
        raise DataError(f"{source}: clinical table lacks column(s) {missing}")
    cols = [str(c) for c in expression.columns]
    if cols != list(panel.genes):
        extra = [c for c in cols if c not in set(panel.genes)]
        absent = [g for g in panel.genes if g not in set(cols)]
        detail = (
            f"not in the panel: {extra[:5]}; panel genes missing: {absent[:5]}"
            if extra or absent
            else "same genes in a different order"
        )
        raise DataError(
            f"{source}: expression columns do not match the gene panel "
            f"({len(cols)} columns, {panel.n_genes} panel genes; {detail})"
        )
    pids = clinical["patient_id"].astype(str).tolist()
    index = [str(i) for i in expression.index]
    if not set(pids) & set(index):
        raise DataError(
            f"{source}: no patient has expression ({len(pids)} patient(s) in clinical, none in "
            "the expression table); the generator and the real-expression models need some"
        )
    if len(set(index)) != len(index):
        raise DataError(f"{source}: expression lists a patient more than once")
    # a patient without expression gets a row of NaN (see TrainingData.expression_known)
    expr = expression.set_axis(index, axis=0).reindex(pids).to_numpy(dtype=np.float64)
    table = clinical[["patient_id", "slide_id"]] if slides is None else slides
    per_patient = _slides_per_patient(table, pids, source)
    sids = [s for group in per_patient for s in group]
    no_feats = [s for s in sids if s not in bags]
    if no_feats:
        raise DataError(
            f"{source}: {len(no_feats)} slide(s) have no features, e.g. {no_feats[:5]}; "
            "run `pathgen-batch features extract` first"
        )
    for s in sids:
        if np.asarray(bags[s][1]).shape[0] == 0:
            raise DataError(f"slide {s}: feature bag has zero tiles; every slide needs >= 1")
    try:
        grade = clinical["grade_index"].astype("Int64").fillna(-1).to_numpy(dtype=np.int64)
    except (TypeError, ValueError) as e:
        raise DataError(f"{source}: clinical column 'grade_index' must hold integers ({e})") from e
    time = pd.to_numeric(clinical["time"], errors="coerce").to_numpy(dtype=np.float64)
    event_col = clinical["event"]
    no_event = event_col.isna().to_numpy()
    if (no_event != np.isnan(time)).any():
        i = int(np.flatnonzero(no_event != np.isnan(time))[0])
        raise DataError(
            f"{source}: patient {pids[i]} has a time or an event but not both; an unknown "
            "outcome has neither"
        )
    ev = event_col.astype(object).where(~no_event, False).to_numpy()
    if not np.isin(ev.astype(np.float64), (0.0, 1.0)).all():
        raise DataError(f"{source}: clinical column 'event' must be 0/1 or true/false")
    if clinical["fold"].isna().any():
        raise DataError(f"{source}: clinical column 'fold' has missing values")
    return TrainingData(
        patient_ids=tuple(pids),
        slides=tuple(tuple(g) for g in per_patient),
        bags=tuple(np.concatenate([np.asarray(bags[s][1]) for s in g]) for g in per_patient),
        coords=tuple(
            np.concatenate([np.asarray(bags[s][0], dtype=np.int64) for s in g]) for g in per_patient
        ),
        tile_slides=tuple(
            np.repeat(np.arange(len(g), dtype=np.int64), [len(bags[s][1]) for s in g])
            for g in per_patient
        ),
        expression=expr,
        grade=grade,
        time=time,
        event=ev.astype(bool),
        folds=clinical["fold"].to_numpy(dtype=np.int64),
        panel=panel,
        contract=contract,
        grade_classes=tuple(str(c) for c in grade_classes),
        n_families=n_families,
    )


def _slides_per_patient(table: pd.DataFrame, pids: list[str], source: str) -> list[list[str]]:
    """Each patient's slide ids (table order); every patient needs one, no slide two owners."""
    sid = table["slide_id"].astype(str)
    dup = sorted(set(sid[sid.duplicated()]))
    if dup:
        raise DataError(f"{source}: slide id(s) {dup[:5]} listed more than once")
    groups: dict[str, list[str]] = {p: [] for p in pids}
    for p, s in zip(table["patient_id"].astype(str), sid, strict=True):
        if p in groups:
            groups[p].append(s)
    none = [p for p, g in groups.items() if not g]
    if none:
        raise DataError(f"{source}: {len(none)} patient(s) have no slide, e.g. {none[:5]}")
    return [groups[p] for p in pids]


def load_training_data(
    cohort_dir: str | Path,
    features_dir: str | Path,
    contract: FeatureContract | None = None,
    settings: Mapping[str, Any] | None = None,
) -> TrainingData:
    """Validate a cohort (its problem lines in one DataError) and assemble it with its features.

    Folds are the clinical table's, else stratified folds from the cohort's settings.
    settings: ``cohort.toml`` keys given on the command line, over the file's.
    """
    cohort = load_cohort(cohort_dir, check_folds=True, settings=settings)
    sids = cohort.slide_ids
    bags = load_bags(features_dir, sids, contract)
    found = contract if contract is not None else read_contract(feature_uri(features_dir, sids[0]))
    return assemble(
        cohort.clinical.assign(fold=cohort.folds()),
        cohort.expression,
        cohort.panel,
        bags,
        found,
        cohort.grade_classes,
        source=str(cohort_dir),
        slides=cohort.slides,
        n_families=cohort.settings.n_families,
    )


def check_training_part(
    data: TrainingData, idx: np.ndarray, what: str, n_bins: int | None = None
) -> None:
    """Raise DataError unless the patients at ``idx`` can train a model.

    They need at least two grade classes among known grades and at least one event (at least
    ``n_bins`` events when time bins are fit on them). ``what`` names the part in the message.
    """
    grades = sorted({int(g) for g in data.grade[idx] if g >= 0})
    if len(grades) < 2:
        only = [data.grade_classes[g] for g in grades]
        raise DataError(
            f"{what}: {len(idx)} patient(s) with known grade(s) {only}; a grade model needs at "
            "least two grade classes"
        )
    n_events = int(data.event[idx].sum())
    if n_events == 0:
        raise DataError(f"{what}: {len(idx)} patient(s) but no events; survival needs events")
    if n_bins is not None and n_events < n_bins:
        raise DataError(
            f"{what}: {n_events} event(s) cannot place {n_bins} time-bin edges; use fewer bins"
        )


def with_expression_parts(
    data: TrainingData, tr: np.ndarray, va: np.ndarray, what: str
) -> tuple[np.ndarray, np.ndarray]:
    """The training and validation patients of ``tr`` and ``va`` that have expression; a
    DataError when fewer than two of either are left."""
    tr_e, va_e = data.with_expression(tr), data.with_expression(va)
    for name, given, kept in (("training", tr, tr_e), ("validation", va, va_e)):
        if kept.size < 2:
            raise DataError(
                f"{what}: {kept.size} of {given.size} {name} patient(s) have expression; it "
                "needs at least 2"
            )
    return tr_e, va_e


def describe(data: TrainingData) -> dict[str, Any]:
    """Counts for logs and provenance."""
    known = data.grade >= 0
    return {
        "patients": data.n_patients,
        "slides": sum(len(s) for s in data.slides),
        "outcome_known": int(data.outcome_known.sum()),
        "expression_known": int(data.expression_known.sum()),
        "genes": data.n_genes,
        "feature_dim": data.feature_dim,
        "tiles_mean": float(np.mean([b.shape[0] for b in data.bags])),
        "events": int(data.event.sum()),
        "grade_known": int(known.sum()),
        "folds": sorted({int(f) for f in data.folds}),
    }
