"""Survival metrics: Harrell's and Uno's C-index, time-dependent AUC, integrated Brier score.

Survival data are given as two 1-d arrays per set of patients: ``event`` (bool, True = the event
was observed, False = right-censored) and ``time`` (follow-up time, event or censoring).
A higher ``risk`` means an earlier expected event.

The fusion model predicts a discrete survival function over time bins;
:mod:`pathgen_batch.evaluation.survival_curves` turns its hazards into bin survival and into a
step function evaluated at arbitrary times, which is what the integrated Brier score needs.

Uno's C, the time-dependent AUC and the Brier score weight patients by the inverse probability
of censoring, estimated by Kaplan-Meier on the *training fold* (scikit-survival). Those
estimators are defined only inside the follow-up of both folds, so the evaluation times are
chosen inside ``[min(test time), min(max(test time), max(train time)))`` and the times actually
used are returned with every result.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from sksurv.exceptions import NoComparablePairException
from sksurv.metrics import (
    concordance_index_ipcw,
    cumulative_dynamic_auc,
    integrated_brier_score,
)
from sksurv.util import Surv

from pathgen_batch.errors import DataError
from pathgen_batch.evaluation._checks import bool_array, float_array, same_length
from pathgen_batch.evaluation.survival_curves import survival_at_times

DEFAULT_QUANTILES = tuple(np.round(np.linspace(0.1, 0.9, 9), 2).tolist())


def _survival_data(
    prefix: str, event: Any, time: Any, min_len: int = 2
) -> tuple[np.ndarray, np.ndarray]:
    e = bool_array(f"{prefix}event", event)
    t = float_array(f"{prefix}time", time, 1, min_len=min_len)
    same_length(**{f"{prefix}event": e, f"{prefix}time": t})
    if (t < 0).any():
        raise DataError(f"{prefix}time: expected non-negative times, got minimum {t.min():.4g}")
    return e, t


# ----------------------------------------------------------------------------------------------
# Harrell's C-index
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Concordance:
    """Harrell's concordance and the pair counts behind it."""

    cindex: float
    concordant: int
    discordant: int
    tied_risk: int
    comparable: int


def harrell_concordance(
    event: Any, time: Any, risk: Any, *, tied_tol: float = 1e-8, block: int = 512
) -> Concordance:
    """Harrell's C-index over comparable pairs.

    A pair (i, j) is comparable when patient i had the event and is known to have had it first:
    ``time[i] < time[j]``, or equal times with j censored (a patient censored at the time of an
    event is taken to have outlived it). Two events at the same time are not comparable.
    A comparable pair is concordant when ``risk[i] > risk[j]``; risks within ``tied_tol`` count
    0.5. ``C = (concordant + 0.5 * tied_risk) / comparable``.

    event, time, risk: (N,). Raises DataError for NaN risk, mismatched lengths or fewer than 2
    comparable pairs.
    """
    e, t = _survival_data("", event, time)
    r = float_array("risk", risk, 1)
    n = same_length(event=e, time=t, risk=r)
    concordant = discordant = tied = 0
    for start in range(0, n, block):
        stop = min(start + block, n)
        ti = t[start:stop, None]  # (b, 1)
        comparable = e[start:stop, None] & (
            (ti < t[None, :]) | ((ti == t[None, :]) & ~e[None, :])
        )  # (b, N)
        diff = r[start:stop, None] - r[None, :]  # (b, N)
        is_tie = np.abs(diff) <= tied_tol
        concordant += int((comparable & ~is_tie & (diff > 0)).sum())
        discordant += int((comparable & ~is_tie & (diff < 0)).sum())
        tied += int((comparable & is_tie).sum())
    total = concordant + discordant + tied
    if total < 2:
        raise DataError(
            f"C-index needs at least 2 comparable pairs (an event before another patient's "
            f"follow-up ends), got {total} among {n} patients with {int(e.sum())} event(s)"
        )
    return Concordance(
        cindex=(concordant + 0.5 * tied) / total,
        concordant=concordant,
        discordant=discordant,
        tied_risk=tied,
        comparable=total,
    )


def harrell_c_index(event: Any, time: Any, risk: Any, *, tied_tol: float = 1e-8) -> float:
    """Harrell's C-index as one number; see :func:`harrell_concordance`."""
    return harrell_concordance(event, time, risk, tied_tol=tied_tol).cindex


# ----------------------------------------------------------------------------------------------
# Evaluation times and the follow-up guard
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EvaluationTimes:
    """Times at which time-dependent metrics are evaluated, and why others were dropped.

    ``times`` lie in ``[lower, upper)``: ``lower`` is the earliest test follow-up time and
    ``upper`` the smaller of the last test and the last training follow-up time.
    """

    times: tuple[float, ...]
    lower: float
    upper: float
    dropped: tuple[float, ...] = ()

    @property
    def note(self) -> str:
        msg = f"evaluated at {len(self.times)} time(s) in [{self.lower:.6g}, {self.upper:.6g})"
        if self.dropped:
            shown = ", ".join(f"{x:.6g}" for x in self.dropped[:5])
            msg += f"; dropped {len(self.dropped)} outside that range ({shown})"
        return msg


def evaluation_times(
    train_time: Any,
    test_event: Any,
    test_time: Any,
    times: Any = None,
    *,
    quantiles: tuple[float, ...] = DEFAULT_QUANTILES,
    min_times: int = 1,
    from_first_event: bool = False,
) -> EvaluationTimes:
    """Choose evaluation times inside the follow-up of both folds.

    With ``times=None`` the defaults are the ``quantiles`` of the test-fold event times. Given
    times outside ``[lower, upper)`` are dropped and reported. ``from_first_event`` raises
    ``lower`` to the first test event (a time-dependent AUC needs at least one case). Fewer
    than ``min_times`` usable times is a DataError.
    """
    tr = float_array("train_time", train_time, 1)
    e, t = _survival_data("test_", test_event, test_time)
    if from_first_event and not e.any():
        raise DataError("test_event: no events in the test fold, the AUC has no cases")
    lower = float(t[e].min()) if from_first_event else float(t.min())
    upper = float(min(t.max(), tr.max()))
    if times is None:
        if not e.any():
            raise DataError("test_event: no events in the test fold, cannot choose times")
        candidates = np.quantile(t[e], np.asarray(quantiles, dtype=np.float64))
    else:
        candidates = float_array("times", np.atleast_1d(np.asarray(times)), 1)
    candidates = np.unique(candidates)
    keep = (candidates >= lower) & (candidates < upper)
    used = candidates[keep]
    if used.size < min_times:
        raise DataError(
            f"times: need at least {min_times} time(s) inside the follow-up range "
            f"[{lower:.6g}, {upper:.6g}) of the test fold (bounded by the training fold), "
            f"got {used.size} of {candidates.size} candidate(s)"
        )
    return EvaluationTimes(
        times=tuple(float(x) for x in used),
        lower=lower,
        upper=upper,
        dropped=tuple(float(x) for x in candidates[~keep]),
    )


def _censor_at(event: np.ndarray, time: np.ndarray, horizon: float) -> tuple[np.ndarray, ...]:
    """Administrative censoring at ``horizon``: follow-up at or beyond it becomes censored there.

    Metrics evaluated only at times before ``horizon`` are unchanged by this, and the training
    fold's censoring distribution is then never asked about times it has not seen.
    """
    beyond = time >= horizon
    if not beyond.any():
        return event, time
    return np.where(beyond, False, event), np.where(beyond, horizon, time)


def _surv(event: np.ndarray, time: np.ndarray) -> np.ndarray:
    return Surv.from_arrays(event=event, time=time)


# ----------------------------------------------------------------------------------------------
# Uno's C-index and time-dependent AUC
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class UnoConcordance:
    """Uno's IPCW C-index; ``tau`` is the truncation time used (None: no truncation)."""

    cindex: float
    tau: float | None
    note: str = ""


def uno_c_index(
    train_event: Any,
    train_time: Any,
    test_event: Any,
    test_time: Any,
    risk: Any,
    *,
    tau: float | None = None,
) -> UnoConcordance:
    """Uno's C-index (``sksurv.metrics.concordance_index_ipcw``).

    The censoring distribution is estimated on the training fold. When the test fold follows
    patients beyond the training fold's last time and ``tau`` is not given, ``tau`` is set to
    that last time (events at or after it are not counted as the earlier member of a pair) and
    the result says so.

    train_event, train_time: (N_train,); test_event, test_time, risk: (N_test,).
    """
    tre, trt = _survival_data("train_", train_event, train_time)
    e, t = _survival_data("test_", test_event, test_time)
    r = float_array("risk", risk, 1)
    same_length(test_event=e, test_time=t, risk=r)
    note = ""
    horizon = float(trt.max())
    if tau is None and t.max() >= horizon:
        tau = horizon
        note = f"truncated at tau={tau:.6g}, the last follow-up time of the training fold"
    elif tau is not None:
        tau = float(float_array("tau", [tau], 1)[0])
        if tau > horizon:
            raise DataError(
                f"tau: expected at most the last training follow-up time {horizon:.6g}, "
                f"got {tau:.6g}"
            )
    counted = e & (t < tau) if tau is not None else e
    harrell_concordance(counted, t, r)  # at least 2 comparable pairs, else DataError
    try:
        cindex = concordance_index_ipcw(_surv(tre, trt), _surv(e, t), r, tau=tau)[0]
    except (ValueError, NoComparablePairException) as err:
        raise DataError(f"Uno's C-index: {err}") from err
    return UnoConcordance(cindex=float(cindex), tau=tau, note=note)


@dataclass(frozen=True)
class TimeDependentAUC:
    """Cumulative/dynamic AUC at each evaluation time, and its survival-weighted mean."""

    times: tuple[float, ...]
    auc: tuple[float, ...]
    mean_auc: float
    note: str


def time_dependent_auc(
    train_event: Any,
    train_time: Any,
    test_event: Any,
    test_time: Any,
    risk: Any,
    times: Any = None,
) -> TimeDependentAUC:
    """Cumulative/dynamic AUC (``sksurv.metrics.cumulative_dynamic_auc``) at ``times``.

    risk: (N_test,) time-independent risk scores. Times outside the follow-up range, or before
    the first test event, are dropped (see :func:`evaluation_times`); the used times are in the
    result.
    """
    tre, trt = _survival_data("train_", train_event, train_time)
    e, t = _survival_data("test_", test_event, test_time)
    r = float_array("risk", risk, 1)
    same_length(test_event=e, test_time=t, risk=r)
    chosen = evaluation_times(trt, e, t, times, from_first_event=True)
    e_c, t_c = _censor_at(e, t, float(trt.max()))
    grid = np.asarray(chosen.times)
    try:
        auc, mean_auc = cumulative_dynamic_auc(_surv(tre, trt), _surv(e_c, t_c), r, grid)
    except ValueError as err:
        raise DataError(f"time-dependent AUC: {err}") from err
    return TimeDependentAUC(
        times=chosen.times,
        auc=tuple(float(a) for a in np.atleast_1d(auc)),
        mean_auc=float(mean_auc),
        note=chosen.note,
    )


# ----------------------------------------------------------------------------------------------
# The integrated Brier score of discrete survival curves
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class IntegratedBrier:
    """Integrated Brier score over ``[times[0], times[-1]]`` (lower is better)."""

    ibs: float
    times: tuple[float, ...]
    note: str


def integrated_brier(
    train_event: Any,
    train_time: Any,
    test_event: Any,
    test_time: Any,
    bin_survival: Any,
    bin_edges: Any,
    times: Any = None,
    *,
    n_default_times: int = 50,
    drop_at: Literal["end", "start"] = "end",
) -> IntegratedBrier:
    """Integrated Brier score (``sksurv.metrics.integrated_brier_score``) of discrete curves.

    bin_survival: (N_test, K); bin_edges: (K + 1,). The curves are evaluated at ``times`` with
    :func:`survival_at_times`; by default at ``n_default_times`` quantiles (5% to 95%) of the
    test-fold event times. At least two times must remain inside the follow-up range.
    """
    tre, trt = _survival_data("train_", train_event, train_time)
    e, t = _survival_data("test_", test_event, test_time)
    s = float_array("bin_survival", bin_survival, 2)
    same_length(test_event=e, test_time=t, bin_survival=s)
    quantiles = tuple(np.linspace(0.05, 0.95, n_default_times).tolist())
    chosen = evaluation_times(trt, e, t, times, quantiles=quantiles, min_times=2)
    grid = np.asarray(chosen.times)  # (T,)
    est = survival_at_times(s, bin_edges, grid, drop_at=drop_at)  # (N_test, T)
    e_c, t_c = _censor_at(e, t, float(trt.max()))
    try:
        ibs = integrated_brier_score(_surv(tre, trt), _surv(e_c, t_c), est, grid)
    except ValueError as err:
        raise DataError(f"integrated Brier score: {err}") from err
    return IntegratedBrier(ibs=float(ibs), times=chosen.times, note=chosen.note)


# ----------------------------------------------------------------------------------------------
# Everything for one test fold
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SurvivalReport:
    """All survival metrics of one test fold, with the times used and notes on the guards."""

    harrell_c: float
    uno_c: float
    uno_tau: float | None
    auc_times: tuple[float, ...]
    auc: tuple[float, ...]
    mean_auc: float
    ibs: float | None
    ibs_times: tuple[float, ...]
    notes: tuple[str, ...] = field(default=())

    def summary(self) -> dict[str, float]:
        """Scalar metrics, for logging (NaN where not computed)."""
        return {
            "harrell_c": self.harrell_c,
            "uno_c": self.uno_c,
            "mean_auc": self.mean_auc,
            "ibs": float("nan") if self.ibs is None else self.ibs,
        }


def survival_report(
    train_event: Any,
    train_time: Any,
    test_event: Any,
    test_time: Any,
    risk: Any,
    *,
    bin_survival: Any = None,
    bin_edges: Any = None,
    auc_times: Any = None,
    ibs_times: Any = None,
) -> SurvivalReport:
    """Harrell's C, Uno's C, time-dependent AUC and (given bin curves) the integrated Brier.

    risk: (N_test,); bin_survival: (N_test, K) and bin_edges: (K + 1,), both or neither.
    """
    if (bin_survival is None) != (bin_edges is None):
        raise DataError("bin_survival and bin_edges: give both or neither")
    harrell = harrell_c_index(test_event, test_time, risk)
    uno = uno_c_index(train_event, train_time, test_event, test_time, risk)
    auc = time_dependent_auc(train_event, train_time, test_event, test_time, risk, auc_times)
    notes = [n for n in (uno.note, f"AUC {auc.note}") if n]
    ibs: IntegratedBrier | None = None
    if bin_survival is not None:
        ibs = integrated_brier(
            train_event, train_time, test_event, test_time, bin_survival, bin_edges, ibs_times
        )
        notes.append(f"Brier {ibs.note}")
    return SurvivalReport(
        harrell_c=harrell,
        uno_c=uno.cindex,
        uno_tau=uno.tau,
        auc_times=auc.times,
        auc=auc.auc,
        mean_auc=auc.mean_auc,
        ibs=None if ibs is None else ibs.ibs,
        ibs_times=() if ibs is None else ibs.times,
        notes=tuple(notes),
    )
