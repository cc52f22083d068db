"""Discrete-time survival: hazards, survival curves, risk, the censored NLL, time bins.

Time is cut into K bins. A model outputs K hazard logits; h_k = sigmoid(logit_k) is the
probability of the event in bin k given survival to its start, S_k = prod_{j<=k} (1 - h_j) the
probability of surviving bin k, and risk = -sum_k S_k (higher = worse prognosis).

The loss is the standard censored negative log-likelihood (as in MCAT, Chen et al. 2021), for a
patient in bin y with censorship c (c = 1 censored, c = 0 event), with S_{-1} = 1:
    uncensored (event in bin y):            -[log S_{y-1} + log h_y]
    censored (alive at the end of bin y):   -log S_y
and the MCAT weighting ``loss = (1 - alpha) * (uncensored + censored terms) + alpha *
uncensored term``; alpha = 0 (the default) is the plain likelihood. Logs are taken of values
clamped to at least ``eps``.
"""

from __future__ import annotations

from typing import overload

import numpy as np
import torch

from pathgen_batch.errors import ConfigError, DataError
from pathgen_batch.models.validation import check_floating, check_shape


def hazards_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """(B, K) logits -> (B, K) hazards in (0, 1)."""
    return torch.sigmoid(logits)


@overload
def survival_curve(hazards: torch.Tensor) -> torch.Tensor: ...
@overload
def survival_curve(hazards: np.ndarray) -> np.ndarray: ...
def survival_curve(hazards: torch.Tensor | np.ndarray) -> torch.Tensor | np.ndarray:
    """(..., K) hazards -> (..., K) S_k = prod_{j<=k} (1 - h_j) over the last axis.

    A torch tensor stays a tensor (differentiable, as the loss needs); anything else is read
    as a float64 numpy array (as the evaluation and the output tables need).
    """
    h = hazards if isinstance(hazards, torch.Tensor) else np.asarray(hazards, dtype=np.float64)
    return (1.0 - h).cumprod(-1)  # torch: dim=-1, numpy: axis=-1


def risk_from_hazards(hazards: torch.Tensor) -> torch.Tensor:
    """(B, K) hazards -> (B,) risk = -sum_k S_k."""
    return -survival_curve(hazards).sum(dim=-1)


def survival_nll(
    hazard_logits: torch.Tensor,
    bins: torch.Tensor,
    censored: torch.Tensor,
    alpha: float = 0.0,
    eps: float = 1e-7,
) -> torch.Tensor:
    """Mean censored discrete-time NLL (see the module docstring); scalar.

    hazard_logits: (B, K); bins: (B,) int64 in [0, K); censored: (B,) bool or 0/1 (1 = censored).
    """
    logits = check_floating(
        "hazard_logits", check_shape("hazard_logits", hazard_logits, (None, None), "(B, K)")
    )
    B, K = logits.shape
    y = check_shape("bins", bins, (B,), "(B,)")
    c = check_shape("censored", censored, (B,), "(B,)")
    if y.is_floating_point() or y.dtype == torch.bool:
        raise DataError(f"bins: expected an integer tensor, got {y.dtype}")
    if B and (int(y.min()) < 0 or int(y.max()) >= K):
        raise DataError(f"bins: expected values in [0, {K}), got [{int(y.min())}, {int(y.max())}]")
    c = c.to(logits.dtype)  # (B,)
    if not bool(((c == 0) | (c == 1)).all()):
        raise DataError("censored: expected 0/1 (1 = censored), got other values")
    if not 0.0 <= alpha <= 1.0:
        raise ConfigError(f"alpha: expected a number in [0, 1], got {alpha}")
    y = y.long().unsqueeze(1)  # (B, 1)
    h = hazards_from_logits(logits)  # (B, K)
    S = survival_curve(h)  # (B, K)
    S_pad = torch.cat([torch.ones_like(S[:, :1]), S], dim=1)  # (B, K+1); S_pad[:, k] = S_{k-1}
    S_before = S_pad.gather(1, y).squeeze(1).clamp(min=eps)  # (B,) S_{y-1}
    S_at = S_pad.gather(1, y + 1).squeeze(1).clamp(min=eps)  # (B,) S_y
    h_at = h.gather(1, y).squeeze(1).clamp(min=eps)  # (B,) h_y
    uncensored = -(1.0 - c) * (torch.log(S_before) + torch.log(h_at))  # (B,)
    censored_term = -c * torch.log(S_at)  # (B,)
    loss = (1.0 - alpha) * (uncensored + censored_term) + alpha * uncensored  # (B,)
    return loss.mean()


def fit_bin_edges(times: np.ndarray, events: np.ndarray, n_bins: int = 4) -> np.ndarray:
    """Bin edges (n_bins + 1,) from quantiles of the EVENT times (events == 1) of a training fold.

    Inner edges are the k/n_bins quantiles (numpy's linear interpolation) of the event times;
    the outer edges are open: 0 and +inf, so every non-negative time falls in some bin.
    """
    t = np.asarray(times, dtype=np.float64)
    e = np.asarray(events)
    if t.ndim != 1 or e.shape != t.shape:
        raise DataError(
            f"times, events: expected two 1-D arrays of one length, got {t.shape}, {e.shape}"
        )
    if not np.isfinite(t).all() or (t < 0).any():
        raise DataError("times: expected finite non-negative survival times")
    if not np.isin(e, (0, 1)).all():
        raise DataError("events: expected 0/1 (1 = event observed)")
    if isinstance(n_bins, bool) or not isinstance(n_bins, int | np.integer) or n_bins < 1:
        raise ConfigError(f"n_bins: expected an integer >= 1, got {n_bins!r}")
    event_times = t[e == 1]
    if event_times.size < n_bins:
        raise DataError(
            f"events: {n_bins} bins need at least {n_bins} events, got {event_times.size}"
        )
    inner = np.quantile(event_times, np.arange(1, n_bins) / n_bins)  # (n_bins - 1,)
    if (np.diff(inner) <= 0).any() or (inner.size and inner[0] <= 0):
        raise DataError(
            f"times: event-time quantiles {inner.tolist()} are not distinct; "
            f"use fewer than {n_bins} bins"
        )
    return np.concatenate([[0.0], inner, [np.inf]])


def to_bins(times: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """(N,) times -> (N,) int64 bin k with edges[k] < t <= edges[k+1] (bin 0 includes 0)."""
    t = np.asarray(times, dtype=np.float64)
    ed = np.asarray(edges, dtype=np.float64)
    if ed.ndim != 1 or ed.size < 2 or (np.diff(ed) <= 0).any():
        raise DataError(f"edges: expected an increasing 1-D array of >= 2 edges, got {ed.tolist()}")
    if t.ndim != 1 or not np.isfinite(t).all() or (t < ed[0]).any():
        raise DataError(f"times: expected a 1-D array of finite times >= {ed[0]}")
    return np.searchsorted(ed[1:-1], t, side="left").astype(np.int64)
