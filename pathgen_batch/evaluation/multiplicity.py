"""Adjusted p-values for families of tests: Holm's step-down (the family-wise error rate) and
Benjamini-Hochberg (the false discovery rate).

Both take a 1-d array of p-values (M,) and return adjusted p-values in the same order; NaN
p-values (tests that could not run) stay NaN and do not count in ``m``. A test is rejected at
level ``alpha`` when its adjusted p-value is ``<= alpha``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from pathgen_batch.errors import DataError
from pathgen_batch.evaluation._checks import float_array


def _valid_pvalues(pvalues: Any) -> tuple[np.ndarray, np.ndarray]:
    """The p-values as float64 (M,), and the indices of the non-NaN ones sorted ascending."""
    p = float_array("pvalues", pvalues, 1, allow_nan=True, min_len=0)
    finite = p[~np.isnan(p)]
    if np.isinf(p).any() or (finite < 0).any() or (finite > 1).any():
        raise DataError("pvalues: expected values in [0, 1] (or NaN)")
    valid = np.flatnonzero(~np.isnan(p))
    return p, valid[np.argsort(p[valid], kind="stable")]


def holm(pvalues: Any) -> np.ndarray:
    """Holm's step-down adjusted p-values, same shape as ``pvalues`` (M,).

    With the m non-NaN p-values sorted ascending, ``p_(1) <= ... <= p_(m)``:
    ``adj_(i) = min(1, max_{j <= i} (m - j + 1) * p_(j))``. Rejecting every test whose adjusted
    p-value is ``<= alpha`` keeps the family-wise error rate at ``alpha`` under any dependence
    between the tests (Holm 1979).
    """
    p, order = _valid_pvalues(pvalues)
    out = np.full_like(p, np.nan)
    m = order.size
    if m == 0:
        return out
    scaled = p[order] * (m - np.arange(m))  # (m,) (m - j + 1) * p_(j) for j = 1..m
    out[order] = np.minimum(np.maximum.accumulate(scaled), 1.0)
    return out


def benjamini_hochberg(pvalues: Any) -> np.ndarray:
    """Benjamini-Hochberg adjusted p-values (q-values), same shape as ``pvalues`` (M,).

    ``q_(i) = min_{j >= i} min(1, m * p_(j) / j)`` over the p-values sorted ascending, with
    ``m`` the number of non-NaN p-values. NaN p-values stay NaN and do not count in ``m``.
    """
    p, order = _valid_pvalues(pvalues)
    q = np.full_like(p, np.nan)
    m = order.size
    if m == 0:
        return q
    ranked = p[order] * m / np.arange(1, m + 1)  # (m,)
    ranked = np.minimum.accumulate(ranked[::-1])[::-1]  # running min from the largest rank
    q[order] = np.minimum(ranked, 1.0)
    return q
