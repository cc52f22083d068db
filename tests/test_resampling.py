"""Tests across repeated CV folds against hand-computed values and closed forms.

The corrected resampled t-test worked out with numpy/scipy on a small made-up table (and
reducing to scipy's one-sample t-test when the test/train ratio vanishes); Holm on a textbook
example; TOST as the larger of two one-sided tests; the minimum detectable difference as the
mean difference whose corrected t is exactly the two quantiles' sum; Schoenfeld's events for
HR = 2; percentile bootstrap intervals of a mean against the normal approximation.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from pathgen_batch.errors import ConfigError, DataError
from pathgen_batch.evaluation import (
    bootstrap_ci,
    compare_conditions,
    corrected_resampled_t,
    detectable_hazard_ratio,
    equivalence_tost,
    harrell_c_index,
    holm,
    minimum_detectable_difference,
    pooled_c_index_ci,
)

# 2 repeats x 5 folds of differences (synthetic minus real C-index), 80 train / 20 test
D = np.array([0.02, 0.05, -0.01, 0.03, 0.04, 0.00, 0.06, 0.01, 0.02, 0.03])


def test_corrected_t_by_hand() -> None:
    J = 10
    mean = D.sum() / J  # 0.025
    s2 = ((D - mean) ** 2).sum() / (J - 1)
    se = math.sqrt((1 / J + 20 / 80) * s2)
    t = mean / se
    p = 2 * stats.t.sf(abs(t), J - 1)
    got = corrected_resampled_t(D, n_train=80, n_test=20)
    assert got.n == J and got.df == J - 1
    assert got.mean_difference == pytest.approx(0.025)
    assert got.se == pytest.approx(se)
    assert got.t == pytest.approx(t)
    assert got.p == pytest.approx(p)
    # the correction can only widen: the naive paired t is anti-conservative
    naive = stats.ttest_1samp(D, 0.0).pvalue
    assert got.p > naive
    assert got.to_dict()["p_corrected"] == got.p


def test_corrected_t_without_overlap_is_the_one_sample_t() -> None:
    got = corrected_resampled_t(D, n_train=1e12, n_test=1)
    ref = stats.ttest_1samp(D, 0.0)
    assert got.t == pytest.approx(ref.statistic, rel=1e-9)
    assert got.p == pytest.approx(ref.pvalue, rel=1e-9)


def test_corrected_t_degenerate_cases() -> None:
    zero = corrected_resampled_t(np.zeros(5), n_train=4, n_test=1)
    assert zero.p == 1.0 and "zero" in zero.note
    equal = corrected_resampled_t(np.full(5, 0.1), n_train=4, n_test=1)
    assert math.isnan(equal.p) and "equal" in equal.note
    one = corrected_resampled_t([0.1], n_train=4, n_test=1)
    assert math.isnan(one.p) and one.n == 1
    missing = corrected_resampled_t([0.1, np.nan, 0.2, 0.0], n_train=4, n_test=1)
    assert missing.n == 3 and "1 missing" in missing.note
    ref = corrected_resampled_t([0.1, 0.2, 0.0], n_train=4, n_test=1)
    assert missing.p == pytest.approx(ref.p)
    with pytest.raises(ConfigError, match="n_train"):
        corrected_resampled_t(D, n_train=0, n_test=20)
    with pytest.raises(DataError, match="differences"):
        corrected_resampled_t(np.ones((2, 2)), n_train=4, n_test=1)


def test_holm_textbook_example() -> None:
    # sorted 0.005, 0.01, 0.03, 0.04 times 4, 3, 2, 1 = 0.02, 0.03, 0.06, 0.04; running max
    # 0.02, 0.03, 0.06, 0.06; back in the input order:
    np.testing.assert_allclose(holm([0.01, 0.04, 0.03, 0.005]), [0.03, 0.06, 0.06, 0.02])
    # capped at 1, NaN kept and not counted (m = 2)
    np.testing.assert_allclose(holm([0.6, np.nan, 0.01]), [0.6, np.nan, 0.02])
    np.testing.assert_allclose(holm([0.6, 0.7]), [1.0, 1.0])
    assert holm([]).shape == (0,)
    with pytest.raises(DataError, match="pvalues"):
        holm([0.2, 1.5])


def test_tost_is_the_larger_one_sided_p() -> None:
    margin = 0.03
    J = D.size
    se = math.sqrt((1 / J + 0.25) * D.var(ddof=1))
    p_lower = stats.t.sf((D.mean() + margin) / se, J - 1)  # H0: d <= -margin
    p_upper = stats.t.cdf((D.mean() - margin) / se, J - 1)  # H0: d >= +margin
    got = equivalence_tost(D, n_train=80, n_test=20, margin=margin)
    assert got.p_lower == pytest.approx(p_lower)
    assert got.p_upper == pytest.approx(p_upper)
    assert got.p_tost == pytest.approx(max(p_lower, p_upper))
    assert got.margin == margin
    # the 90% interval lies inside the margins exactly when p_tost < 0.05
    inside = -margin < got.ci_lo and got.ci_hi < margin
    assert inside == got.equivalent


def test_tost_without_overlap_matches_scipy_one_sided_tests() -> None:
    d = np.array([0.004, -0.006, 0.001, 0.003, -0.002, 0.000, 0.005, -0.001])
    got = equivalence_tost(d, n_train=1e12, n_test=1, margin=0.01)
    lower = stats.ttest_1samp(d, -0.01, alternative="greater").pvalue
    upper = stats.ttest_1samp(d, 0.01, alternative="less").pvalue
    assert got.p_tost == pytest.approx(max(lower, upper), rel=1e-9)
    assert got.equivalent  # tight differences well inside +-0.01
    wide = equivalence_tost(d * 10, n_train=80, n_test=20, margin=0.01)
    assert not wide.equivalent
    with pytest.raises(ConfigError, match="margin"):
        equivalence_tost(d, n_train=80, n_test=20, margin=0.0)


def test_minimum_detectable_difference_is_where_t_reaches_the_quantiles() -> None:
    J, sd = 10, 0.04
    mdd = minimum_detectable_difference(sd, J, n_train=80, n_test=20)
    q = stats.t.ppf(0.975, J - 1) + stats.t.ppf(0.8, J - 1)
    z = np.linspace(-1, 1, J)
    z = (z - z.mean()) / z.std(ddof=1)  # mean 0, sd 1
    at_mdd = corrected_resampled_t(mdd + sd * z, n_train=80, n_test=20)
    assert at_mdd.t == pytest.approx(q)
    assert at_mdd.p < 0.05  # the test rejects at the MDD, as it must with power above 1/2
    assert math.isnan(minimum_detectable_difference(sd, 1, n_train=80, n_test=20))


def test_schoenfeld_events_for_hazard_ratio_two() -> None:
    # D = 4 (z_0.975 + z_0.8)^2 / log(2)^2 = 65.3 events for HR = 2 with equal groups
    need = 4 * (stats.norm.ppf(0.975) + stats.norm.ppf(0.8)) ** 2 / math.log(2) ** 2
    assert need == pytest.approx(65.3, abs=0.05)
    assert detectable_hazard_ratio(65) > 2.0 > detectable_hazard_ratio(66)
    assert detectable_hazard_ratio(400) < detectable_hazard_ratio(40)
    with pytest.raises(ConfigError, match="n_events"):
        detectable_hazard_ratio(0)


def test_compare_conditions_holm_across_the_table() -> None:
    rng = np.random.default_rng(0)
    base = rng.normal(0.6, 0.03, 10)
    scores = {
        "synthetic": {"harrell_c": base + 0.04, "macro_auc": base + 0.001},
        "real": {"harrell_c": base + rng.normal(0, 0.01, 10), "macro_auc": base},
        "wsi": {"harrell_c": base - 0.02, "macro_auc": base - 0.05 + rng.normal(0, 0.01, 10)},
    }
    paired, equiv = compare_conditions(
        scores,
        [("synthetic", "real"), ("synthetic", "wsi")],
        ["harrell_c", "macro_auc"],
        n_train=80,
        n_test=20,
        equivalence=[("synthetic", "real")],
    )
    ps = [paired[k][m]["p_corrected"] for k in paired for m in ("harrell_c", "macro_auc")]
    holms = [paired[k][m]["p_holm"] for k in paired for m in ("harrell_c", "macro_auc")]
    np.testing.assert_allclose(holms, holm(ps))
    d = scores["synthetic"]["harrell_c"] - scores["real"]["harrell_c"]
    ref = corrected_resampled_t(d, n_train=80, n_test=20)
    assert paired["synthetic vs real"]["harrell_c"]["p_corrected"] == pytest.approx(ref.p)
    assert set(equiv["synthetic vs real"]) == {"harrell_c", "macro_auc"}
    assert equiv["synthetic vs real"]["macro_auc"]["margin"] == 0.03
    assert paired["synthetic vs real"]["harrell_c"]["mdd"] > 0
    assert (
        paired["synthetic vs real"]["harrell_c"]["t_p"]
        < paired["synthetic vs real"]["harrell_c"]["p_corrected"]
    )  # the uncorrected t, kept for reference, is the smaller
    grade_only = {**scores, "coxnet": {"harrell_c": base}}
    table, _ = compare_conditions(
        grade_only, [("synthetic", "coxnet")], ["harrell_c", "macro_auc"], n_train=80, n_test=20
    )
    assert set(table["synthetic vs coxnet"]) == {"harrell_c"}  # coxnet has no grade metric
    with pytest.raises(DataError, match="no condition 'omics'"):
        compare_conditions(scores, [("omics", "real")], ["harrell_c"], n_train=80, n_test=20)
    short = {"a": {"m": [0.1, 0.2]}, "b": {"m": [0.1]}}
    with pytest.raises(DataError, match="same folds"):
        compare_conditions(short, [("a", "b")], ["m"], n_train=80, n_test=20)


def test_bootstrap_of_a_mean_matches_the_normal_approximation() -> None:
    x = np.random.default_rng(1).normal(0.0, 1.0, 200)
    ci = bootstrap_ci(lambda idx: float(x[idx].mean()), x.size, n_boot=2000, seed=3)
    assert ci.estimate == pytest.approx(x.mean())
    half = 1.96 * x.std(ddof=0) / math.sqrt(x.size)
    assert ci.hi - ci.lo == pytest.approx(2 * half, rel=0.1)
    assert ci.lo < x.mean() < ci.hi
    again = bootstrap_ci(lambda idx: float(x[idx].mean()), x.size, n_boot=2000, seed=3)
    assert (again.lo, again.hi) == (ci.lo, ci.hi)  # seeded
    other = bootstrap_ci(lambda idx: float(x[idx].mean()), x.size, n_boot=2000, seed=4)
    assert (other.lo, other.hi) != (ci.lo, ci.hi)


def test_pooled_c_index_interval() -> None:
    time = np.arange(1.0, 41.0)
    event = np.ones(40, dtype=bool)
    perfect = pooled_c_index_ci(event, time, -time, n_boot=200, seed=0)
    assert (perfect.estimate, perfect.lo, perfect.hi) == (1.0, 1.0, 1.0)
    noisy = -time + np.random.default_rng(0).normal(0, 15, 40)
    two = np.stack([-time, noisy])  # (R = 2, N)
    ci = pooled_c_index_ci(event, time, two, n_boot=200, seed=0)
    want = (harrell_c_index(event, time, -time) + harrell_c_index(event, time, noisy)) / 2
    assert ci.estimate == pytest.approx(want)
    assert ci.lo <= ci.estimate <= ci.hi <= 1.0
    with pytest.raises(DataError, match="mismatched lengths"):
        pooled_c_index_ci(event, time, -time[:30])
