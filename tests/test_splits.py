"""Patient-level splits: one fold per patient, balanced strata, a disjoint inner split."""

from __future__ import annotations

import numpy as np
import pytest

from pathgen_batch.cohort.splits import (
    grade_event_strata,
    inner_split,
    stratified_folds,
    three_way_split,
)
from pathgen_batch.errors import DataError


def test_folds_balance_every_stratum_and_fold_sizes():
    strata = ["0|1"] * 11 + ["1|0"] * 7 + ["2|1"] * 3 + ["na|0"] * 2
    folds = stratified_folds(strata, 5, seed=3)
    assert folds.shape == (23,) and set(folds.tolist()) <= set(range(5))
    sizes = np.bincount(folds, minlength=5)
    assert sizes.max() - sizes.min() <= 1
    for s in set(strata):
        counts = np.bincount(folds[np.asarray(strata) == s], minlength=5)
        assert counts.max() - counts.min() <= 1, s
    assert (stratified_folds(strata, 5, seed=3) == folds).all()
    assert not (stratified_folds(strata, 5, seed=4) == folds).all()


def test_strata_labels_and_unknown_grades():
    assert grade_event_strata([0, None, 2.0, float("nan")], [True, 0, 1, False]) == [
        "0|1",
        "na|0",
        "2.0|1",
        "na|0",
    ]
    with pytest.raises(DataError, match="3 grades but 2 event flags"):
        grade_event_strata([0, 1, 2], [1, 0])


def test_inner_split_is_a_disjoint_cover():
    strata = ["a"] * 30 + ["b"] * 10
    tr, va = inner_split(strata, 0.2, seed=0)
    assert len(va) == 8 and len(tr) == 32
    assert set(tr).isdisjoint(va) and set(tr) | set(va) == set(range(40))
    assert sum(strata[i] == "b" for i in va) == 2


def test_bad_split_requests():
    with pytest.raises(DataError, match="cannot fill 5 folds"):
        stratified_folds(["a"] * 3, 5, 0)
    with pytest.raises(DataError, match="at least 2 folds"):
        stratified_folds(["a"] * 3, 1, 0)
    with pytest.raises(DataError, match="too few"):
        inner_split(["a"] * 2, 0.2, 0)
    with pytest.raises(DataError, match=r"in \(0, 1\)"):
        inner_split(["a"] * 10, 1.5, 0)


def test_three_way_split_is_a_stratified_disjoint_cover():
    strata = ["a"] * 60 + ["b"] * 20 + ["c"] * 5
    tr, va, cal = three_way_split(strata, 0.2, 0.2, seed=1)
    assert (len(va), len(cal), len(tr)) == (17, 17, 51)
    assert not (set(tr) & set(va) or set(tr) & set(cal) or set(va) & set(cal))
    assert set(tr) | set(va) | set(cal) == set(range(85))
    for part in (va, cal):
        counts = {s: sum(strata[i] == s for i in part) for s in "abc"}
        assert abs(counts["a"] - 12) <= 1 and abs(counts["b"] - 4) <= 1, counts
    again = three_way_split(strata, 0.2, 0.2, seed=1)
    assert all((x == y).all() for x, y in zip(again, (tr, va, cal), strict=True))
    other = three_way_split(strata, 0.2, 0.2, seed=2)
    assert not (other[2] == cal).all()


def test_three_way_split_refusals():
    with pytest.raises(DataError, match="below 1"):
        three_way_split(["a"] * 20, 0.5, 0.5, 0)
    with pytest.raises(DataError, match="too few"):
        three_way_split(["a"] * 3, 0.3, 0.3, 0)
    with pytest.raises(DataError, match=r"calibration fraction must be in \(0, 1\)"):
        three_way_split(["a"] * 20, 0.2, 0.0, 0)
