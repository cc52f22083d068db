"""Scoring the finished models of one outer fold on its test patients.

Per condition (``CONDITIONS``): the survival and grade ``METRICS`` and one out-of-fold row per
test patient; for the synthetic condition, the coverage and size of its conformal grade sets
and risk intervals. The models are trained elsewhere (:mod:`pathgen_batch.training.cv`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd

from pathgen_batch.errors import DataError
from pathgen_batch.evaluation import (
    average_set_size,
    average_width,
    coverage,
    grade_metrics,
    survival_from_hazards,
    survival_report,
)
from pathgen_batch.inference.fusion import FusionPrediction, TrainedFusion
from pathgen_batch.training.cv_result import METRICS, SURVIVAL_METRICS
from pathgen_batch.training.data import TrainingData


def survival_metrics(
    data: TrainingData,
    train_idx: np.ndarray,
    test_idx: np.ndarray,
    risk: np.ndarray,
    bins_of: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]],
    notes: list[str],
    where: str,
) -> dict[str, float]:
    """``SURVIVAL_METRICS`` of test predictions (``risk`` (n_test,)) on the test patients with
    a known outcome, NaN with a note where they cannot be computed. ``bins_of(has)`` gives the
    (bin survival, bin edges) of the test patients picked by the boolean mask ``has``;
    ``train_idx``: the training part, whose censoring distribution the IPCW metrics use."""
    trn = train_idx[data.outcome_known[train_idx]]
    has = data.outcome_known[test_idx]
    te = test_idx[has]
    try:
        bins, edges = bins_of(has)
        rep = survival_report(
            data.event[trn],
            data.time[trn],
            data.event[te],
            data.time[te],
            risk[has],
            bin_survival=bins,
            bin_edges=edges,
        )
    except DataError as e:
        notes.append(f"{where}: survival metrics not computed ({e})")
        return dict.fromkeys(SURVIVAL_METRICS, float("nan"))
    ibs = float("nan") if rep.ibs is None else rep.ibs
    return {"harrell_c": rep.harrell_c, "uno_c": rep.uno_c, "td_auc": rep.mean_auc, "ibs": ibs}


def condition_metrics(
    data: TrainingData,
    train_idx: np.ndarray,
    test_idx: np.ndarray,
    pred: FusionPrediction,
    edges: np.ndarray,
    notes: list[str],
    where: str,
) -> dict[str, float]:
    """``METRICS`` of one condition's predictions ``pred`` of the test patients, NaN where a
    metric cannot be computed (with a note saying why), and ``COUNTS``: how many test
    patients the survival and the grade metrics used. ``train_idx``: the training part
    (train and validation), whose censoring distribution the IPCW metrics use."""
    has = data.outcome_known[test_idx]
    out: dict[str, float] = {
        "n_survival": int(has.sum()),
        "n_grade": int((data.grade[test_idx] >= 0).sum()),
    }
    out.update(
        survival_metrics(
            data,
            train_idx,
            test_idx,
            pred.risk,
            lambda has: (survival_from_hazards(pred.hazards[has]), edges),
            notes,
            where,
        )
    )
    te = test_idx
    known = data.grade[te] >= 0
    if known.sum() >= 2:
        labels = [data.grade_classes[g] for g in data.grade[te][known]]
        gm = grade_metrics(labels, pred.grade_probs[known], data.grade_classes)
        out.update({m: float(gm[m]) for m in METRICS if m in gm})
        notes.extend(f"{where}: {n}" for n in gm["notes"])
    else:
        notes.append(f"{where}: fewer than 2 test patients with a known grade")
        out.update({m: np.nan for m in ("accuracy", "balanced_accuracy", "macro_auc")})
        out.update({m: np.nan for m in ("macro_f1", "qwk")})
    return out


def oof_rows(
    data: TrainingData, fold: int, test_idx: np.ndarray, cond: str, pred: FusionPrediction
) -> pd.DataFrame:
    """One row per test patient of one condition: truth, prediction, hazards, sets."""
    te = test_idx
    cols: dict[str, Any] = {
        "patient_id": [data.patient_ids[i] for i in te],
        "slide_id": [data.slide_ids[i] for i in te],
        "fold": fold,
        "condition": cond,
        "time": data.time[te],
        "event": data.event[te],
        "grade_true": [data.grade_classes[g] if g >= 0 else None for g in data.grade[te]],
        "grade_pred": [data.grade_classes[g] for g in pred.grade_index],
        "risk": pred.risk,
        "risk_lo": np.nan if pred.risk_lo is None else pred.risk_lo,
        "risk_hi": np.nan if pred.risk_hi is None else pred.risk_hi,
    }
    for j, c in enumerate(data.grade_classes):
        cols[f"p_{c}"] = pred.grade_probs[:, j]
    for j in range(pred.hazards.shape[1]):
        cols[f"hazard_{j}"] = pred.hazards[:, j]
    if pred.grade_sets is not None:
        cols["grade_set"] = [
            [c for c, inside in zip(data.grade_classes, row, strict=True) if inside]
            for row in pred.grade_sets
        ]
    else:
        cols["grade_set"] = None
    return pd.DataFrame(cols)


def conformal_row(
    data: TrainingData,
    fold: int,
    test_idx: np.ndarray,
    n_cal: int,
    syn: FusionPrediction,
    real_risk: Any,
    has_expression: np.ndarray | None = None,
) -> dict[str, float]:
    """Coverage and size of the grade sets and risk intervals of the synthetic condition.

    The grade sets are scored on every test patient with a known grade; the risk intervals,
    which cover the risk of the real transcriptome (``real_risk``, one per test patient with
    expression: ``has_expression`` (n_test,) bool, default all), on those patients."""
    te = test_idx
    known = data.grade[te] >= 0
    assert syn.grade_sets is not None and syn.risk_lo is not None and syn.risk_hi is not None
    row: dict[str, float] = {"fold": fold, "n_test": len(te), "n_cal": n_cal}
    if known.any():
        sets = syn.grade_sets[known]
        row["grade_coverage"] = coverage(sets, data.grade[te][known])
        row["grade_set_size"] = average_set_size(sets)
    else:
        row["grade_coverage"] = row["grade_set_size"] = np.nan
    has = np.ones(len(te), bool) if has_expression is None else np.asarray(has_expression)
    row["n_test_risk"] = int(has.sum())
    row["risk_coverage"] = coverage((syn.risk_lo[has], syn.risk_hi[has]), real_risk)
    row["risk_width"] = average_width((syn.risk_lo, syn.risk_hi))
    return row


def loss_counts(data: TrainingData, train: np.ndarray, model: TrainedFusion) -> dict[str, int]:
    """The training patients each loss of ``model`` saw: those of ``train`` with an outcome
    and with a known grade, among those with expression when the model reads expression."""
    fit = data.with_expression(train) if model.uses_expression else train
    return {
        "n_train_survival": int(data.outcome_known[fit].sum()),
        "n_train_grade": int((data.grade[fit] >= 0).sum()),
    }
