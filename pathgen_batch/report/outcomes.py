"""Cohort statistics of a report: Kaplan-Meier curves by risk group with the log-rank test,
Harrell's C-index and the grade confusion matrix."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sksurv.compare import compare_survival
from sksurv.nonparametric import kaplan_meier_estimator
from sksurv.util import Surv

from pathgen_batch.errors import DataError
from pathgen_batch.evaluation.survival import harrell_c_index

GROUP_ORDER = ("high", "intermediate", "low", "above median", "at or below median")


@dataclass(frozen=True, eq=False)  # holds arrays: compared by identity
class KMCurve:
    group: str
    n: int
    n_events: int
    time: np.ndarray  # (T,) event times, starting at 0
    survival: np.ndarray  # (T,) S(t) after each time


@dataclass(frozen=True)
class SurvivalSummary:
    curves: tuple[KMCurve, ...]
    logrank_chi2: float  # NaN with fewer than two groups
    logrank_p: float
    c_index: float
    n: int
    grouping: str  # "risk_group" (the run's groups) or "median" (split at the median risk)


def risk_groups(risk: np.ndarray, stored: np.ndarray) -> tuple[np.ndarray, str]:
    """The run's relative risk groups (cut at the fusion model's risk quantiles) when every
    slide has one and at least two are present, else a split at the median risk (a model
    without cut points leaves ``risk_group`` null)."""
    stored = np.asarray(stored, dtype=object)
    known = [g for g in stored.tolist() if isinstance(g, str)]
    if len(known) == stored.size and len(set(known)) >= 2:
        return stored, "risk_group"
    r = np.asarray(risk, dtype=np.float64)
    med = float(np.median(r))
    return np.where(r > med, "above median", "at or below median").astype(object), "median"


def survival_summary(
    time: np.ndarray, event: np.ndarray, risk: np.ndarray, groups: np.ndarray, grouping: str
) -> SurvivalSummary:
    """KM curves per group, the log-rank test across groups and Harrell's C-index of ``risk``.

    time, event, risk, groups: (N,). Rows with a missing time or event are dropped.
    """
    t = np.asarray(time, dtype=np.float64)
    e = np.asarray(event, dtype=np.float64)
    r = np.asarray(risk, dtype=np.float64)
    g = np.asarray(groups, dtype=object)
    ok = np.isfinite(t) & np.isfinite(e) & (t >= 0)
    t, e, r, g = t[ok], e[ok].astype(bool), r[ok], g[ok]
    if t.size < 2:
        raise DataError(f"clinical table: need at least 2 slides with time and event, got {t.size}")
    present = [k for k in GROUP_ORDER if k in set(g.tolist())]
    present += sorted(set(g.tolist()) - set(present))
    curves = []
    for k in present:
        m = g == k
        if m.sum() == 0:
            continue
        if e[m].any():
            tt, ss = kaplan_meier_estimator(e[m], t[m])
        else:
            tt, ss = np.array([t[m].max()]), np.array([1.0])
        curves.append(
            KMCurve(
                str(k),
                int(m.sum()),
                int(e[m].sum()),
                np.concatenate([[0.0], tt]),
                np.concatenate([[1.0], ss]),
            )
        )
    chi2, p = float("nan"), float("nan")
    if len(curves) >= 2 and e.any():
        chi2_, p_ = compare_survival(Surv.from_arrays(event=e, time=t), g.astype(str))
        chi2, p = float(chi2_), float(p_)
    c = harrell_c_index(e, t, r) if e.any() else float("nan")
    return SurvivalSummary(tuple(curves), chi2, p, c, int(t.size), grouping)


def confusion_matrix(true_idx: np.ndarray, pred_idx: np.ndarray, n_classes: int) -> np.ndarray:
    """(C, C) counts, rows true class, columns predicted; pairs with a true index < 0 skipped."""
    ti = np.asarray(true_idx, dtype=np.int64)
    pi = np.asarray(pred_idx, dtype=np.int64)
    if ti.shape != pi.shape:
        raise DataError(f"confusion matrix: {ti.shape} true vs {pi.shape} predicted labels")
    ok = (ti >= 0) & (ti < n_classes) & (pi >= 0) & (pi < n_classes)
    out = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(out, (ti[ok], pi[ok]), 1)
    return out
