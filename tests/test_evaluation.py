"""Evaluation metrics against hand-computed cases and closed forms.

Survival: Harrell's C on hand-listed pairs; Uno's C, time-dependent AUC and integrated Brier on
tiny folds without training censoring (the censoring weights are then all 1, so each metric
reduces to a count that can be done by hand). Grade: confusion matrices worked out by hand.
Fidelity: correlations with closed-form p-values, BH by hand. Paired tests: exact Wilcoxon
p-values and the t distribution with 2 degrees of freedom, whose tail has a closed form.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from sksurv.datasets import load_breast_cancer
from sksurv.metrics import concordance_index_censored, cumulative_dynamic_auc
from sksurv.util import Surv

from pathgen_batch.errors import DataError
from pathgen_batch.evaluation import (
    PER_GENE_COLUMNS,
    accuracy,
    balanced_accuracy,
    benjamini_hochberg,
    bin_probabilities_from_hazards,
    evaluation_times,
    expression_fidelity,
    grade_metrics,
    harrell_c_index,
    harrell_concordance,
    integrated_brier,
    macro_f1,
    macro_ovr_auc,
    paired_comparison,
    quadratic_weighted_kappa,
    survival_at_times,
    survival_from_hazards,
    survival_report,
    time_dependent_auc,
    uno_c_index,
)

# ----------------------------------------------------------------------------------------------
# Harrell's C-index
# ----------------------------------------------------------------------------------------------

# Six patients A..F: (time, event, risk).
#   A (2, event, 0.90)   B (3, censored, 0.95)   C (4, event, 0.70)
#   D (5, censored, 0.70) E (2, censored, 0.10)  F (4, event, 0.20)
# Comparable pairs (earlier member had the event; an event and a censoring at the same time are
# comparable, two events at the same time are not):
#   (A,B) 0.90 < 0.95 discordant      (A,C) 0.90 > 0.70 concordant
#   (A,D) 0.90 > 0.70 concordant      (A,E) 0.90 > 0.10 concordant (E censored at A's time)
#   (A,F) 0.90 > 0.20 concordant      (C,D) 0.70 = 0.70 tied risk
#   (F,D) 0.20 < 0.70 discordant      (C,F) both events at time 4: not comparable
# concordant 4, discordant 2, tied 1, comparable 7 -> C = (4 + 0.5) / 7
HAND_TIME = np.array([2.0, 3.0, 4.0, 5.0, 2.0, 4.0])
HAND_EVENT = np.array([True, False, True, False, False, True])
HAND_RISK = np.array([0.90, 0.95, 0.70, 0.70, 0.10, 0.20])


def test_harrell_hand_computed_pairs() -> None:
    c = harrell_concordance(HAND_EVENT, HAND_TIME, HAND_RISK)
    assert (c.concordant, c.discordant, c.tied_risk, c.comparable) == (4, 2, 1, 7)
    assert c.cindex == pytest.approx(4.5 / 7)


def test_harrell_small_example_without_ties() -> None:
    # times 1..4, patient 3 censored; comparable: (1,2) (1,3) (1,4) (2,3) (2,4); 3 is censored
    # so (3,4) is not comparable. Risks [4, 1, 3, 2]: (1,*) all concordant, (2,3) 1 < 3
    # discordant, (2,4) 1 < 2 discordant -> C = 3 / 5.
    c = harrell_c_index([1, 1, 0, 1], [1.0, 2.0, 3.0, 4.0], [4.0, 1.0, 3.0, 2.0])
    assert c == pytest.approx(3 / 5)


def test_harrell_perfect_antiperfect_and_constant_risk() -> None:
    rng = np.random.default_rng(0)
    time = rng.permutation(np.arange(1.0, 31.0))
    event = rng.random(30) < 0.6
    event[np.argmin(time)] = True
    assert harrell_c_index(event, time, -time) == 1.0
    assert harrell_c_index(event, time, time) == 0.0
    assert harrell_c_index(event, time, np.full(30, 0.3)) == 0.5


def test_harrell_agrees_with_sksurv_on_ties_and_real_cohort() -> None:
    rng = np.random.default_rng(1)
    time = rng.integers(1, 15, size=200).astype(float)  # many tied times
    event = rng.random(200) < 0.5
    risk = np.round(rng.normal(size=200), 1)  # many tied risks
    ours = harrell_concordance(event, time, risk)
    ref = concordance_index_censored(event, time, risk)
    assert ours.cindex == pytest.approx(ref[0], abs=1e-12)
    assert (ours.concordant, ours.discordant, ours.tied_risk) == tuple(int(v) for v in ref[1:4])

    x, y = load_breast_cancer()
    e, t = y["e.tdm"], y["t.tdm"]
    age = x["age"].to_numpy(dtype=float)
    assert harrell_c_index(e, t, age) == pytest.approx(
        concordance_index_censored(e, t, age)[0], abs=1e-12
    )


def test_harrell_input_errors_name_the_input() -> None:
    with pytest.raises(DataError, match="comparable pairs"):
        harrell_c_index([False, False, False], [1.0, 2.0, 3.0], [1.0, 2.0, 3.0])
    with pytest.raises(DataError, match="comparable pairs"):
        harrell_c_index([True, False], [1.0, 2.0], [1.0, 2.0])  # exactly one pair
    with pytest.raises(DataError, match=r"risk.*NaN"):
        harrell_c_index([True, True, True], [1.0, 2.0, 3.0], [1.0, np.nan, 3.0])
    with pytest.raises(DataError, match=r"mismatched lengths.*risk has 2"):
        harrell_c_index([True, True, True], [1.0, 2.0, 3.0], [1.0, 2.0])
    with pytest.raises(DataError, match="event: expected booleans or 0/1"):
        harrell_c_index([2, 1, 0], [1.0, 2.0, 3.0], [1.0, 2.0, 3.0])


# ----------------------------------------------------------------------------------------------
# Uno's C, time-dependent AUC, evaluation times
# ----------------------------------------------------------------------------------------------

# A training fold without censoring: the Kaplan-Meier censoring survival is 1 everywhere, so
# every inverse-probability weight is 1.
TRAIN_EVENT = np.ones(5, dtype=bool)
TRAIN_TIME = np.array([1.0, 2.0, 3.0, 4.0, 5.0])


def test_uno_equals_harrell_when_training_fold_has_no_censoring() -> None:
    test_event = np.array([True, False, True, True, False])
    test_time = np.array([1.0, 1.5, 2.5, 3.0, 4.5])
    risk = np.array([0.5, 0.9, 0.4, 0.1, 0.3])
    # Pairs: (1,1.5) 0.5<0.9 disc, (1,2.5) conc, (1,3) conc, (1,4.5) conc, (2.5,3) conc,
    # (2.5,4.5) conc, (3,4.5) 0.1<0.3 disc -> 5 / 7.
    uno = uno_c_index(TRAIN_EVENT, TRAIN_TIME, test_event, test_time, risk)
    assert uno.tau is None
    assert uno.cindex == pytest.approx(5 / 7)
    assert harrell_c_index(test_event, test_time, risk) == pytest.approx(5 / 7)


def test_uno_truncates_at_last_training_time_and_says_so() -> None:
    test_event = np.array([True, True, True, True, True])
    test_time = np.array([1.0, 2.0, 3.0, 4.0, 7.0])  # 7 is beyond the training fold's 5
    risk = np.array([5.0, 4.0, 3.0, 1.0, 2.0])
    # Only events before tau = 5 count as the earlier member: pairs (1,*) 4 conc, (2,*) 3 conc,
    # (3,*) 2 conc, (4,7) 1 < 2 disc -> 9 / 10.
    uno = uno_c_index(TRAIN_EVENT, TRAIN_TIME, test_event, test_time, risk)
    assert uno.tau == 5.0
    assert "tau=5" in uno.note
    assert uno.cindex == pytest.approx(9 / 10)
    with pytest.raises(DataError, match="tau: expected at most"):
        uno_c_index(TRAIN_EVENT, TRAIN_TIME, test_event, test_time, risk, tau=6.0)


def test_time_dependent_auc_by_hand_and_time_guard() -> None:
    test_event = np.ones(5, dtype=bool)
    test_time = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    risk = np.array([5.0, 3.0, 4.0, 1.0, 2.0])
    # At t = 2.5: cases (time <= t) risks {5, 3}, controls {4, 1, 2}: of the 6 case/control
    # pairs, 5 have the case riskier -> AUC 5/6. Times 0.5 (before any follow-up) and 10
    # (after it) cannot be evaluated and are dropped.
    auc = time_dependent_auc(TRAIN_EVENT, TRAIN_TIME, test_event, test_time, risk, [0.5, 2.5, 10])
    assert auc.times == (2.5,)
    assert auc.auc[0] == pytest.approx(5 / 6)
    assert "dropped 2" in auc.note


def test_time_dependent_auc_when_test_follow_up_outlasts_training() -> None:
    short_train_time = np.array([1.0, 2.0, 3.0, 4.0])
    test_event = np.ones(5, dtype=bool)
    test_time = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    risk = np.array([5.0, 3.0, 4.0, 1.0, 2.0])
    with pytest.raises(ValueError, match="largest observed time"):  # scikit-survival alone
        cumulative_dynamic_auc(
            Surv.from_arrays(np.ones(4, dtype=bool), short_train_time),
            Surv.from_arrays(test_event, test_time),
            risk,
            [2.5],
        )
    auc = time_dependent_auc(np.ones(4, dtype=bool), short_train_time, test_event, test_time, risk)
    ours_at = dict(zip(auc.times, auc.auc, strict=True))
    assert max(auc.times) < 4.0  # bounded by the training fold's follow-up
    # Default times are quantiles of the test event times; at t in [2, 3) cases {5, 3}.
    t_in = [t for t in auc.times if 2.0 <= t < 3.0]
    assert t_in and ours_at[t_in[0]] == pytest.approx(5 / 6)


def test_time_dependent_auc_drops_times_before_the_first_event() -> None:
    test_event = np.array([False, True, True, False, True])
    test_time = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    risk = np.array([1.0, 3.0, 2.0, 0.5, 0.1])
    # t = 1.5 has no case yet (first event at 2) and is dropped. At t = 3.5 cases {2, 3} (risks
    # 3, 2), controls {4, 5} (0.5, 0.1): all 4 pairs ordered -> 1.
    auc = time_dependent_auc(TRAIN_EVENT, TRAIN_TIME, test_event, test_time, risk, [1.5, 3.5])
    assert auc.times == (3.5,) and auc.auc == (1.0,)
    assert "dropped 1" in auc.note


def test_evaluation_times_error_when_nothing_usable() -> None:
    with pytest.raises(DataError, match=r"times: need at least 1 time.*\[1, 5\)"):
        evaluation_times(TRAIN_TIME, np.ones(5, dtype=bool), TRAIN_TIME, [0.1, 9.0])


# ----------------------------------------------------------------------------------------------
# Discrete survival curves and the integrated Brier score
# ----------------------------------------------------------------------------------------------


def test_survival_from_hazards_and_bin_probabilities() -> None:
    h = np.array([[0.1, 0.5, 1.0], [0.0, 0.0, 0.5]])
    np.testing.assert_allclose(survival_from_hazards(h), [[0.9, 0.45, 0.0], [1.0, 1.0, 0.5]])
    p = bin_probabilities_from_hazards(h)
    np.testing.assert_allclose(p, [[0.1, 0.45, 0.45], [0.0, 0.0, 1.0]])
    np.testing.assert_allclose(p.sum(axis=1), 1.0)
    with pytest.raises(DataError, match="hazards: expected values in"):
        survival_from_hazards([[0.2, 1.5]])


def test_survival_at_times_step_function() -> None:
    s = np.array([[0.9, 0.6, 0.2]])
    edges = np.array([0.0, 10.0, 20.0, np.inf])
    times = [0.0, 5.0, 10.0, 15.0, 20.0, 100.0]
    np.testing.assert_allclose(survival_at_times(s, edges, times), [[1, 1, 0.9, 0.9, 0.6, 0.6]])
    np.testing.assert_allclose(
        survival_at_times(s, edges, times, drop_at="start"), [[0.9, 0.9, 0.6, 0.6, 0.2, 0.2]]
    )
    with pytest.raises(DataError, match="bin_edges: expected 4 edges"):
        survival_at_times(s, [0.0, 10.0, 20.0], times)
    with pytest.raises(DataError, match="strictly increasing"):
        survival_at_times(s, [0.0, 10.0, 10.0, 30.0], times)
    with pytest.raises(DataError, match="non-increasing"):
        survival_at_times([[0.5, 0.6, 0.2]], edges, times)


def test_integrated_brier_by_hand() -> None:
    # Test times 1..4, all events; one curve for everyone: S = 1 before t = 2, 0.6 after.
    # BS(1.5): case {1} with S=1 -> 1; controls (1 - 1)^2 = 0          -> 1/4  = 0.25
    # BS(2.5): cases {1,2} 0.6^2 each; controls {3,4} 0.4^2 each       -> 1.04/4 = 0.26
    # BS(3.5): cases {1,2,3} 0.36 each; control {4} 0.16               -> 1.24/4 = 0.31
    # IBS = trapezoid over [1.5, 3.5] / 2 = ((0.25+0.26)/2 + (0.26+0.31)/2) / 2 = 0.27
    test_event = np.ones(4, dtype=bool)
    test_time = np.array([1.0, 2.0, 3.0, 4.0])
    curves = np.tile([0.6, 0.6], (4, 1))
    edges = [0.0, 2.0, np.inf]
    ibs = integrated_brier(
        TRAIN_EVENT, TRAIN_TIME, test_event, test_time, curves, edges, [1.5, 2.5, 3.5]
    )
    assert ibs.times == (1.5, 2.5, 3.5)
    assert ibs.ibs == pytest.approx(0.27)
    with pytest.raises(DataError, match="at least 2 time"):
        integrated_brier(TRAIN_EVENT, TRAIN_TIME, test_event, test_time, curves, edges, [2.0])


def test_survival_report_on_real_breast_cohort() -> None:
    _, y = load_breast_cancer()
    e, t = y["e.tdm"], y["t.tdm"]
    rng = np.random.default_rng(0)
    idx = rng.permutation(len(e))
    tr, te = idx[:130], idx[130:]
    # A risk that knows the outcome ordering well: minus the follow-up time plus noise.
    risk = -t[te] + rng.normal(0.0, 300.0, te.size)
    hazards = np.tile([0.1, 0.1, 0.1, 0.1], (te.size, 1))
    edges = np.r_[0.0, np.quantile(t[tr][e[tr]], [0.25, 0.5, 0.75]), np.inf]
    rep = survival_report(
        e[tr],
        t[tr],
        e[te],
        t[te],
        risk,
        bin_survival=survival_from_hazards(hazards),
        bin_edges=edges,
    )
    assert rep.harrell_c == pytest.approx(concordance_index_censored(e[te], t[te], risk)[0])
    assert rep.harrell_c > 0.8 and rep.uno_c > 0.7 and rep.mean_auc > 0.7
    assert all(t[te].min() <= s < min(t[te].max(), t[tr].max()) for s in rep.auc_times)
    assert rep.ibs is not None and 0.0 < rep.ibs < 0.5
    assert set(rep.summary()) == {"harrell_c", "uno_c", "mean_auc", "ibs"}
    with pytest.raises(DataError, match="give both or neither"):
        survival_report(e[tr], t[tr], e[te], t[te], risk, bin_edges=edges)


# ----------------------------------------------------------------------------------------------
# Grade metrics
# ----------------------------------------------------------------------------------------------


def test_accuracy_balanced_accuracy_f1_by_hand() -> None:
    y_true = [0, 0, 0, 0, 1, 2]
    y_pred = [0, 0, 0, 0, 2, 2]
    assert accuracy(y_true, y_pred, 3) == pytest.approx(5 / 6)
    # recalls: class 0 4/4, class 1 0/1, class 2 1/1 -> 2/3
    assert balanced_accuracy(y_true, y_pred, 3) == pytest.approx(2 / 3)
    # F1: class 0 1; class 1 0 (never predicted); class 2 P=1/2 R=1 -> 2/3; mean 5/9
    assert macro_f1(y_true, y_pred, 3) == pytest.approx(5 / 9)


def test_qwk_three_classes_by_hand() -> None:
    # Confusion O (rows true, cols predicted): [[4,0,0],[0,0,1],[0,0,1]], n = 6.
    # Marginals: true [4,1,1], predicted [4,0,2]; expected E = outer / 6.
    # Weights (i-j)^2: sum W*O = 1 (true 1 -> predicted 2);
    # sum W*E = (4*8 + 1*4 + 1*2 + 4*4) / 6 = 54/6 = 9 -> kappa = 1 - 1/9 = 8/9.
    kappa, note = quadratic_weighted_kappa([0, 0, 0, 0, 1, 2], [0, 0, 0, 0, 2, 2], 3)
    assert note is None
    assert kappa == pytest.approx(8 / 9)


def test_qwk_two_classes_by_hand_and_undefined_case() -> None:
    # O = [[1,1],[0,2]], marginals true [2,2] predicted [1,3]; E = [[.5,1.5],[.5,1.5]];
    # off-diagonal sums: O 1, E 2 -> kappa = 1 - 1/2.
    kappa, _ = quadratic_weighted_kappa([0, 0, 1, 1], [0, 1, 1, 1], 2)
    assert kappa == pytest.approx(0.5)
    kappa, note = quadratic_weighted_kappa([1, 1, 1], [1, 1, 1], 3)
    assert math.isnan(kappa) and note is not None and "undefined" in note


def test_macro_auc_by_hand_and_absent_class_is_skipped() -> None:
    p1 = np.array([0.1, 0.6, 0.4, 0.8])
    probs = np.stack([1 - p1, p1], axis=1)
    # positives {0.4, 0.8} vs negatives {0.1, 0.6}: 3 of 4 pairs ordered -> 0.75 for both classes
    macro, per_class, notes = macro_ovr_auc([0, 0, 1, 1], probs)
    assert macro == pytest.approx(0.75) and per_class == {0: 0.75, 1: 0.75} and notes == []

    three = np.column_stack([0.9 * (1 - p1), 0.9 * p1, np.full(4, 0.1)])
    macro, per_class, notes = macro_ovr_auc([0, 0, 1, 1], three)
    assert macro == pytest.approx(0.75)
    assert math.isnan(per_class[2])
    assert notes == ["AUC: class 2 skipped, absent from y_true"]


def test_grade_metrics_with_named_classes() -> None:
    classes = ["well", "intermediate", "poor"]
    probs = np.array(
        [
            [0.8, 0.1, 0.1],
            [0.6, 0.3, 0.1],
            [0.5, 0.4, 0.1],
            [0.7, 0.2, 0.1],
            [0.1, 0.3, 0.6],
            [0.2, 0.2, 0.6],
        ]
    )
    y_true = ["well", "well", "well", "well", "intermediate", "poor"]
    out = grade_metrics(y_true, probs, classes)
    assert out["predicted"] == ["well"] * 4 + ["poor", "poor"]
    assert out["accuracy"] == pytest.approx(5 / 6)
    assert out["balanced_accuracy"] == pytest.approx(2 / 3)
    assert out["macro_f1"] == pytest.approx(5 / 9)
    assert out["qwk"] == pytest.approx(8 / 9)
    # OvR AUC: "well" positives 0.8,0.6,0.5,0.7 vs negatives 0.1,0.2 -> 1;
    # "intermediate" positive 0.3 vs 0.1,0.3,0.4,0.2,0.2 -> (3 + 0.5) / 5 = 0.7;
    # "poor" positive 0.6 vs 0.1 x4, 0.6 -> (4 + 0.5) / 5 = 0.9.
    assert out["auc_per_class"] == pytest.approx({"well": 1.0, "intermediate": 0.7, "poor": 0.9})
    assert out["macro_auc"] == pytest.approx((1.0 + 0.7 + 0.9) / 3)
    assert out["notes"] == []


def test_grade_metrics_single_class_fold_does_not_crash() -> None:
    out = grade_metrics([1, 1, 1], np.tile([0.2, 0.8], (3, 1)), [0, 1])
    assert out["accuracy"] == 1.0
    assert math.isnan(out["macro_auc"]) and math.isnan(out["qwk"])
    assert len(out["notes"]) == 3  # class 0 absent, class 1 everywhere, QWK undefined


def test_grade_metrics_input_errors() -> None:
    probs = np.tile([0.5, 0.5], (3, 1))
    with pytest.raises(DataError, match="y_true: expected labels from classes"):
        grade_metrics(["a", "b", "c"], probs, ["a", "b"])
    with pytest.raises(DataError, match="probs: expected 3 columns"):
        grade_metrics(["a", "b", "a"], probs, ["a", "b", "c"])
    with pytest.raises(DataError, match="probs: expected finite"):
        grade_metrics(["a", "b", "a"], [[0.5, 0.5], [np.nan, 1.0], [1, 0]], ["a", "b"])
    with pytest.raises(DataError, match="probs: expected each row to sum to 1"):
        grade_metrics(["a", "b", "a"], [[0.5, 0.6], [0, 1.0], [1, 0]], ["a", "b"])
    with pytest.raises(DataError, match="mismatched lengths"):
        grade_metrics(["a", "b"], probs, ["a", "b"])


# ----------------------------------------------------------------------------------------------
# Fidelity
# ----------------------------------------------------------------------------------------------


def test_benjamini_hochberg_by_hand_and_against_scipy() -> None:
    # sorted p 0.01, 0.03, 0.04, 0.5; m p / rank = 0.04, 0.06, 0.0533, 0.5;
    # running minimum from the top: 0.04, 0.0533, 0.0533, 0.5
    q = benjamini_hochberg([0.01, 0.04, 0.03, 0.5])
    np.testing.assert_allclose(q, [0.04, 0.16 / 3, 0.16 / 3, 0.5])
    q = benjamini_hochberg([0.01, np.nan, 0.04])  # m = 2: 0.02, 0.04
    np.testing.assert_allclose(q, [0.02, np.nan, 0.04])
    p = np.random.default_rng(0).beta(0.3, 2.0, size=500)
    np.testing.assert_allclose(benjamini_hochberg(p), stats.false_discovery_control(p))


def test_per_gene_correlations_closed_forms() -> None:
    real = np.array([[1.0, 1.0, 1.0, 5.0], [2.0, 2.0, 2.0, 5.0], [3.0, 3.0, 3.0, 5.0]])
    synth = np.array([[1.0, 3.0, 2.0, 1.0], [3.0, 2.0, 4.0, 2.0], [2.0, 1.0, 6.0, 3.0]])
    rep = expression_fidelity(real, synth, ["g1", "g2", "g3", "flat"])
    g = rep.per_gene.set_index("gene")
    assert list(rep.per_gene.columns) == list(PER_GENE_COLUMNS)
    # g1: x = [1,2,3], y = [1,3,2]: r = 1 / sqrt(2 * 2) = 0.5; with 1 degree of freedom
    # t = 0.5 * sqrt(1 / 0.75) = tan(pi/6), and the Cauchy tail gives p = 1 - 2(pi/6)/pi = 2/3.
    assert g.loc["g1", "pearson"] == pytest.approx(0.5)
    assert g.loc["g1", "pearson_p"] == pytest.approx(2 / 3)
    assert g.loc["g1", "spearman"] == pytest.approx(0.5)
    assert g.loc["g2", "pearson"] == pytest.approx(-1.0)
    assert g.loc["g3", "pearson"] == pytest.approx(1.0)
    assert g.loc["g3", "pearson_p"] == pytest.approx(0.0)
    # A constant gene has no correlation: NaN, counted, excluded from the means.
    assert np.isnan(g.loc["flat", ["pearson", "pearson_p", "pearson_q", "spearman"]]).all()
    assert rep.summary["n_genes_constant"] == 1
    assert rep.summary["mean_pearson"] == pytest.approx((0.5 - 1.0 + 1.0) / 3)
    # MAE per gene: g1 |0|,|1|,|1| -> 2/3; Wasserstein g1: same values -> 0; g3: sorted
    # [1,2,3] vs [2,4,6] -> mean |diff| = 2.
    assert g.loc["g1", "mae"] == pytest.approx(2 / 3)
    assert g.loc["g1", "wasserstein"] == pytest.approx(0.0)
    assert g.loc["g3", "wasserstein"] == pytest.approx(2.0)


def test_per_gene_correlations_agree_with_scipy() -> None:
    rng = np.random.default_rng(3)
    real = rng.normal(size=(25, 6))
    synth = 0.5 * real + rng.normal(size=(25, 6))
    synth[:, 5] = np.round(synth[:, 5])  # ties in ranks
    g = expression_fidelity(real, synth).per_gene
    for j in range(6):
        pr = stats.pearsonr(real[:, j], synth[:, j])
        sr = stats.spearmanr(real[:, j], synth[:, j])
        assert g.loc[j, "pearson"] == pytest.approx(pr.statistic, abs=1e-12)
        assert g.loc[j, "pearson_p"] == pytest.approx(pr.pvalue, rel=1e-8)
        assert g.loc[j, "spearman"] == pytest.approx(sr.statistic, abs=1e-12)
        assert g.loc[j, "spearman_p"] == pytest.approx(sr.pvalue, rel=1e-8)
        assert g.loc[j, "wasserstein"] == pytest.approx(
            stats.wasserstein_distance(real[:, j], synth[:, j])
        )


def test_fidelity_counts_only_positively_predicted_genes() -> None:
    rng = np.random.default_rng(7)
    real = rng.normal(size=(60, 20))
    synth = np.empty_like(real)
    synth[:, :5] = real[:, :5] + 0.1 * rng.normal(size=(60, 5))  # well predicted
    synth[:, 5:10] = -real[:, 5:10]  # perfectly anti-correlated: not "predicted"
    # Unrelated genes with exactly zero Pearson and Spearman correlation: real values symmetric
    # about their mean, synthetic = squared distance from it (an even function).
    grid = np.linspace(-1.0, 1.0, 60)
    for j in range(10, 20):
        real[:, j] = rng.permutation(grid)
        synth[:, j] = real[:, j] ** 2
    rep = expression_fidelity(pd.DataFrame(real, columns=[f"G{i}" for i in range(20)]), synth)
    assert rep.summary["n_significant_pearson"] == 5
    assert rep.summary["n_significant_spearman"] == 5
    assert rep.per_gene["gene"].tolist()[:2] == ["G0", "G1"]
    # Flattened score: a monotone map of everything gives 1 however genes are predicted.
    assert expression_fidelity(real, 2 * real + 1).summary["flattened_spearman"] == 1.0
    assert expression_fidelity(real, np.zeros_like(real) + 1).summary["mae"] == pytest.approx(
        np.abs(real - 1).mean()
    )


def test_fidelity_input_errors() -> None:
    real = np.ones((4, 3))
    with pytest.raises(DataError, match=r"synthetic: expected the shape of real \(4, 3\)"):
        expression_fidelity(real, np.ones((4, 2)))
    bad = np.ones((4, 3))
    bad[1, 2] = np.nan
    with pytest.raises(DataError, match="synthetic: expected finite numbers"):
        expression_fidelity(real, bad)
    with pytest.raises(DataError, match="at least 3 patients"):
        expression_fidelity(np.ones((2, 3)), np.ones((2, 3)))
    with pytest.raises(DataError, match="genes: expected 3 names"):
        expression_fidelity(real, real, ["a", "b"])


# ----------------------------------------------------------------------------------------------
# Paired tests across folds
# ----------------------------------------------------------------------------------------------


def test_paired_comparison_closed_forms() -> None:
    # differences [1, 2, 3]: all positive, so the exact Wilcoxon p = 2 / 2^3 = 0.25.
    # t = mean / (sd / sqrt(3)) = 2 / (1 / sqrt(3)) = 2 sqrt(3) with 2 degrees of freedom,
    # whose two-sided tail is 1 - t / sqrt(t^2 + 2).
    res = paired_comparison([1.5, 2.5, 3.5], [0.5, 0.5, 0.5])
    t = 2 * math.sqrt(3)
    assert res.n == 3 and res.mean_difference == pytest.approx(2.0)
    assert res.wilcoxon_statistic == 0.0 and res.wilcoxon_p == pytest.approx(0.25)
    assert res.t_statistic == pytest.approx(t)
    assert res.t_p == pytest.approx(1 - t / math.sqrt(t**2 + 2))
    assert "cannot go below 0.25" in res.note


def test_paired_comparison_degenerate_inputs() -> None:
    one = paired_comparison([0.7], [0.6])
    assert one.n == 1 and math.isnan(one.wilcoxon_p) and math.isnan(one.t_p)
    assert "no test" in one.note
    same = paired_comparison([0.6, 0.7, 0.8], [0.6, 0.7, 0.8])
    assert same.wilcoxon_p == 1.0 and same.t_p == 1.0 and "all differences are zero" in same.note
    shifted = paired_comparison([0.7, 0.8, 0.9, 1.0, 1.1], [0.6, 0.7, 0.8, 0.9, 1.0])
    assert math.isnan(shifted.t_p) and "t-test is undefined" in shifted.note
    assert shifted.wilcoxon_p == pytest.approx(2 / 2**5)
    assert paired_comparison([], []).n == 0
    with pytest.raises(DataError, match="mismatched lengths: a has 2, b has 3"):
        paired_comparison([1.0, 2.0], [1.0, 2.0, 3.0])
    with pytest.raises(DataError, match="b: expected finite"):
        paired_comparison([1.0, 2.0], [1.0, np.nan])


def test_crps_from_samples_by_hand_and_brute_force() -> None:
    from pathgen_batch.evaluation import crps_from_samples

    y = np.array([[0.0], [1.0]])
    one = np.array([[[2.0]], [[-1.0]]])  # one member: the absolute error
    np.testing.assert_allclose(crps_from_samples(y, one), [2.0])
    two = np.array([[[-1.0], [1.0]], [[1.0], [1.0]]])
    # patient 0: E|X-y| = 1, E|X-X'| over distinct pairs = 2 -> 0; patient 1: 0 - 0 = 0
    np.testing.assert_allclose(crps_from_samples(y, two), [0.0])
    rng = np.random.default_rng(0)
    x, obs = rng.normal(size=(5, 7, 3)), rng.normal(size=(5, 3))
    brute = np.abs(x - obs[:, None]).mean(1) - 0.5 * (
        np.abs(x[:, :, None] - x[:, None, :]).sum((1, 2)) / (7 * 6)
    )
    np.testing.assert_allclose(crps_from_samples(obs, x), brute.mean(0))
    # a sharp, centred ensemble beats a wide one, and a biased one
    sharp = obs[:, None] + 0.1 * rng.normal(size=(5, 50, 3))
    wide = obs[:, None] + 3.0 * rng.normal(size=(5, 50, 3))
    assert crps_from_samples(obs, sharp).mean() < crps_from_samples(obs, wide).mean()
    with pytest.raises(DataError, match="samples"):
        crps_from_samples(obs, x[:, :, :2])


def test_random_model_test_finds_signal_and_not_noise() -> None:
    from pathgen_batch.evaluation import random_model_test

    rng = np.random.default_rng(1)
    real = rng.normal(size=(60, 10))
    pred = real.copy()
    pred[:, 5:] = rng.normal(size=(60, 5))  # genes 5..9: no link to the patient
    pred[:, :5] += 0.3 * rng.normal(size=(60, 5))
    out = random_model_test(real, pred, n_perm=200, seed=0)
    assert out["n_well_predicted"] == 5
    assert (out["q"][:5] < 0.05).all() and (out["p"][:5] == 1 / 201).all()
    pred[:, 0] = 1.0  # a constant gene has no correlation
    out = random_model_test(real, pred, n_perm=50, seed=0)
    assert np.isnan(out["p"][0]) and out["n_well_predicted"] == 4


def test_generator_fidelity_sweep_constant_predictor_and_keys() -> None:
    from pathgen_batch.evaluation import generator_fidelity

    rng = np.random.default_rng(2)
    real = rng.normal(size=(30, 6)) + 5.0
    train = rng.normal(size=(40, 6)) + 5.0
    samples = real[:, None] + rng.normal(size=(30, 8, 6))  # unbiased, noisy samples
    pm = real + 0.05 * rng.normal(size=(30, 6))
    out = generator_fidelity(real, samples, pm, train, (1, 4, 8), n_default=4, n_perm=100)
    assert out["mean_pearson_n1"] < out["mean_pearson_n4"] < out["mean_pearson_n8"]
    assert out["mae_n8"] < out["mae_n1"]
    assert out["mean_pearson_posterior_mean"] > out["mean_pearson_n8"]
    assert out["mae_constant"] == pytest.approx(np.abs(train.mean(0) - real).mean())
    assert out["crps"] < out["crps_climatology"]
    assert out["n_well_predicted_vs_random_posterior_mean"] == 6
    with pytest.raises(DataError, match="the sweep needs"):
        generator_fidelity(real, samples, pm, train, (1, 16), n_default=4)
