"""Patient-level splits: stratified k-fold for cross-validation, the inner validation split and
the three-way split of a training fold (train / early stopping / conformal calibration).

Strata combine grade and event status so every fold sees a similar mix of outcomes. Patients of
each stratum are dealt to folds in turn, the dealing continuing from one stratum to the next, so
every stratum's fold counts differ by at most one and so do the fold sizes; a stratum smaller
than the number of folds is spread over distinct folds, never dropped.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from pathgen_batch.errors import DataError


def stratified_folds(strata: Sequence[str], k: int, seed: int) -> np.ndarray:
    """Assign each item a fold in ``0..k-1`` so that every stratum is spread evenly.

    Deterministic for a given seed. Items of one stratum are shuffled and dealt round-robin,
    starting each stratum where the previous one stopped so fold sizes differ by at most one.
    Returns (N,) int64.
    """
    n = len(strata)
    if k < 2:
        raise DataError(f"folds: need at least 2 folds, got {k}")
    if n < k:
        raise DataError(f"folds: {n} patient(s) cannot fill {k} folds")
    merged = np.asarray([str(s) for s in strata], dtype=object)
    rng = np.random.default_rng(seed)
    folds = np.empty(n, dtype=np.int64)
    offset = 0
    for s in sorted(set(merged)):
        idx = np.flatnonzero(merged == s)
        idx = idx[rng.permutation(len(idx))]
        folds[idx] = (offset + np.arange(len(idx))) % k
        offset = (offset + len(idx)) % k
    return folds


def grade_event_strata(grade: Sequence[object], event: Sequence[object]) -> list[str]:
    """Stratum labels ``"<grade>|<event>"``; unknown grades form their own label."""
    if len(grade) != len(event):
        raise DataError(f"strata: {len(grade)} grades but {len(event)} event flags")
    return [
        f"{'na' if g is None or g != g else g}|{int(bool(e))}"
        for g, e in zip(grade, event, strict=True)
    ]


def inner_split(
    strata: Sequence[str], val_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Split a training fold into (train, validation) index arrays, stratified.

    The validation part is used for early stopping and conformal calibration; the outer test
    fold is never seen. Returns sorted int64 index arrays.
    """
    if not 0.0 < val_fraction < 1.0:
        raise DataError(f"validation fraction must be in (0, 1), got {val_fraction}")
    n = len(strata)
    n_val = round(n * val_fraction)
    if n_val < 1 or n - n_val < 2:
        raise DataError(
            f"inner split: {n} training patient(s) are too few for a {val_fraction:.0%} "
            "validation split"
        )
    k = max(2, round(1.0 / val_fraction))
    folds = stratified_folds(strata, k, seed)
    val = np.flatnonzero(folds == 0)
    train = np.flatnonzero(folds != 0)
    return np.sort(train), np.sort(val)


def three_way_split(
    strata: Sequence[str], val_fraction: float, cal_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Split a training fold into (train, early-stopping, calibration) index arrays, stratified.

    The early-stopping part chooses checkpoints; the calibration part is kept for conformal
    calibration only, so no patient that chose a checkpoint calibrates. Patients of each stratum
    are shuffled and placed at evenly spaced positions (with a random phase) of one dealing
    order; the first ``round(n * val_fraction)`` of that order stop early, the next
    ``round(n * cal_fraction)`` calibrate, the rest train, so every part holds each stratum in
    about its share. Deterministic for a given seed; sorted int64 arrays.
    """
    for name, f in (("validation", val_fraction), ("calibration", cal_fraction)):
        if not 0.0 < f < 1.0:
            raise DataError(f"{name} fraction must be in (0, 1), got {f}")
    if val_fraction + cal_fraction >= 1.0:
        raise DataError(
            f"validation + calibration fractions must be below 1, got "
            f"{val_fraction} + {cal_fraction}"
        )
    n = len(strata)
    n_val, n_cal = round(n * val_fraction), round(n * cal_fraction)
    if n_val < 1 or n_cal < 1 or n - n_val - n_cal < 2:
        raise DataError(
            f"three-way split: {n} training patient(s) are too few for {val_fraction:.0%} "
            f"early-stopping and {cal_fraction:.0%} calibration parts"
        )
    merged = np.asarray([str(s) for s in strata], dtype=object)
    rng = np.random.default_rng([seed, 3])
    key = np.empty(n, dtype=np.float64)
    for s in sorted(set(merged)):
        idx = np.flatnonzero(merged == s)
        idx = idx[rng.permutation(len(idx))]
        key[idx] = (np.arange(len(idx)) + rng.random()) / len(idx)
    order = np.argsort(key, kind="stable")
    val, cal = order[:n_val], order[n_val : n_val + n_cal]
    train = order[n_val + n_cal :]
    return np.sort(train), np.sort(val), np.sort(cal)
