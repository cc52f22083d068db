"""Bootstrap confidence intervals of pooled out-of-fold metrics, patients resampled.

A pooled metric is computed once over every patient's out-of-fold prediction (each patient
predicted by the model of the fold that held it out). Its uncertainty comes from the patients:
:func:`bootstrap_ci` draws ``n_boot`` resamples of patient indices with replacement from a
seeded generator and reports the percentile interval of the statistic over the resamples.
With repeated CV (R repeats) every patient has R out-of-fold predictions;
:func:`pooled_c_index_ci` takes them as an (R, N) array, the statistic is the mean over
repeats of the pooled Harrell C, and a resample draws the same patients for every repeat.

A resample on which the statistic cannot be computed (e.g. fewer than 2 comparable pairs)
is skipped and counted; the interval is NaN when fewer than half the resamples are usable.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from pathgen_batch.errors import ConfigError, DataError
from pathgen_batch.evaluation._checks import bool_array, float_array, same_length
from pathgen_batch.evaluation.survival import harrell_c_index


@dataclass(frozen=True)
class BootstrapCI:
    """A statistic on all patients and its percentile bootstrap interval at ``level``."""

    estimate: float
    lo: float
    hi: float
    level: float
    n_boot: int
    n_failed: int
    seed: int

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def bootstrap_ci(
    statistic: Callable[[np.ndarray], float],
    n: int,
    *,
    n_boot: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> BootstrapCI:
    """Percentile bootstrap interval of ``statistic(indices)`` over ``n`` patients.

    ``statistic`` takes an (n,) int64 array of patient indices (``arange(n)`` for the estimate,
    a resample with replacement otherwise) and returns a float; a DataError or a NaN from it
    marks the resample as failed. The interval is the ``(1 - level) / 2`` and
    ``(1 + level) / 2`` quantiles (numpy's linear interpolation) of the usable resamples.
    """
    if isinstance(n, bool) or not isinstance(n, int | np.integer) or n < 2:
        raise DataError(f"n: expected at least 2 patients to resample, got {n!r}")
    if isinstance(n_boot, bool) or not isinstance(n_boot, int | np.integer) or n_boot < 1:
        raise ConfigError(f"n_boot: expected a number of resamples >= 1, got {n_boot!r}")
    if isinstance(level, bool) or not isinstance(level, float | np.floating) or not 0 < level < 1:
        raise ConfigError(f"level: expected a number in (0, 1), got {level!r}")
    lv = float(level)
    estimate = float(statistic(np.arange(n, dtype=np.int64)))
    rng = np.random.default_rng(seed)
    values = np.full(int(n_boot), np.nan)  # (n_boot,)
    for b in range(int(n_boot)):
        idx = rng.integers(0, n, size=n)  # (n,)
        try:
            values[b] = float(statistic(idx))
        except DataError:
            continue
    usable = values[np.isfinite(values)]
    failed = int(n_boot) - int(usable.size)
    if usable.size * 2 < n_boot:
        lo = hi = float("nan")
    else:
        lo, hi = (float(q) for q in np.quantile(usable, [(1 - lv) / 2, (1 + lv) / 2]))
    return BootstrapCI(estimate, lo, hi, lv, int(n_boot), failed, int(seed))


def pooled_c_index_ci(
    event: Any,
    time: Any,
    risk: Any,
    *,
    n_boot: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> BootstrapCI:
    """Bootstrap interval of the pooled out-of-fold Harrell C.

    event, time: (N,) for the patients with a known outcome; risk: (N,) out-of-fold risks, or
    (R, N), one row per CV repeat (the statistic is then the mean over repeats of the pooled C,
    and a resample draws the same patients in every repeat).
    """
    e = bool_array("event", event)
    t = float_array("time", time, 1)
    r = np.atleast_2d(float_array("risk", risk, np.ndim(risk)))
    if r.ndim != 2:
        raise DataError(f"risk: expected an (N,) or (R, N) array, got shape {np.shape(risk)}")
    n = same_length(event=e, time=t, risk=r.T)

    def mean_c(idx: np.ndarray) -> float:
        return float(np.mean([harrell_c_index(e[idx], t[idx], row[idx]) for row in r]))

    return bootstrap_ci(mean_c, n, n_boot=n_boot, level=level, seed=seed)
