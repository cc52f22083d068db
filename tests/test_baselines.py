"""Baselines on tiny synthetic cohorts whose answer is known.

Survival driven by three genes (CoxNet recovers it), by grade alone (Cox on grade recovers it),
a Kaplan-Meier null (C = 0.5 exactly, the same curve for everyone), tile features that are a
linear image of expression (ridge recovers it). The chosen hyper-parameters do not move when
the test fold's outcomes and expression are scrambled: nothing is tuned on the test fold.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from sksurv.linear_model import CoxPHSurvivalAnalysis
from sksurv.metrics import integrated_brier_score
from sksurv.nonparametric import kaplan_meier_estimator
from sksurv.util import Surv

from pathgen_batch.errors import DataError
from pathgen_batch.evaluation import (
    evaluation_times,
    expression_fidelity,
    mean_per_gene_pearson,
    survival_at_times,
)
from pathgen_batch.features.contract import FeatureContract
from pathgen_batch.omics.panel import GenePanel
from pathgen_batch.training.baselines import (
    SURVIVAL_METRICS,
    BaselineConfig,
    cox_grade,
    coxnet_expression,
    fold_baselines,
    km_null,
    ridge_expression,
    step_survival_bins,
)
from pathgen_batch.training.cv_result import METRICS
from pathgen_batch.training.data import TrainingData

P, G, D, TILES = 120, 8, 12, 4


def cohort(seed: int = 0, *, by_grade: bool = False) -> TrainingData:
    """P patients; log-hazard = 2 * (x0 - x1 + x2) (or 1.5 * grade with ``by_grade``);
    exponential times, about 25% censored; each tile = expression @ A + noise."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(P, G))
    grade = rng.integers(0, 3, P)
    lin = 1.5 * grade if by_grade else 2.0 * (x[:, 0] - x[:, 1] + x[:, 2])
    t_event = rng.exponential(np.exp(-lin))
    t_cens = rng.exponential(3.0 * np.median(t_event), P)
    t = np.minimum(t_event, t_cens)
    a = rng.normal(size=(G, D))
    bags = tuple(
        (x[i] @ a + 0.3 * rng.normal(size=(TILES, D))).astype(np.float32) for i in range(P)
    )
    return TrainingData(
        patient_ids=tuple(f"p{i:03d}" for i in range(P)),
        slides=tuple((f"s{i:03d}",) for i in range(P)),
        bags=bags,
        coords=tuple(np.zeros((TILES, 2), dtype=np.int64) for _ in range(P)),
        tile_slides=tuple(np.zeros(TILES, dtype=np.int64) for _ in range(P)),
        expression=x,
        grade=grade.astype(np.int64),
        time=t,
        event=t_event <= t_cens,
        folds=np.arange(P, dtype=np.int64) % 2,
        panel=GenePanel(tuple(f"g{j}" for j in range(G)), ("f",) * G),
        contract=FeatureContract("test", "v1", D, 224, 0.5),
        grade_classes=("G1", "G2", "G3"),
    )


TRAIN = np.flatnonzero(np.arange(P) % 2 == 0)
TEST = np.flatnonzero(np.arange(P) % 2 == 1)
CFG = BaselineConfig(n_alphas=10)


def test_metric_names_are_the_cv_metrics() -> None:
    assert set(SURVIVAL_METRICS) <= set(METRICS)


def test_coxnet_recovers_expression_driven_risk() -> None:
    data = cohort()
    b = coxnet_expression(data, TRAIN, TEST, CFG)
    assert b.metrics["harrell_c"] > 0.8
    assert b.metrics["uno_c"] > 0.75
    assert b.risk.shape == (len(TEST),)
    null = km_null(data, TRAIN, TEST)
    assert b.metrics["ibs"] < null.metrics["ibs"]  # a real model beats the null curve
    assert 1 <= b.params["nonzero_genes"] <= G


def test_alpha_is_chosen_without_the_test_fold() -> None:
    data = cohort()
    rng = np.random.default_rng(7)
    x = data.expression.copy()
    x[TEST] = rng.normal(size=(len(TEST), G))
    t = data.time.copy()
    t[TEST] = rng.permutation(t[TEST])
    bags = list(data.bags)
    for i in TEST:
        bags[i] = rng.normal(size=bags[i].shape).astype(np.float32)
    scrambled = TrainingData(**{**_fields(data), "expression": x, "time": t, "bags": tuple(bags)})
    assert coxnet_expression(scrambled, TRAIN, TEST, CFG).params == pytest.approx(
        coxnet_expression(data, TRAIN, TEST, CFG).params
    )
    assert ridge_expression(scrambled, TRAIN, TEST, CFG).params == pytest.approx(
        ridge_expression(data, TRAIN, TEST, CFG).params
    )


def test_km_null_is_the_same_curve_and_c_one_half() -> None:
    data = cohort()
    b = km_null(data, TRAIN, TEST)
    assert b.metrics["harrell_c"] == 0.5
    assert b.metrics["td_auc"] == pytest.approx(0.5)
    assert np.all(b.risk == b.risk[0])
    # IBS by hand: sksurv's integrated Brier of the training KM curve at the same times
    te = TEST
    times = np.asarray(
        evaluation_times(
            data.time[TRAIN],
            data.event[te],
            data.time[te],
            None,
            quantiles=tuple(np.linspace(0.05, 0.95, 50).tolist()),
            min_times=2,
        ).times
    )
    km_t, km_s = kaplan_meier_estimator(data.event[TRAIN], data.time[TRAIN])
    at = km_s[np.searchsorted(km_t, times, side="right") - 1]  # step function at times
    e_te, t_te = data.event[te].copy(), data.time[te].copy()
    late = t_te > data.time[TRAIN].max()
    e_te[late], t_te[late] = False, data.time[TRAIN].max()
    want = integrated_brier_score(
        Surv.from_arrays(data.event[TRAIN], data.time[TRAIN]),
        Surv.from_arrays(e_te, t_te),
        np.tile(at, (len(te), 1)),
        times,
    )
    assert b.metrics["ibs"] == pytest.approx(want)


def test_step_bins_reproduce_the_cox_step_function() -> None:
    data = cohort()
    x = data.expression[:, :3]
    model = CoxPHSurvivalAnalysis().fit(
        x[TRAIN], Surv.from_arrays(data.event[TRAIN], data.time[TRAIN])
    )
    arr = model.predict_survival_function(x[TEST], return_array=True)
    bins, edges = step_survival_bins(model.unique_times_, arr)
    grid = np.concatenate([model.unique_times_[:5], np.linspace(0.0, data.time.max(), 17)])
    funcs = model.predict_survival_function(x[TEST])
    want = np.stack(
        [
            np.where(grid < model.unique_times_[0], 1.0, f(np.clip(grid, f.x[0], f.x[-1])))
            for f in funcs
        ]
    )
    np.testing.assert_allclose(survival_at_times(bins, edges, grid), want, atol=1e-12)


def test_cox_on_grade_recovers_grade_driven_risk() -> None:
    data = cohort(by_grade=True)
    b = cox_grade(data, TRAIN, TEST, CFG)
    assert b.params["coef_G2"] > 0.5
    assert b.params["coef_G3"] > b.params["coef_G2"]
    assert b.metrics["harrell_c"] > 0.7
    blind = coxnet_expression(data, TRAIN, TEST, CFG)  # expression carries no signal here
    assert abs(blind.metrics["harrell_c"] - 0.5) < 0.15


def test_cox_on_grade_imputes_unknown_test_grades() -> None:
    data = cohort(by_grade=True)
    grade = data.grade.copy()
    grade[TEST[:3]] = -1
    masked = TrainingData(**{**_fields(data), "grade": grade})
    b = cox_grade(masked, TRAIN, TEST, CFG)
    assert np.isfinite(b.risk).all()
    assert "3 test patient(s) of unknown grade imputed" in b.notes
    lo, hi = sorted(b.risk[3:])[0], sorted(b.risk[3:])[-1]
    assert lo < b.risk[0] < hi  # the frequency-weighted row sits between the grades


def test_ridge_recovers_expression_from_pooled_tiles() -> None:
    data = cohort()
    res = fold_baselines(data, TRAIN, TEST, CFG)
    ridge, const = res.expression["ridge"], res.expression["mean_expression"]
    assert ridge.fidelity["mean_pearson"] > 0.8
    assert ridge.fidelity["mae"] < 0.5 * const.fidelity["mae"]
    assert np.isnan(const.fidelity["mean_pearson"])
    assert ridge.predicted.shape == (len(TEST), G)
    assert set(res.survival) == {"coxnet", "cox_grade", "km_null"}
    for b in res.survival.values():
        assert set(b.metrics) == set(SURVIVAL_METRICS)
    with pytest.raises(DataError, match="share patients"):
        fold_baselines(data, TRAIN, TRAIN[:3], CFG)


def _fields(d: TrainingData) -> dict[str, object]:
    return {f.name: getattr(d, f.name) for f in dataclasses.fields(d) if f.init}


def test_ridge_selection_score_is_the_mean_per_gene_pearson() -> None:
    rng = np.random.default_rng(2)
    real = rng.normal(size=(30, 4))
    pred = real + rng.normal(size=(30, 4))
    pred[:, 3] = 1.0  # a constant gene has no correlation and is left out
    by_hand = np.mean([np.corrcoef(real[:, j], pred[:, j])[0, 1] for j in range(3)])
    assert mean_per_gene_pearson(real, pred) == pytest.approx(by_hand)
    assert mean_per_gene_pearson(real, pred) == pytest.approx(
        expression_fidelity(real, pred).summary["mean_pearson"]
    )
