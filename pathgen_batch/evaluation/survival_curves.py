"""Discrete survival curves: from hazards per time bin to survival, bin probabilities, and a
step function evaluated at arbitrary times.

A model predicts hazards h (N, K) over K time bins with edges (K + 1,); bin k is
``[edges[k], edges[k+1])`` and the last edge may be ``inf``. The curve itself is
:func:`pathgen_batch.models.survival.survival_curve`; here it is checked and evaluated.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np

from pathgen_batch.errors import DataError
from pathgen_batch.evaluation._checks import float_array
from pathgen_batch.models.survival import survival_curve


def survival_from_hazards(hazards: Any) -> np.ndarray:
    """Bin survival ``S[:, k] = prod_{j <= k} (1 - h[:, j])`` from discrete hazards (N, K)."""
    h = float_array("hazards", hazards, 2)
    if (h < 0).any() or (h > 1).any():
        raise DataError(f"hazards: expected values in [0, 1], got {h.min():.4g} to {h.max():.4g}")
    return survival_curve(h)  # (N, K)


def bin_probabilities_from_hazards(hazards: Any) -> np.ndarray:
    """Probability that the event falls in each bin, (N, K) from hazards (N, K).

    ``P(bin k) = S[:, k-1] * h[:, k]`` with ``S[:, -1] = 1``. The last bin is open-ended
    (``[edges[K-1], inf)``), so it takes all the mass not spent before it, ``S[:, K-2]``, and
    every row sums to one.
    """
    h = float_array("hazards", hazards, 2)
    s = survival_from_hazards(h)  # (N, K)
    before = np.concatenate([np.ones((h.shape[0], 1)), s[:, :-1]], axis=1)  # (N, K)
    p = before * h
    p[:, -1] = before[:, -1]
    return p


def survival_at_times(
    bin_survival: Any,
    bin_edges: Any,
    times: Any,
    *,
    drop_at: Literal["end", "start"] = "end",
) -> np.ndarray:
    """Evaluate a discrete survival function at arbitrary times as a step function.

    bin_survival: (N, K), ``bin_survival[:, k]`` = probability of surviving past bin k
    (non-increasing along k). bin_edges: (K + 1,) strictly increasing; bin k is
    ``[edges[k], edges[k+1])``; the last edge may be ``inf``. times: (T,). Returns (N, T).

    ``drop_at="end"`` (default): the curve steps down to ``bin_survival[:, k]`` when bin k is
    over (at ``edges[k+1]``), so ``S(t) = 1`` before ``edges[1]``. ``drop_at="start"``: it steps
    down as bin k begins (at ``edges[k]``), the pessimistic reading; ``S(t) = 1`` before
    ``edges[0]``.
    """
    s = float_array("bin_survival", bin_survival, 2)
    edges = float_array("bin_edges", bin_edges, 1, allow_nan=True, min_len=2)
    t = float_array("times", np.atleast_1d(np.asarray(times)), 1)
    k = s.shape[1]
    if np.isnan(edges).any():
        raise DataError("bin_edges: expected numbers, got NaN")
    if edges.shape[0] != k + 1:
        raise DataError(
            f"bin_edges: expected {k + 1} edges for {k} bins of bin_survival, got {edges.shape[0]}"
        )
    if not np.all(np.diff(edges) > 0):
        raise DataError(f"bin_edges: expected strictly increasing edges, got {edges.tolist()}")
    if (s < 0).any() or (s > 1).any():
        raise DataError(
            f"bin_survival: expected probabilities in [0, 1], got {s.min():.4g} to {s.max():.4g}"
        )
    if (np.diff(s, axis=1) > 1e-9).any():
        raise DataError("bin_survival: expected each row to be non-increasing over bins")
    if drop_at == "end":
        steps = np.searchsorted(edges[1:], t, side="right")  # (T,) bins completed by t
    elif drop_at == "start":
        steps = np.searchsorted(edges[:-1], t, side="right")  # (T,) bins begun by t
    else:
        raise DataError(f"drop_at: expected 'end' or 'start', got {drop_at!r}")
    padded = np.concatenate([np.ones((s.shape[0], 1)), s], axis=1)  # (N, K + 1)
    return padded[:, steps]  # (N, T)
