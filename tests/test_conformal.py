"""Split conformal prediction: the finite-sample quantile by hand, the exact exchangeability
guarantee, empirical coverage on simulated data, set sizes, survival bins, intervals, state."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from pathgen_batch.errors import ConfigError, DataError
from pathgen_batch.evaluation import conformal
from pathgen_batch.evaluation.conformal import SetMethod

ALPHA = 0.1


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _sample_labels(rng: np.random.Generator, p: np.ndarray) -> np.ndarray:
    u = rng.random(size=(p.shape[0], 1))  # (N, 1)
    return np.minimum((np.cumsum(p, axis=1) < u).sum(axis=1), p.shape[1] - 1)


def _simulate(seed: int, n: int, noise: float, k: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """Labels drawn from softmax(z); the classifier sees z blurred by ``noise`` (N, K)."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0.0, 2.0, size=(n, k))  # (N, K) true logits
    labels = _sample_labels(rng, _softmax(z))
    probs = _softmax(0.7 * z + rng.normal(0.0, noise, size=z.shape))  # miscalibrated on purpose
    return probs, labels


# ----------------------------------------------------------------------------------------------
# The quantile
# ----------------------------------------------------------------------------------------------


def test_quantile_index_by_hand() -> None:
    assert conformal.conformal_quantile_index(9, 0.1) == 9  # ceil(10 * 0.9) = 9 exactly, not 10
    assert conformal.conformal_quantile_index(10, 0.1) == 10  # ceil(9.9)
    assert conformal.conformal_quantile_index(19, 0.1) == 18  # ceil(18)
    assert conformal.conformal_quantile_index(100, 0.1) == 91  # ceil(90.9)
    assert conformal.conformal_quantile_index(4, 0.2) == 4  # ceil(4)
    assert conformal.min_calibration_size(0.1) == 9
    assert conformal.min_calibration_size(0.05) == 19
    assert conformal.min_calibration_size(0.2) == 4
    with pytest.raises(DataError, match=r"alpha=0.1 needs at least 9 calibration items.*got 8"):
        conformal.conformal_quantile_index(8, 0.1)
    with pytest.raises(DataError, match="got 3"):
        conformal.conformal_quantile_index(3, 0.2)
    with pytest.raises(ConfigError, match="alpha: expected a number in"):
        conformal.conformal_quantile_index(100, 1.5)


def test_quantile_is_kth_smallest_score() -> None:
    scores = [0.5, 0.1, 0.9, 0.3, 0.7, 0.2, 0.8, 0.4, 0.6, 1.0]
    # n = 10, alpha = 0.2: k = ceil(11 * 0.8) = ceil(8.8) = 9 -> 9th smallest = 0.9
    assert conformal.conformal_quantile(scores, 0.2) == 0.9
    # alpha = 0.5: k = ceil(5.5) = 6 -> 0.6
    assert conformal.conformal_quantile(scores, 0.5) == 0.6


def test_scores_by_hand() -> None:
    probs = np.array([[0.5, 0.3, 0.2], [0.4, 0.4, 0.2]])
    np.testing.assert_allclose(
        conformal.class_scores(probs, "lac"), [[0.5, 0.7, 0.8], [0.6, 0.6, 0.8]]
    )
    # APS: total probability of the classes at least as probable as the candidate
    np.testing.assert_allclose(
        conformal.class_scores(probs, "aps"), [[0.5, 0.8, 1.0], [0.8, 0.8, 1.0]]
    )
    with pytest.raises(ConfigError, match="method: expected one of"):
        conformal.class_scores(probs, "raps")


def test_lac_sets_by_hand() -> None:
    cal = np.array([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [0.6, 0.4], [0.45, 0.55]])
    labels = np.array([0, 0, 1, 1, 0])
    # scores 1 - p_true: 0.1, 0.2, 0.3, 0.6, 0.55; alpha = 0.3: k = ceil(6 * 0.7) = 5 -> 0.6
    c = conformal.fit_classification(cal, labels, alpha=0.3, method="lac")
    assert c.qhat == pytest.approx(0.6) and c.n_cal == 5
    # a class is in the set when p >= 1 - 0.6 = 0.4
    sets = c.predict_sets([[0.7, 0.3], [0.5, 0.5], [0.35, 0.65]])
    np.testing.assert_array_equal(sets, [[True, False], [True, True], [False, True]])


# ----------------------------------------------------------------------------------------------
# Guarantees
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["lac", "aps"])
def test_exact_coverage_over_all_exchangeable_splits(method: SetMethod) -> None:
    # Among n + 1 exchangeable items, hold each out in turn and calibrate on the other n. The
    # held-out item is covered exactly when its score ranks among the k smallest of the n + 1,
    # so with distinct scores exactly k of the n + 1 splits cover:
    # k / (n + 1) = ceil((n + 1)(1 - alpha)) / (n + 1) >= 1 - alpha.
    probs, labels = _simulate(seed=11, n=40, noise=1.0)
    for alpha, k in ((0.1, 36), (0.12, 36), (0.2, 32)):
        covered = 0
        for i in range(40):
            rest = np.arange(40) != i
            c = conformal.fit_classification(probs[rest], labels[rest], alpha, method)
            covered += bool(c.predict_sets(probs[i : i + 1])[0, labels[i]])
        assert covered == k
        assert covered / 40 >= 1 - alpha


def test_exact_interval_coverage_over_all_exchangeable_splits() -> None:
    rng = np.random.default_rng(5)
    pred = rng.normal(size=30)
    target = pred + rng.standard_t(3, size=30)
    scale = rng.uniform(0.5, 2.0, size=30)
    # n = 29, alpha = 0.1: k = ceil(30 * 0.9) = 27
    for use_scale in (False, True):
        covered = 0
        for i in range(30):
            rest = np.arange(30) != i
            c = conformal.fit_interval(
                pred[rest], target[rest], 0.1, scale[rest] if use_scale else None
            )
            lo, hi = c.predict(pred[i : i + 1], scale[i : i + 1] if use_scale else None)
            covered += bool(lo[0] <= target[i] <= hi[0])
        assert covered == 27


@pytest.mark.parametrize("method", ["lac", "aps"])
def test_empirical_coverage_on_simulated_data(method: SetMethod) -> None:
    # 2000 calibration and 5000 test items per seed. The expected coverage is
    # k / (n + 1) = 1801 / 2001 (just above 0.9); one run's coverage has a standard deviation of
    # about sqrt(0.09 / 2002 + 0.09 / 5000) ~ 0.008, so each seed must land within 0.02, and the
    # mean over seeds must not fall below 1 - alpha by more than three standard errors (the
    # exact ">= 1 - alpha" holds in expectation, see the exchangeable-splits test).
    n_cal, n_test, seeds = 2000, 5000, range(12)
    results = []
    for seed in seeds:
        probs, labels = _simulate(seed, n_cal + n_test, noise=1.0)
        c = conformal.fit_classification(probs[:n_cal], labels[:n_cal], ALPHA, method)
        cov = conformal.coverage(c.predict_sets(probs[n_cal:]), labels[n_cal:])
        assert abs(cov - (1 - ALPHA)) <= 0.02, (seed, cov)
        results.append(cov)
    sd_one = math.sqrt(ALPHA * (1 - ALPHA) * (1 / (n_cal + 2) + 1 / n_test))
    assert np.mean(results) >= 1 - ALPHA - 3 * sd_one / math.sqrt(len(results))


@pytest.mark.parametrize("method", ["lac", "aps"])
def test_set_size_shrinks_as_classifier_improves(method: SetMethod) -> None:
    sizes = []
    for noise in (3.0, 1.0, 0.0):
        probs, labels = _simulate(seed=0, n=6000, noise=noise)
        c = conformal.fit_classification(probs[:2000], labels[:2000], ALPHA, method)
        sets = c.predict_sets(probs[2000:])
        assert conformal.coverage(sets, labels[2000:]) >= 1 - ALPHA - 0.02
        sizes.append(conformal.average_set_size(sets))
    assert sizes[0] > sizes[1] > sizes[2]


def test_normalised_intervals_adapt_to_scale() -> None:
    rng = np.random.default_rng(0)
    x = rng.random(7000)
    scale = 0.1 + x  # (N,) known spread: noise grows with x
    pred = 3.0 * x
    target = pred + scale * rng.normal(size=7000)
    cal, test = slice(0, 2000), slice(2000, None)
    plain = conformal.fit_interval(pred[cal], target[cal], ALPHA)
    scaled = conformal.fit_interval(pred[cal], target[cal], ALPHA, scale=scale[cal])
    ip = plain.predict(pred[test])
    isc = scaled.predict(pred[test], scale[test])
    for iv in (ip, isc):
        assert abs(conformal.coverage(iv, target[test]) - (1 - ALPHA)) <= 0.02
    noisy = x[test] > 0.5
    # Constant-width intervals under-cover the noisy half; scaled ones cover it.
    assert conformal.coverage((ip[0][noisy], ip[1][noisy]), target[test][noisy]) < 0.85
    assert conformal.coverage((isc[0][noisy], isc[1][noisy]), target[test][noisy]) > 0.87
    assert conformal.average_width(isc) < conformal.average_width(ip)


# ----------------------------------------------------------------------------------------------
# Survival bins, coverage helpers, state, errors
# ----------------------------------------------------------------------------------------------


def test_survival_bins_calibrate_on_known_bins_only() -> None:
    probs = np.array(
        [
            [0.7, 0.2, 0.1],  # bin 0, event      -> known, LAC score 0.3
            [0.2, 0.5, 0.3],  # bin 1, event      -> known, 0.5
            [0.1, 0.3, 0.6],  # bin 2, censored   -> known (last, open-ended bin), 0.4
            [0.6, 0.3, 0.1],  # bin 1, censored   -> unknown, left out
            [0.3, 0.3, 0.4],  # bin 0, event      -> known, 0.7
            [0.1, 0.1, 0.8],  # bin 0, censored   -> unknown, left out
        ]
    )
    bins = [0, 1, 2, 1, 0, 0]
    event = [True, True, False, False, True, False]
    # known scores 0.3, 0.4, 0.5, 0.7; alpha = 0.4: k = ceil(5 * 0.6) = 3 -> 0.5
    # (with all six patients it would be k = ceil(7 * 0.6) = 5 of 0.3..0.9 -> 0.7)
    c = conformal.fit_survival_bins(probs, bins, event, alpha=0.4, method="lac")
    assert c.n_cal == 4 and c.qhat == pytest.approx(0.5)
    np.testing.assert_array_equal(c.predict_sets([[0.6, 0.3, 0.1]]), [[True, False, False]])
    with pytest.raises(DataError, match="no calibration patient has a known survival bin"):
        conformal.fit_survival_bins(probs[:2], [0, 1], [False, False], alpha=0.4)


def test_coverage_size_and_width_by_hand() -> None:
    sets = np.array([[True, False, True], [False, False, True], [True, True, True]])
    assert conformal.coverage(sets, [0, 1, 2]) == pytest.approx(2 / 3)
    assert conformal.average_set_size(sets) == pytest.approx(2.0)
    lo, hi = np.array([0.0, 1.0, 2.0]), np.array([1.0, 2.0, 4.0])
    assert conformal.coverage((lo, hi), [1.0, 0.5, 3.0]) == pytest.approx(
        2 / 3
    )  # bounds count inside
    assert conformal.average_width((lo, hi)) == pytest.approx(4 / 3)
    with pytest.raises(DataError, match="sets: expected an \\(N, K\\) bool mask"):
        conformal.coverage(np.ones((3, 3)), [0, 1, 2])
    with pytest.raises(DataError, match="truth: expected class indices in \\[0, 3\\)"):
        conformal.coverage(sets, [0, 1, 3])
    with pytest.raises(DataError, match="mismatched lengths"):
        conformal.coverage((lo, hi), [1.0, 2.0])


def test_state_round_trips_through_json_strictly() -> None:
    probs, labels = _simulate(seed=1, n=200, noise=1.0)
    c = conformal.fit_classification(probs, labels, 0.1, "aps")
    back = conformal.ClassificationConformal.from_dict(json.loads(json.dumps(c.to_dict())))
    assert back == c
    np.testing.assert_array_equal(back.predict_sets(probs), c.predict_sets(probs))
    iv = conformal.fit_interval([0.0, 1.0, 2.0, 3.0, 4.0], [0.5, 1.0, 2.5, 2.0, 4.0], alpha=0.2)
    assert iv.qhat == pytest.approx(1.0)  # |residuals| 0.5 0 0.5 1 0; k = ceil(6*0.8) = 5
    assert conformal.IntervalConformal.from_dict(json.loads(json.dumps(iv.to_dict()))) == iv
    with pytest.raises(ConfigError, match="unknown key"):
        conformal.ClassificationConformal.from_dict({**c.to_dict(), "qhatt": 0.5})
    with pytest.raises(ConfigError, match=r"n_cal: alpha=0\.1 needs at least 9"):
        conformal.ClassificationConformal.from_dict({**c.to_dict(), "n_cal": 5})
    with pytest.raises(ConfigError, match="method"):
        conformal.ClassificationConformal.from_dict({**c.to_dict(), "method": "topk"})


def test_fit_and_predict_input_errors() -> None:
    probs, labels = _simulate(seed=2, n=50, noise=1.0)
    with pytest.raises(DataError, match=r"alpha=0\.1 needs at least 9 calibration items"):
        conformal.fit_classification(probs[:5], labels[:5], 0.1)
    with pytest.raises(DataError, match="cal_labels: expected class indices in \\[0, 4\\)"):
        conformal.fit_classification(probs, np.full(50, 4), 0.1)
    with pytest.raises(DataError, match="cal_probs: expected each row to sum to 1"):
        conformal.fit_classification(probs * 0.5, labels, 0.1)
    with pytest.raises(DataError, match="mismatched lengths"):
        conformal.fit_classification(probs, labels[:-1], 0.1)
    with pytest.raises(DataError, match="scale: expected positive"):
        conformal.fit_interval(np.zeros(20), np.ones(20), 0.1, scale=np.zeros(20))
    with pytest.raises(DataError, match="cal_target: expected finite"):
        conformal.fit_interval(np.zeros(20), np.r_[np.ones(19), np.nan], 0.1)
    iv = conformal.fit_interval(np.zeros(20), np.ones(20), 0.1, scale=np.ones(20))
    with pytest.raises(DataError, match="calibrated with a scale"):
        iv.predict(np.zeros(3))
    plain = conformal.fit_interval(np.zeros(20), np.ones(20), 0.1)
    with pytest.raises(DataError, match="calibrated without a scale"):
        plain.predict(np.zeros(3), scale=np.ones(3))
