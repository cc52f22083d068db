"""The baselines a reviewer expects, fit and scored on one outer fold's indices.

Survival (scored like the CV's conditions: Harrell and Uno C, mean time-dependent AUC, IBS):

- ``coxnet``: an elastic-net Cox model on the expression panel (scikit-survival
  ``CoxnetSurvivalAnalysis``); its penalty ``alpha`` is chosen on the training part only, by
  inner stratified K-fold CV over the path fitted on the training part (mean inner Harrell C;
  on ties the larger alpha, the sparser model);
- ``cox_grade``: a Cox model on the one-hot grade alone (``CoxPHSurvivalAnalysis``, a small
  ridge penalty keeps a grade without events finite); a test patient of unknown grade gets the
  training part's grade frequencies in place of the one-hot row;
- ``km_null``: the Kaplan-Meier curve of the training part for everyone and a constant risk
  (Harrell C = 0.5): the reference for the integrated Brier score.

Expression (the generator's fidelity baseline, scored by ``expression_fidelity``):

- ``ridge``: ridge regression from the mean-pooled tile features of each patient to the
  expression panel, features z-scored on the training part, ``alpha`` chosen by inner K-fold
  CV on the training part (mean per-gene Pearson of the inner out-of-fold predictions);
- ``mean_expression``: the training part's mean expression for everyone (the constant
  predictor beside which an MAE means something; its correlations are undefined).

``train_idx`` is the whole training part of the outer fold (what the CV's models use for
training and early stopping); the test fold is touched only to score. Patients without a known
outcome are left out of the survival fits and scores; patients without a known grade out of
the grade fit; patients without expression out of every fit and score of CoxNet, ridge and the
training mean (CoxNet's risk is NaN for them; ridge still predicts their expression from the
slide, for the fusion control fed ridge expression). A Cox model's predicted survival is the
step function of its Breslow baseline, represented exactly as discrete bins with an edge at each
training time, so the IBS is computed by the same
:func:`~pathgen_batch.evaluation.survival_report` as the fusion model's.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
from sklearn.linear_model import Ridge
from sksurv.linear_model import CoxnetSurvivalAnalysis, CoxPHSurvivalAnalysis
from sksurv.nonparametric import kaplan_meier_estimator
from sksurv.util import Surv

from pathgen_batch.cohort.splits import stratified_folds
from pathgen_batch.errors import ConfigError, DataError
from pathgen_batch.evaluation import (
    expression_fidelity,
    harrell_c_index,
    mean_per_gene_pearson,
)
from pathgen_batch.inference.scaling import ZScoreScaler
from pathgen_batch.training.cv_result import SURVIVAL_METRICS
from pathgen_batch.training.data import TrainingData
from pathgen_batch.training.fold_scoring import survival_metrics

SURVIVAL_BASELINES: dict[str, str] = {
    "coxnet": "CoxNet (expression)",
    "cox_grade": "Cox (grade alone)",
    "km_null": "Kaplan-Meier null",
}
EXPRESSION_BASELINES: dict[str, str] = {
    "ridge": "ridge (mean-pooled tiles)",
    "mean_expression": "training mean",
}


@dataclass(frozen=True)
class BaselineConfig:
    """Hyper-parameter grids and inner CV of the baselines; nothing here is tuned on test folds.

    inner_folds: K of the inner CV on the training part; l1_ratio: CoxNet's elastic-net mix
    (1 = lasso); n_alphas, alpha_min_ratio: CoxNet's penalty path; cox_ridge: the ridge penalty
    of the grade-only Cox model; ridge_alphas: the grid of the expression ridge; seed: the
    inner folds' seed.
    """

    inner_folds: int = 3
    l1_ratio: float = 0.5
    n_alphas: int = 30
    alpha_min_ratio: float = 0.01
    cox_ridge: float = 1e-3
    ridge_alphas: tuple[float, ...] = (0.01, 0.1, 1.0, 10.0, 100.0, 1e3, 1e4, 1e5)
    seed: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.inner_folds, bool) or self.inner_folds < 2:
            raise ConfigError(f"BaselineConfig.inner_folds: expected >= 2, got {self.inner_folds}")
        if not 0.0 < self.l1_ratio <= 1.0:
            raise ConfigError(f"BaselineConfig.l1_ratio: expected (0, 1], got {self.l1_ratio}")
        if self.n_alphas < 2 or not 0.0 < self.alpha_min_ratio < 1.0:
            raise ConfigError(
                "BaselineConfig: expected n_alphas >= 2 and alpha_min_ratio in (0, 1), got "
                f"{self.n_alphas} and {self.alpha_min_ratio}"
            )
        if self.cox_ridge < 0 or not self.ridge_alphas or min(self.ridge_alphas) <= 0:
            raise ConfigError(
                "BaselineConfig: expected cox_ridge >= 0 and positive ridge_alphas, got "
                f"{self.cox_ridge} and {self.ridge_alphas}"
            )


@dataclass(frozen=True, eq=False)
class SurvivalBaseline:
    """One survival baseline on one test fold.

    metrics: ``SURVIVAL_METRICS`` -> value (NaN where not computable, with a note); risk: (n_test,)
    risk of every test patient (higher = earlier event; NaN where no prediction was possible);
    params: the chosen hyper-parameters.
    """

    name: str
    metrics: dict[str, float]
    risk: np.ndarray
    params: dict[str, float] = field(default_factory=dict)
    notes: tuple[str, ...] = ()


@dataclass(frozen=True, eq=False)
class ExpressionBaseline:
    """One expression baseline on one test fold: fidelity summary (the keys of
    :func:`~pathgen_batch.evaluation.expression_fidelity`), predicted (n_test, G), params."""

    name: str
    fidelity: dict[str, float]
    predicted: np.ndarray
    params: dict[str, float] = field(default_factory=dict)
    notes: tuple[str, ...] = ()


@dataclass(frozen=True, eq=False)
class FoldBaselines:
    """Every baseline of one outer fold, by name (see ``SURVIVAL_BASELINES`` and
    ``EXPRESSION_BASELINES``)."""

    survival: dict[str, SurvivalBaseline]
    expression: dict[str, ExpressionBaseline]

    def notes(self) -> list[str]:
        """Every baseline's notes, each prefixed with the baseline's name."""
        out = [f"{b.name}: {n}" for b in self.survival.values() for n in b.notes]
        return out + [f"{b.name}: {n}" for b in self.expression.values() for n in b.notes]


def fold_baselines(
    data: TrainingData,
    train_idx: np.ndarray,
    test_idx: np.ndarray,
    cfg: BaselineConfig | None = None,
) -> FoldBaselines:
    """Fit every baseline on ``train_idx`` and score it on ``test_idx`` (see the module doc)."""
    cfg = cfg or BaselineConfig()
    tr = np.asarray(train_idx, dtype=np.int64)
    te = np.asarray(test_idx, dtype=np.int64)
    if np.intersect1d(tr, te).size:
        raise DataError("baselines: the training part and the test fold share patients")
    return FoldBaselines(
        survival={
            "coxnet": coxnet_expression(data, tr, te, cfg),
            "cox_grade": cox_grade(data, tr, te, cfg),
            "km_null": km_null(data, tr, te),
        },
        expression={
            "ridge": ridge_expression(data, tr, te, cfg),
            "mean_expression": mean_expression(data, tr, te),
        },
    )


# ----------------------------------------------------------------------------------------------
# Survival
# ----------------------------------------------------------------------------------------------


def coxnet_expression(
    data: TrainingData, train_idx: np.ndarray, test_idx: np.ndarray, cfg: BaselineConfig
) -> SurvivalBaseline:
    """Elastic-net Cox on the z-scored expression panel, alpha by inner CV on the training part;
    the patients without expression are left out (their risk is NaN)."""
    risk_all = np.full(len(test_idx), np.nan)
    has = data.expression_known[test_idx]
    train_idx, test_idx = data.with_expression(train_idx), test_idx[has]
    trn = train_idx[data.outcome_known[train_idx]]
    notes: list[str] = []
    with _recorded(notes):
        path = _coxnet(cfg).fit(_zscored(data.expression, trn, trn), _surv(data, trn)).alphas_
        inner = stratified_folds([str(int(e)) for e in data.event[trn]], cfg.inner_folds, cfg.seed)
        scores = np.full((cfg.inner_folds, path.size), np.nan)  # (K_inner, A)
        for k in range(cfg.inner_folds):
            fit_i, val_i = trn[inner != k], trn[inner == k]
            try:
                model = _coxnet(cfg, path).fit(
                    _zscored(data.expression, fit_i, fit_i), _surv(data, fit_i)
                )
            except ArithmeticError as e:  # sksurv: weights too large at the smallest alphas
                notes.append(f"inner fold {k} not fitted ({e})")
                continue
            x_val = _zscored(data.expression, fit_i, val_i)
            for j, a in enumerate(path):
                scores[k, j] = _c_or_nan(data, val_i, model.predict(x_val, alpha=a))
        mean = np.asarray(
            [np.nanmean(c) if np.isfinite(c).any() else -np.inf for c in scores.T]
        )  # (A,) mean inner C per alpha
        best = float(path[int(np.argmax(mean))])  # first maximum: the largest such alpha
        if best == path[-1]:
            notes.append(f"alpha {best:.3g} is the smallest of the path; lower alpha_min_ratio")
        final = _coxnet(cfg, path, baseline=True).fit(
            _zscored(data.expression, trn, trn), _surv(data, trn)
        )
        x_test = _zscored(data.expression, trn, test_idx)
        risk = final.predict(x_test, alpha=best)
        surv = final.predict_survival_function(x_test, alpha=best, return_array=True)
    n_coef = int(np.count_nonzero(final.coef_[:, list(path).index(best)]))
    metrics = _survival_metrics(
        data, train_idx, test_idx, risk, surv, final.unique_times_, notes, "coxnet"
    )
    params = {"alpha": best, "inner_c": float(mean.max()), "nonzero_genes": float(n_coef)}
    risk_all[has] = risk
    return SurvivalBaseline("coxnet", metrics, risk_all, params, tuple(notes))


def cox_grade(
    data: TrainingData, train_idx: np.ndarray, test_idx: np.ndarray, cfg: BaselineConfig
) -> SurvivalBaseline:
    """Cox on the one-hot grade (first class the reference); unknown test grades imputed by the
    training part's class frequencies."""
    trn = train_idx[data.outcome_known[train_idx] & (data.grade[train_idx] >= 0)]
    notes: list[str] = []
    onehot = np.eye(data.n_grades)[:, 1:]  # (C, C - 1): class -> columns, reference dropped
    x_train = onehot[data.grade[trn]]  # (n, C - 1)
    freq = x_train.mean(axis=0)  # (C - 1,)
    g_test = data.grade[test_idx]
    x_test = np.where((g_test >= 0)[:, None], onehot[np.maximum(g_test, 0)], freq)  # (n_te, C-1)
    if (g_test < 0).any():
        notes.append(f"{int((g_test < 0).sum())} test patient(s) of unknown grade imputed")
    with _recorded(notes):
        model = CoxPHSurvivalAnalysis(alpha=cfg.cox_ridge, ties="efron").fit(
            x_train, _surv(data, trn)
        )
        risk = model.predict(x_test)
        surv = model.predict_survival_function(x_test, return_array=True)
    metrics = _survival_metrics(
        data, train_idx, test_idx, risk, surv, model.unique_times_, notes, "cox_grade"
    )
    params = {
        f"coef_{c}": float(b) for c, b in zip(data.grade_classes[1:], model.coef_, strict=True)
    }
    return SurvivalBaseline("cox_grade", metrics, risk, params, tuple(notes))


def km_null(data: TrainingData, train_idx: np.ndarray, test_idx: np.ndarray) -> SurvivalBaseline:
    """The training part's Kaplan-Meier curve for every test patient, constant risk 0."""
    trn = train_idx[data.outcome_known[train_idx]]
    times, curve = kaplan_meier_estimator(data.event[trn], data.time[trn])
    n = len(test_idx)
    risk = np.zeros(n)
    notes: list[str] = []
    surv = np.broadcast_to(curve, (n, curve.size))  # (n_test, m)
    metrics = _survival_metrics(data, train_idx, test_idx, risk, surv, times, notes, "km_null")
    return SurvivalBaseline("km_null", metrics, risk, {}, tuple(notes))


def step_survival_bins(times: np.ndarray, surv: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A right-continuous step survival function as discrete bins, exactly.

    times: (m,) strictly increasing; surv: (N, m), ``surv[:, j] = S(times[j])``, constant until
    ``times[j + 1]``, and ``S = 1`` before ``times[0]``. Returns bin_survival (N, m + 1) and
    edges (m + 2,) = ``[times[0] - 1, times..., inf]``: read by
    :func:`~pathgen_batch.evaluation.survival_at_times` (``drop_at="end"``), bin j ends at
    ``times[j]``, so the curve is 1 before ``times[0]`` and ``surv[:, j]`` on
    ``[times[j], times[j + 1])``.
    """
    t = np.asarray(times, dtype=np.float64)
    s = np.asarray(surv, dtype=np.float64)
    edges = np.concatenate([[t[0] - 1.0], t, [np.inf]])  # (m + 2,)
    bins = np.concatenate([s, s[:, -1:]], axis=1)  # (N, m + 1)
    return np.clip(np.minimum.accumulate(bins, axis=1), 0.0, 1.0), edges


def _survival_metrics(
    data: TrainingData,
    train_idx: np.ndarray,
    test_idx: np.ndarray,
    risk: np.ndarray,
    surv: np.ndarray,
    times: np.ndarray,
    notes: list[str],
    where: str,
) -> dict[str, float]:
    """``SURVIVAL_METRICS`` of test-fold step survival curves ``surv`` at ``times``."""
    return survival_metrics(
        data,
        train_idx,
        test_idx,
        risk,
        lambda has: step_survival_bins(times, surv[has]),
        notes,
        where,
    )


def _coxnet(
    cfg: BaselineConfig, alphas: np.ndarray | None = None, baseline: bool = False
) -> CoxnetSurvivalAnalysis:
    if alphas is None:
        return CoxnetSurvivalAnalysis(
            l1_ratio=cfg.l1_ratio, n_alphas=cfg.n_alphas, alpha_min_ratio=cfg.alpha_min_ratio
        )
    return CoxnetSurvivalAnalysis(l1_ratio=cfg.l1_ratio, alphas=alphas, fit_baseline_model=baseline)


def _surv(data: TrainingData, idx: np.ndarray) -> np.ndarray:
    if int(data.event[idx].sum()) == 0:
        raise DataError(f"baselines: {len(idx)} training patient(s) but no events")
    return Surv.from_arrays(event=data.event[idx], time=data.time[idx])


def _zscored(x: np.ndarray, fit_idx: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """Rows ``idx`` of ``x`` z-scored with the scaler fit on rows ``fit_idx``."""
    return ZScoreScaler.fit(x[fit_idx]).transform(x[idx]).astype(np.float64)


def _c_or_nan(data: TrainingData, idx: np.ndarray, risk: np.ndarray) -> float:
    try:
        return harrell_c_index(data.event[idx], data.time[idx], risk)
    except DataError:
        return float("nan")


@contextmanager
def _recorded(notes: list[str]) -> Iterator[None]:
    """Warnings of the fits (convergence, ...) become notes instead of going to stderr."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield
    for w in caught:
        text = f"{w.category.__name__}: {w.message}"
        if text not in notes:
            notes.append(text)


# ----------------------------------------------------------------------------------------------
# Expression
# ----------------------------------------------------------------------------------------------


def ridge_expression(
    data: TrainingData, train_idx: np.ndarray, test_idx: np.ndarray, cfg: BaselineConfig
) -> ExpressionBaseline:
    """Ridge from z-scored mean-pooled tile features to expression, alpha by inner CV; fit on
    the training patients with expression, scored on the test patients with expression, and
    ``predicted`` for every test patient."""
    pooled = np.stack([b.mean(axis=0, dtype=np.float64) for b in data.bags])  # (P, D)
    y = data.expression
    train_idx = data.with_expression(train_idx)
    strata = data.strata()
    inner = stratified_folds([strata[i] for i in train_idx], cfg.inner_folds, cfg.seed)
    scores = []
    for a in cfg.ridge_alphas:
        oof = np.empty((len(train_idx), data.n_genes))  # (n_train, G)
        for k in range(cfg.inner_folds):
            fit_i, val_i = train_idx[inner != k], train_idx[inner == k]
            model = Ridge(alpha=a).fit(_zscored(pooled, fit_i, fit_i), y[fit_i])
            oof[inner == k] = model.predict(_zscored(pooled, fit_i, val_i))
        scores.append(mean_per_gene_pearson(y[train_idx], oof))
    mean = np.nan_to_num(np.asarray(scores, dtype=np.float64), nan=-np.inf)  # (A,)
    j = int(np.argmax(mean[::-1]))  # ties: the larger alpha
    best = float(cfg.ridge_alphas[len(mean) - 1 - j])
    notes = []
    if len(cfg.ridge_alphas) > 1 and best in (min(cfg.ridge_alphas), max(cfg.ridge_alphas)):
        notes.append(f"alpha {best:g} is at the edge of the grid {list(cfg.ridge_alphas)}")
    model = Ridge(alpha=best).fit(_zscored(pooled, train_idx, train_idx), y[train_idx])
    pred = model.predict(_zscored(pooled, train_idx, test_idx))  # (n_test, G)
    has = data.expression_known[test_idx]
    fid = expression_fidelity(y[test_idx[has]], pred[has], data.panel.genes).summary
    params = {"alpha": best, "inner_mean_pearson": float(np.max(mean))}
    fidelity = {k: float(v) for k, v in fid.items()}
    return ExpressionBaseline("ridge", fidelity, pred, params, tuple(notes))


def mean_expression(
    data: TrainingData, train_idx: np.ndarray, test_idx: np.ndarray
) -> ExpressionBaseline:
    """The training part's mean expression (of its patients with expression) for every test
    patient, scored on those with expression."""
    mean = data.expression[data.with_expression(train_idx)].mean(axis=0)  # (G,)
    pred = np.tile(mean, (len(test_idx), 1))  # (n_test, G)
    te = data.with_expression(test_idx)
    fid = expression_fidelity(data.expression[te], pred[: len(te)], data.panel.genes).summary
    return ExpressionBaseline("mean_expression", {k: float(v) for k, v in fid.items()}, pred)


__all__ = [
    "EXPRESSION_BASELINES",
    "SURVIVAL_BASELINES",
    "SURVIVAL_METRICS",
    "BaselineConfig",
    "ExpressionBaseline",
    "FoldBaselines",
    "SurvivalBaseline",
    "cox_grade",
    "coxnet_expression",
    "fold_baselines",
    "km_null",
    "mean_expression",
    "ridge_expression",
    "step_survival_bins",
]
