"""Paired comparisons across repeated cross-validation (R repeats x K folds).

The J = R * K per-fold differences ``d_j = a_j - b_j`` of two conditions scored on the same test
folds are not independent: the training sets overlap, so the plain paired t-test
(``se = s / sqrt(J)``) is anti-conservative. Nadeau and Bengio (2003) inflate the variance:

    se_corrected = sqrt((1 / J + n_test / n_train) * s^2),   t = mean(d) / se_corrected,

with ``s^2`` the sample variance (ddof 1) of the J differences, ``n_test / n_train`` the ratio
of test to training patients in one fold (``1 / (K - 1)`` for K equal folds), and ``J - 1``
degrees of freedom. :func:`corrected_resampled_t` is the two-sided test of no difference;
:func:`equivalence_tost` the two one-sided tests (Schuirmann 1987) that the difference lies
inside ``(-margin, +margin)``, on the same corrected standard error: its p-value is the larger
of the two one-sided p-values, and a small p-value is evidence of equivalence ("not
significantly different" is not). :func:`compare_conditions` runs both over a table of
comparisons and metrics and adjusts the corrected p-values by Holm across the table.

How small a difference the design can see: :func:`minimum_detectable_difference` (in the
metric's units, from the spread of the differences) and :func:`detectable_hazard_ratio` (from
the number of events, Schoenfeld 1983).

Missing differences (a metric that could not be computed on a fold) are dropped with a note.
Degenerate inputs give NaN with a note, never a crash: fewer than 2 differences; all
differences equal but not zero (zero variance). All differences zero: p = 1 (no difference),
and TOST p = 0 (the difference is exactly zero, inside any positive margin).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import stats

from pathgen_batch.errors import ConfigError, DataError
from pathgen_batch.evaluation._checks import check_alpha, float_array, open_fraction
from pathgen_batch.evaluation.multiplicity import holm
from pathgen_batch.evaluation.stats import paired_comparison

DEFAULT_MARGIN = 0.03
"""Default equivalence margin, in C-index and in macro AUC units."""
DEFAULT_MARGINS: dict[str, float] = {"harrell_c": DEFAULT_MARGIN, "macro_auc": DEFAULT_MARGIN}


@dataclass(frozen=True)
class CorrectedDifferences:
    """The differences that enter a corrected test, their spread and corrected standard error."""

    n: int  # J, the differences used
    mean_difference: float
    sd: float  # sample standard deviation (ddof 1), NaN for n < 2
    test_train_ratio: float  # n_test / n_train
    se: float  # sqrt((1 / J + n_test / n_train) * sd^2)
    df: int  # J - 1
    note: str


def corrected_differences(
    differences: Any, *, n_train: float, n_test: float
) -> CorrectedDifferences:
    """Mean, sd and Nadeau-Bengio corrected standard error of per-fold differences (J,).

    n_train, n_test: patients in the training and test part of one fold (their means over folds
    when the folds differ in size).
    """
    d = float_array("differences", differences, 1, allow_nan=True, min_len=0)
    ratio = _ratio(n_train, n_test)
    notes: list[str] = []
    missing = int(np.isnan(d).sum())
    if missing:
        notes.append(f"{missing} missing difference(s) dropped")
        d = d[~np.isnan(d)]
    if np.isinf(d).any():
        raise DataError("differences: expected finite numbers (or NaN for missing), got inf")
    n = int(d.size)
    nan = float("nan")
    if n == 0:
        return CorrectedDifferences(0, nan, nan, ratio, nan, -1, _join(notes, "no differences"))
    mean = float(d.mean())
    if n < 2:
        notes.append("one difference: no test possible")
        return CorrectedDifferences(1, mean, nan, ratio, nan, 0, "; ".join(notes))
    sd = float(d.std(ddof=1))
    se = math.sqrt((1.0 / n + ratio) * sd**2)
    return CorrectedDifferences(n, mean, sd, ratio, se, n - 1, "; ".join(notes))


def _fields_as(result: Any, renames: Mapping[str, str]) -> dict[str, Any]:
    """A result's fields by name, those in ``renames`` under their new names (the corrected
    statistics say so in their keys)."""
    return {renames.get(k, k): v for k, v in dataclasses.asdict(result).items()}


@dataclass(frozen=True)
class CorrectedTest:
    """Nadeau-Bengio corrected resampled t-test of ``a - b``, two-sided."""

    n: int
    mean_difference: float
    sd: float
    se: float
    t: float
    df: int
    p: float
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return _fields_as(self, {"se": "se_corrected", "t": "t_corrected", "p": "p_corrected"})


def corrected_resampled_t(differences: Any, *, n_train: float, n_test: float) -> CorrectedTest:
    """Two-sided corrected resampled t-test of the differences (J,) against zero.

    ``t = mean(d) / sqrt((1 / J + n_test / n_train) * s^2)`` on ``J - 1`` degrees of freedom,
    ``p = 2 * P(T_{J-1} > |t|)`` (Nadeau and Bengio 2003; Bouckaert and Frank 2004 for R x K).
    """
    c = corrected_differences(differences, n_train=n_train, n_test=n_test)
    nan = float("nan")
    if c.n < 2:
        return CorrectedTest(c.n, c.mean_difference, c.sd, c.se, nan, c.df, nan, c.note)
    if c.sd == 0.0:
        if c.mean_difference == 0.0:
            note = _join([c.note] if c.note else [], "all differences are zero: p = 1.0")
            return CorrectedTest(c.n, 0.0, 0.0, 0.0, 0.0, c.df, 1.0, note)
        note = _join([c.note] if c.note else [], "all differences are equal: t is undefined")
        return CorrectedTest(c.n, c.mean_difference, 0.0, 0.0, nan, c.df, nan, note)
    t = c.mean_difference / c.se
    p = float(2.0 * stats.t.sf(abs(t), c.df))
    return CorrectedTest(c.n, c.mean_difference, c.sd, c.se, float(t), c.df, p, c.note)


@dataclass(frozen=True)
class Equivalence:
    """TOST of ``|a - b| < margin`` on the corrected standard error.

    p_lower: one-sided p of H0 ``d <= -margin``; p_upper: of H0 ``d >= +margin``;
    p_tost = max(p_lower, p_upper). ci_lo, ci_hi: the ``1 - 2 * alpha`` confidence interval of
    the mean difference, inside ``(-margin, margin)`` exactly when ``p_tost < alpha``.
    """

    n: int
    mean_difference: float
    se: float
    df: int
    margin: float
    p_lower: float
    p_upper: float
    p_tost: float
    alpha: float
    ci_lo: float
    ci_hi: float
    note: str = ""

    @property
    def equivalent(self) -> bool:
        """Equivalence shown at level ``alpha`` (False when the test could not run)."""
        return bool(self.p_tost < self.alpha)

    def to_dict(self) -> dict[str, Any]:
        out = _fields_as(self, {"se": "se_corrected"})
        note = out.pop("note")
        return {**out, "equivalent": self.equivalent, "note": note}


def equivalence_tost(
    differences: Any,
    *,
    n_train: float,
    n_test: float,
    margin: float = DEFAULT_MARGIN,
    alpha: float = 0.05,
) -> Equivalence:
    """Two one-sided corrected t-tests that the mean difference lies in ``(-margin, margin)``.

    ``t_lower = (mean + margin) / se``, ``p_lower = P(T_{J-1} > t_lower)``;
    ``t_upper = (mean - margin) / se``, ``p_upper = P(T_{J-1} < t_upper)``;
    ``p_tost = max(p_lower, p_upper)``, with ``se`` the Nadeau-Bengio corrected standard error.
    """
    m = _positive("margin", margin)
    a = check_alpha(alpha)
    c = corrected_differences(differences, n_train=n_train, n_test=n_test)
    nan = float("nan")
    if c.n < 2 or c.sd == 0.0:
        if c.n >= 2 and c.mean_difference == 0.0:
            note = _join([c.note] if c.note else [], "all differences are zero")
            return Equivalence(c.n, 0.0, 0.0, c.df, m, 0.0, 0.0, 0.0, a, 0.0, 0.0, note)
        note = c.note if c.n < 2 else _join([c.note] if c.note else [], "zero variance")
        return Equivalence(c.n, c.mean_difference, c.se, c.df, m, nan, nan, nan, a, nan, nan, note)
    p_lower = float(stats.t.sf((c.mean_difference + m) / c.se, c.df))
    p_upper = float(stats.t.cdf((c.mean_difference - m) / c.se, c.df))
    half = float(stats.t.ppf(1.0 - a, c.df)) * c.se
    return Equivalence(
        n=c.n,
        mean_difference=c.mean_difference,
        se=c.se,
        df=c.df,
        margin=m,
        p_lower=p_lower,
        p_upper=p_upper,
        p_tost=max(p_lower, p_upper),
        alpha=a,
        ci_lo=c.mean_difference - half,
        ci_hi=c.mean_difference + half,
        note=c.note,
    )


def minimum_detectable_difference(
    sd: float,
    n: int,
    *,
    n_train: float,
    n_test: float,
    alpha: float = 0.05,
    power: float = 0.8,
) -> float:
    """The smallest true mean difference the two-sided corrected t-test finds with ``power``.

    ``MDD = (t_{1 - alpha/2, J-1} + t_{power, J-1}) * sd * sqrt(1 / J + n_test / n_train)``,
    with J = ``n`` differences whose standard deviation is ``sd`` (the usual normal-shift
    approximation, with t quantiles for the small J). Events enter through ``sd``: the fewer
    the events in a test fold, the noisier its C-index and the larger the MDD. NaN for n < 2.
    """
    a = check_alpha(alpha)
    pw = open_fraction("power", power)
    ratio = _ratio(n_train, n_test)
    if isinstance(n, bool) or not isinstance(n, int | np.integer) or n < 0:
        raise ConfigError(f"n: expected a count of differences >= 0, got {n!r}")
    s = float(sd)
    if not s >= 0.0:  # also rejects NaN
        raise DataError(f"sd: expected a standard deviation >= 0, got {sd!r}")
    if n < 2:
        return float("nan")
    df = int(n) - 1
    q = float(stats.t.ppf(1.0 - a / 2.0, df) + stats.t.ppf(pw, df))
    return q * s * math.sqrt(1.0 / int(n) + ratio)


def detectable_hazard_ratio(
    n_events: int, *, alpha: float = 0.05, power: float = 0.8, fraction: float = 0.5
) -> float:
    """The smallest hazard ratio (> 1) between two risk groups that ``n_events`` can show.

    Schoenfeld's formula for the log-rank / Cox test, ``D = (z_{1-alpha/2} + z_power)^2 /
    (f (1 - f) log(HR)^2)``, solved for HR: ``HR = exp((z_{1-alpha/2} + z_power) /
    sqrt(D f (1 - f)))``, with ``f`` the fraction of patients in one group. Two-sided test at
    ``alpha``; about 65 events for HR = 2 at 80% power and f = 0.5.
    """
    a = check_alpha(alpha)
    pw = open_fraction("power", power)
    f = open_fraction("fraction", fraction)
    if isinstance(n_events, bool) or not isinstance(n_events, int | np.integer) or n_events < 1:
        raise ConfigError(f"n_events: expected a count >= 1, got {n_events!r}")
    z = float(stats.norm.ppf(1.0 - a / 2.0) + stats.norm.ppf(pw))
    return math.exp(z / math.sqrt(int(n_events) * f * (1.0 - f)))


def compare_conditions(
    scores: Mapping[str, Mapping[str, Any]],
    comparisons: Sequence[tuple[str, str]],
    metrics: Sequence[str],
    *,
    n_train: float,
    n_test: float,
    equivalence: Sequence[tuple[str, str]] = (),
    margins: Mapping[str, float] | None = None,
    alpha: float = 0.05,
    power: float = 0.8,
) -> tuple[dict[str, dict[str, dict[str, Any]]], dict[str, dict[str, dict[str, Any]]]]:
    """Corrected tests of a table of comparisons, Holm-adjusted across the table, and TOST.

    scores: condition -> metric -> (J,) per-fold scores, every condition's folds in the same
    order (repeat-major). comparisons: (a, b) pairs tested on ``a - b`` for each of ``metrics``
    that both conditions have (a metric either lacks is left out of the table); equivalence:
    (a, b) pairs tested by TOST for each metric in ``margins`` (metric -> margin; default
    ``DEFAULT_MARGINS``: 0.03 for ``harrell_c`` and for ``macro_auc``).

    Returns ``paired`` ("a vs b" -> metric -> :meth:`CorrectedTest.to_dict`, plus ``p_holm``
    (Holm over every (comparison, metric) of the table), ``mdd`` (the minimum detectable
    difference at ``alpha`` and ``power``) and, for reference, the uncorrected ``wilcoxon_p``
    and ``t_p`` of :func:`~pathgen_batch.evaluation.stats.paired_comparison`) and
    ``equivalence`` ("a vs b" -> metric -> :meth:`Equivalence.to_dict`).
    """
    margins = dict(DEFAULT_MARGINS if margins is None else margins)
    paired: dict[str, dict[str, dict[str, Any]]] = {}
    keys: list[tuple[str, str]] = []
    pvalues: list[float] = []
    for a, b in comparisons:
        name = f"{a} vs {b}"
        paired[name] = {}
        _conditions(scores, a, b)
        for m in metrics:
            if m not in scores[a] or m not in scores[b]:
                continue
            d = _difference(scores, a, b, m)
            test = corrected_resampled_t(d, n_train=n_train, n_test=n_test)
            kept = d[~np.isnan(d)]
            naive = paired_comparison(kept, np.zeros_like(kept))
            mdd = (
                minimum_detectable_difference(
                    test.sd, test.n, n_train=n_train, n_test=n_test, alpha=alpha, power=power
                )
                if test.n >= 2
                else float("nan")
            )
            paired[name][m] = {
                **test.to_dict(),
                "mdd": mdd,
                "wilcoxon_p": naive.wilcoxon_p,
                "t_p": naive.t_p,
            }
            keys.append((name, m))
            pvalues.append(test.p)
    for (name, m), p in zip(keys, holm(np.asarray(pvalues, dtype=np.float64)), strict=True):
        paired[name][m]["p_holm"] = float(p)
    equiv: dict[str, dict[str, dict[str, Any]]] = {}
    for a, b in equivalence:
        equiv[f"{a} vs {b}"] = {
            m: equivalence_tost(
                _difference(scores, a, b, m),
                n_train=n_train,
                n_test=n_test,
                margin=margin,
                alpha=alpha,
            ).to_dict()
            for m, margin in margins.items()
        }
    return paired, equiv


def _difference(scores: Mapping[str, Mapping[str, Any]], a: str, b: str, metric: str) -> np.ndarray:
    _conditions(scores, a, b)
    for cond in (a, b):
        if metric not in scores[cond]:
            raise DataError(f"scores[{cond!r}]: no metric {metric!r}")
    x = float_array(f"{a} {metric}", scores[a][metric], 1, allow_nan=True, min_len=0)
    y = float_array(f"{b} {metric}", scores[b][metric], 1, allow_nan=True, min_len=0)
    if x.shape != y.shape:
        raise DataError(
            f"{metric}: {a} has {x.shape[0]} fold scores and {b} has {y.shape[0]}; paired "
            "comparisons need the same folds"
        )
    return x - y


def _conditions(scores: Mapping[str, Any], *names: str) -> None:
    for cond in names:
        if cond not in scores:
            raise DataError(f"scores: no condition {cond!r} (have {sorted(scores)})")


def _ratio(n_train: float, n_test: float) -> float:
    tr = _positive("n_train", n_train)
    te = _positive("n_test", n_test)
    return te / tr


def _positive(name: str, x: Any) -> float:
    if isinstance(x, bool) or not isinstance(x, int | float | np.integer | np.floating):
        raise ConfigError(f"{name}: expected a positive number, got {x!r}")
    v = float(x)
    if not (v > 0.0 and math.isfinite(v)):
        raise ConfigError(f"{name}: expected a positive number, got {v}")
    return v


def _join(notes: list[str], extra: str) -> str:
    return "; ".join([*notes, extra])
