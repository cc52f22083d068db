"""Split conformal prediction: grade sets, survival-bin sets and risk intervals.

A nonconformity score ``s(x, y)`` is computed on a held-out calibration set of N items; its
finite-sample quantile ``qhat`` is the k-th smallest score with ``k = ceil((N + 1)(1 - alpha))``.
For a new item exchangeable with the calibration items, the prediction set
``{y : s(x, y) <= qhat}`` contains the true y with probability at least ``1 - alpha`` (and at
most ``1 - alpha + 1 / (N + 1)`` when scores have no ties). The quantile needs ``k <= N``, i.e.
``N >= 1 / alpha - 1``; fewer calibration items is a DataError.

Scores:

- ``"lac"`` (least ambiguous set-valued classifier): ``1 - p_y``. Smallest sets on average; a
  set may be empty when no class is probable enough.
- ``"aps"`` (adaptive prediction sets, deterministic form): the total probability of the classes
  at least as probable as y, ``sum_{j: p_j >= p_y} p_j``. Sets grow with the model's uncertainty
  on the item.
- intervals: ``|target - pred|``, or ``|target - pred| / scale`` with a per-item scale (the
  generator's spread), giving ``pred +- qhat * scale``.

Calibrate on the inputs used at scoring time: risk intervals are fitted around the risk computed
from the *synthetic* transcriptome, with the risk computed from the real transcriptome as the
target, so that they cover what the real transcriptome would have said.

Survival-bin sets (:func:`fit_survival_bins`) are classification sets over time bins,
calibrated only on patients whose bin is known: those with an observed event, and those
censored inside the last, open-ended bin. Such patients are not a random sample of all patients
(early events are over-represented under censoring), so the guarantee holds for patients like
them; under heavy censoring the sets can under-cover late bins for the rest.

Fitted states are small frozen dataclasses with ``to_dict``/``from_dict`` (JSON-serialisable) so
they can be stored next to the model they calibrate.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from pathgen_batch import config
from pathgen_batch.errors import ConfigError, DataError
from pathgen_batch.evaluation._checks import (
    bool_array,
    check_alpha,
    float_array,
    int_array,
    probability_matrix,
    same_length,
)

SetMethod = Literal["lac", "aps"]
SET_METHODS: tuple[str, ...] = ("lac", "aps")
_EPS = 1e-9


# ----------------------------------------------------------------------------------------------
# The finite-sample quantile
# ----------------------------------------------------------------------------------------------


def min_calibration_size(alpha: float) -> int:
    """Smallest N for which ``ceil((N + 1)(1 - alpha)) <= N``, i.e. ``N >= 1 / alpha - 1``."""
    a = check_alpha(alpha)
    return max(1, math.ceil(1.0 / a - 1.0 - _EPS))


def conformal_quantile_index(n: int, alpha: float) -> int:
    """The 1-based rank ``k = ceil((n + 1)(1 - alpha))`` of the calibration quantile.

    Raises DataError when ``k > n`` (too few calibration points for this alpha).
    """
    a = check_alpha(alpha)
    if isinstance(n, bool) or not isinstance(n, int | np.integer) or n < 1:
        raise DataError(f"n: expected a positive number of calibration items, got {n!r}")
    k = math.ceil((n + 1) * (1.0 - a) - _EPS)
    if k > n:
        raise DataError(
            f"calibration set: alpha={a:g} needs at least {min_calibration_size(a)} calibration "
            f"items (N >= 1/alpha - 1), got {n}"
        )
    return k


def conformal_quantile(scores: Any, alpha: float) -> float:
    """The k-th smallest score, ``k = ceil((N + 1)(1 - alpha))``; scores: (N,)."""
    s = float_array("scores", scores, 1)
    k = conformal_quantile_index(int(s.shape[0]), alpha)
    return float(np.partition(s, k - 1)[k - 1])


# ----------------------------------------------------------------------------------------------
# Classification sets
# ----------------------------------------------------------------------------------------------


def class_scores(probs: Any, method: str) -> np.ndarray:
    """Nonconformity score of every candidate class, (N, K) from probabilities (N, K)."""
    p = probability_matrix("probs", probs)
    if method == "lac":
        return 1.0 - p
    if method == "aps":
        at_least = p[:, None, :] >= p[:, :, None]  # (N, K, K): [i, k, j] = p_ij >= p_ik
        return (at_least * p[:, None, :]).sum(axis=2)  # (N, K)
    raise ConfigError(f"method: expected one of {list(SET_METHODS)}, got {method!r}")


def _check_method(method: Any) -> str:
    if method not in SET_METHODS:
        raise ConfigError(f"method: expected one of {list(SET_METHODS)}, got {method!r}")
    return str(method)


@dataclass(frozen=True)
class ClassificationConformal:
    """A fitted split-conformal set predictor (grade classes or survival bins)."""

    qhat: float
    alpha: float
    method: str
    n_cal: int

    def __post_init__(self) -> None:
        check_alpha(self.alpha)
        _check_method(self.method)
        if not math.isfinite(self.qhat):
            raise ConfigError(f"qhat: expected a finite number, got {self.qhat}")
        if self.n_cal < min_calibration_size(self.alpha):
            raise ConfigError(
                f"n_cal: alpha={self.alpha:g} needs at least "
                f"{min_calibration_size(self.alpha)} calibration items, got {self.n_cal}"
            )

    def predict_sets(self, probs: Any) -> np.ndarray:
        """Prediction sets as an (N, K) bool mask from class probabilities (N, K)."""
        return class_scores(probs, self.method) <= self.qhat + _EPS

    def to_dict(self) -> dict[str, Any]:
        return config.to_dict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ClassificationConformal:
        """Strict inverse of :meth:`to_dict` (unknown keys and bad values are ConfigErrors)."""
        return config.from_dict(cls, data)


def fit_classification(
    cal_probs: Any, cal_labels: Any, alpha: float = 0.1, method: SetMethod = "aps"
) -> ClassificationConformal:
    """Calibrate prediction sets on held-out items.

    cal_probs: (N, K) class probabilities; cal_labels: (N,) true class indices in [0, K).
    """
    a = check_alpha(alpha)
    m = _check_method(method)
    p = probability_matrix("cal_probs", cal_probs)
    y = int_array("cal_labels", cal_labels, p.shape[1])
    n = same_length(cal_probs=p, cal_labels=y)
    scores = class_scores(p, m)[np.arange(n), y]  # (N,)
    return ClassificationConformal(qhat=conformal_quantile(scores, a), alpha=a, method=m, n_cal=n)


def known_bin_mask(cal_bins: Any, cal_event: Any, n_bins: int) -> np.ndarray:
    """(N,) True where the survival bin is known: an observed event, or censored in the last bin."""
    b = int_array("cal_bins", cal_bins, n_bins)
    e = bool_array("cal_event", cal_event)
    same_length(cal_bins=b, cal_event=e)
    return e | (b == n_bins - 1)


def fit_survival_bins(
    cal_bin_probs: Any,
    cal_bins: Any,
    cal_event: Any,
    alpha: float = 0.1,
    method: SetMethod = "aps",
) -> ClassificationConformal:
    """Calibrate survival-bin sets on the patients whose bin is known.

    cal_bin_probs: (N, K) probability of the event in each bin (e.g.
    ``survival.bin_probabilities_from_hazards``); cal_bins: (N,) the bin of each patient's
    follow-up time; cal_event: (N,) True = event observed. Censored patients are left out
    unless censored in the last, open-ended bin (see the module notes on what this implies).
    """
    p = probability_matrix("cal_bin_probs", cal_bin_probs)
    known = known_bin_mask(cal_bins, cal_event, p.shape[1])
    same_length(cal_bin_probs=p, cal_bins=known)
    b = int_array("cal_bins", cal_bins, p.shape[1])
    if not known.any():
        raise DataError("cal_event: no calibration patient has a known survival bin")
    return fit_classification(p[known], b[known], alpha, method)


# ----------------------------------------------------------------------------------------------
# Regression intervals
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class IntervalConformal:
    """A fitted split-conformal interval: ``pred +- qhat`` (or ``+- qhat * scale``)."""

    qhat: float
    alpha: float
    n_cal: int
    normalised: bool

    def __post_init__(self) -> None:
        check_alpha(self.alpha)
        if not math.isfinite(self.qhat) or self.qhat < 0:
            raise ConfigError(f"qhat: expected a finite non-negative number, got {self.qhat}")
        if self.n_cal < min_calibration_size(self.alpha):
            raise ConfigError(
                f"n_cal: alpha={self.alpha:g} needs at least "
                f"{min_calibration_size(self.alpha)} calibration items, got {self.n_cal}"
            )

    def predict(self, pred: Any, scale: Any = None) -> tuple[np.ndarray, np.ndarray]:
        """(lo, hi), each (N,), around point predictions pred (N,); scale (N,) if normalised."""
        p = float_array("pred", pred, 1)
        if self.normalised:
            if scale is None:
                raise DataError("scale: this interval was calibrated with a scale; give one")
            s = _check_scale(scale)
            same_length(pred=p, scale=s)
            half = self.qhat * s  # (N,)
        else:
            if scale is not None:
                raise DataError("scale: this interval was calibrated without a scale; give none")
            half = np.full_like(p, self.qhat)
        return p - half, p + half

    def to_dict(self) -> dict[str, Any]:
        return config.to_dict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> IntervalConformal:
        """Strict inverse of :meth:`to_dict` (unknown keys and bad values are ConfigErrors)."""
        return config.from_dict(cls, data)


def _check_scale(scale: Any) -> np.ndarray:
    s = float_array("scale", scale, 1)
    if (s <= 0).any():
        raise DataError(f"scale: expected positive values, got minimum {s.min():.4g}")
    return s


def fit_interval(
    cal_pred: Any, cal_target: Any, alpha: float = 0.1, scale: Any = None
) -> IntervalConformal:
    """Calibrate intervals from point predictions and targets, both (N,).

    With ``scale`` (N,) (> 0, e.g. the spread of generated samples) the score is the residual
    in units of scale, so intervals are wider where the model is less certain.
    """
    a = check_alpha(alpha)
    p = float_array("cal_pred", cal_pred, 1)
    y = float_array("cal_target", cal_target, 1)
    n = same_length(cal_pred=p, cal_target=y)
    scores = np.abs(y - p)  # (N,)
    if scale is not None:
        s = _check_scale(scale)
        same_length(cal_pred=p, scale=s)
        scores = scores / s
    return IntervalConformal(
        qhat=conformal_quantile(scores, a), alpha=a, n_cal=n, normalised=scale is not None
    )


# ----------------------------------------------------------------------------------------------
# Coverage and efficiency
# ----------------------------------------------------------------------------------------------


def _check_sets(sets: Any) -> np.ndarray:
    arr = np.asarray(sets)
    if arr.ndim != 2 or arr.dtype != bool:
        raise DataError(
            f"sets: expected an (N, K) bool mask, got shape {arr.shape} dtype {arr.dtype}"
        )
    return arr


def _check_intervals(intervals: Any) -> tuple[np.ndarray, np.ndarray]:
    if not isinstance(intervals, tuple) or len(intervals) != 2:
        raise DataError("intervals: expected a (lo, hi) pair of (N,) arrays")
    lo = float_array("lo", intervals[0], 1)
    hi = float_array("hi", intervals[1], 1)
    same_length(lo=lo, hi=hi)
    if (hi < lo).any():
        raise DataError("intervals: expected lo <= hi for every item")
    return lo, hi


def coverage(sets_or_intervals: Any, truth: Any) -> float:
    """Fraction of items whose truth lies in its set or interval.

    Sets: an (N, K) bool mask with truth (N,) class indices. Intervals: a ``(lo, hi)`` tuple of
    (N,) arrays with truth (N,) values; the bounds count as inside.
    """
    if isinstance(sets_or_intervals, tuple):
        lo, hi = _check_intervals(sets_or_intervals)
        t = float_array("truth", truth, 1)
        n = same_length(lo=lo, truth=t)
        if n == 0:
            raise DataError("truth: expected at least one item, got none")
        return float(np.mean((lo <= t) & (t <= hi)))
    sets = _check_sets(sets_or_intervals)
    y = int_array("truth", truth, sets.shape[1])
    n = same_length(sets=sets, truth=y)
    if n == 0:
        raise DataError("truth: expected at least one item, got none")
    return float(np.mean(sets[np.arange(n), y]))


def average_set_size(sets: Any) -> float:
    """Mean number of classes per prediction set; sets: (N, K) bool."""
    s = _check_sets(sets)
    if s.shape[0] == 0:
        raise DataError("sets: expected at least one item, got none")
    return float(s.sum(axis=1).mean())


def average_width(intervals: Any) -> float:
    """Mean ``hi - lo`` of a ``(lo, hi)`` pair of (N,) arrays."""
    lo, hi = _check_intervals(intervals)
    if lo.shape[0] == 0:
        raise DataError("intervals: expected at least one item, got none")
    return float(np.mean(hi - lo))
