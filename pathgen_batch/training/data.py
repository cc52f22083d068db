"""Training data: one row per patient with its slide's tile bag, transcriptome and outcome.

:func:`load_training_data` assembles a :class:`TrainingData` from a cohort folder (see
:mod:`pathgen_batch.synth`) and a features folder (see :mod:`pathgen_batch.features`).
Everything is checked when the object is built, before any training starts; a problem raises a
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

from pathgen_batch.cohort.splits import grade_event_strata
from pathgen_batch.errors import DataError
from pathgen_batch.features.contract import FeatureContract
from pathgen_batch.features.store import feature_uri, load_bags, read_contract
from pathgen_batch.omics.panel import GenePanel

CLINICAL_COLUMNS = ("patient_id", "slide_id", "grade_index", "time", "event", "fold")


@dataclass(frozen=True, eq=False)
class TrainingData:
    """A cohort ready for training; row i of every array is patient i.

    bags[i]: (N_i, D) float32 tile features of the patient's slide, N_i >= 1, D = contract.dim;
    coords[i]: (N_i, 2) int64 level-0 tile positions. expression: (P, G) float64, raw units,
    columns in ``panel`` order. grade: (P,) int64 index into ``grade_classes``, -1 = unknown.
    time: (P,) float64 follow-up; event: (P,) bool, True = event observed. folds: (P,) int64.
    """

    patient_ids: tuple[str, ...]
    slide_ids: tuple[str, ...]
    bags: tuple[np.ndarray, ...]
    coords: tuple[np.ndarray, ...]
    expression: np.ndarray
    grade: np.ndarray
    time: np.ndarray
    event: np.ndarray
    folds: np.ndarray
    panel: GenePanel
    contract: FeatureContract
    grade_classes: tuple[str, ...]
    digest: str = field(init=False)

    def __post_init__(self) -> None:
        _validate(self)
        object.__setattr__(self, "digest", _digest(self))

    @property
    def n_patients(self) -> int:
        return len(self.patient_ids)

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
            slide_ids=tuple(self.slide_ids[i] for i in ix),
            bags=tuple(self.bags[i] for i in ix),
            coords=tuple(self.coords[i] for i in ix),
            expression=self.expression[ix],
            grade=self.grade[ix],
            time=self.time[ix],
            event=self.event[ix],
            folds=self.folds[ix],
            panel=self.panel,
            contract=self.contract,
            grade_classes=self.grade_classes,
        )


def _validate(d: TrainingData) -> None:
    P = len(d.patient_ids)
    if P == 0:
        raise DataError("training data: no patients")
    if len(set(d.patient_ids)) != P:
        dup = sorted({p for p in d.patient_ids if d.patient_ids.count(p) > 1})
        raise DataError(f"clinical: patient id(s) {dup[:5]} appear more than once")
    if len(d.slide_ids) != P or len(d.bags) != P or len(d.coords) != P:
        raise DataError(
            f"training data: {P} patients but {len(d.slide_ids)} slide ids, {len(d.bags)} bags, "
            f"{len(d.coords)} coordinate arrays"
        )
    D = d.contract.dim
    for sid, bag, xy in zip(d.slide_ids, d.bags, d.coords, strict=True):
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
    G = d.panel.n_genes
    if d.expression.shape != (P, G):
        raise DataError(
            f"expression: expected shape (patients, genes) = ({P}, {G}), got {d.expression.shape}"
        )
    bad = ~np.isfinite(d.expression)
    if bad.any():
        r, c = np.argwhere(bad)[0]
        raise DataError(
            f"expression: {int(bad.sum())} missing or non-finite value(s), first for patient "
            f"{d.patient_ids[r]} gene {d.panel.genes[c]}"
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
    badt = ~np.isfinite(d.time) | (d.time < 0)
    if badt.any():
        i = int(np.flatnonzero(badt)[0])
        raise DataError(
            f"time: patient {d.patient_ids[i]} has follow-up time {d.time[i]}, expected a finite "
            "number >= 0"
        )
    if d.event.dtype != np.bool_:
        raise DataError(f"event: expected a bool array, got {d.event.dtype}")


def _digest(d: TrainingData) -> str:
    h = hashlib.sha256()
    for s in (d.patient_ids, d.slide_ids, d.grade_classes):
        h.update("\x1f".join(s).encode() + b"\x1e")
    h.update(d.panel.digest.encode())
    h.update(d.contract.digest.encode())
    for a in (d.expression, d.grade, d.time, d.event, d.folds):
        h.update(np.ascontiguousarray(a).tobytes())
    for bag in d.bags:
        h.update(np.ascontiguousarray(bag).tobytes())
    return "sha256:" + h.hexdigest()


def assemble(
    clinical: pd.DataFrame,
    expression: pd.DataFrame,
    panel: GenePanel,
    bags: Mapping[str, tuple[np.ndarray, np.ndarray]],
    contract: FeatureContract,
    grade_classes: Sequence[str],
    source: str = "cohort",
) -> TrainingData:
    """Build training data from tables and bags, checking every input.

    clinical: one row per patient with ``CLINICAL_COLUMNS`` (grade_index nullable); expression:
    indexed by patient_id, one column per panel gene, in panel order; bags: slide_id ->
    (coords (N, 2), feats (N, D)).
    """
    missing = [c for c in CLINICAL_COLUMNS if c not in clinical.columns]
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
    lacking = sorted(set(pids) - set(index))
    if lacking:
        raise DataError(
            f"{source}: no expression for {len(lacking)} patient(s), e.g. {lacking[:5]}"
        )
    if len(set(index)) != len(index):
        raise DataError(f"{source}: expression lists a patient more than once")
    expr = expression.set_axis(index, axis=0).loc[pids].to_numpy(dtype=np.float64)
    sids = clinical["slide_id"].astype(str).tolist()
    no_feats = [s for s in sids if s not in bags]
    if no_feats:
        raise DataError(
            f"{source}: {len(no_feats)} slide(s) have no features, e.g. {no_feats[:5]}; "
            "run `pathgen-batch features extract` first"
        )
    try:
        grade = clinical["grade_index"].astype("Int64").fillna(-1).to_numpy(dtype=np.int64)
    except (TypeError, ValueError) as e:
        raise DataError(f"{source}: clinical column 'grade_index' must hold integers ({e})") from e
    event_col = clinical["event"]
    if event_col.isna().any():
        raise DataError(f"{source}: clinical column 'event' has missing values")
    ev = event_col.to_numpy()
    if not np.isin(ev.astype(np.float64), (0.0, 1.0)).all():
        raise DataError(f"{source}: clinical column 'event' must be 0/1 or true/false")
    if clinical["fold"].isna().any():
        raise DataError(f"{source}: clinical column 'fold' has missing values")
    return TrainingData(
        patient_ids=tuple(pids),
        slide_ids=tuple(sids),
        bags=tuple(np.asarray(bags[s][1]) for s in sids),
        coords=tuple(np.asarray(bags[s][0], dtype=np.int64) for s in sids),
        expression=expr,
        grade=grade,
        time=clinical["time"].to_numpy(dtype=np.float64),
        event=ev.astype(bool),
        folds=clinical["fold"].to_numpy(dtype=np.int64),
        panel=panel,
        contract=contract,
        grade_classes=tuple(str(c) for c in grade_classes),
    )


def load_training_data(
    cohort_dir: str | Path,
    features_dir: str | Path,
    contract: FeatureContract | None = None,
) -> TrainingData:
    """Assemble a cohort folder and its features folder into :class:`TrainingData`."""
    from pathgen_batch.synth import load_cohort

    cohort = load_cohort(cohort_dir)
    classes = cohort.meta.get("grade_classes")
    if not isinstance(classes, list) or not classes:
        raise DataError(f"{cohort_dir}: cohort.json lists no grade_classes")
    sids = cohort.clinical["slide_id"].astype(str).tolist()
    bags = load_bags(features_dir, sids, contract)
    found = contract if contract is not None else read_contract(feature_uri(features_dir, sids[0]))
    return assemble(
        cohort.clinical,
        cohort.expression,
        cohort.panel,
        bags,
        found,
        classes,
        source=str(cohort_dir),
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


def describe(data: TrainingData) -> dict[str, Any]:
    """Counts for logs and provenance."""
    known = data.grade >= 0
    return {
        "patients": data.n_patients,
        "genes": data.n_genes,
        "feature_dim": data.feature_dim,
        "tiles_mean": float(np.mean([b.shape[0] for b in data.bags])),
        "events": int(data.event.sum()),
        "grade_known": int(known.sum()),
        "folds": sorted({int(f) for f in data.folds}),
    }
