"""Paired comparisons across cross-validation folds.

The paper's claims are paired: the same folds scored by two conditions (WSI only vs WSI +
synthetic transcriptome; synthetic vs real transcriptome). ``paired_comparison`` runs the
Wilcoxon signed-rank test and the paired t-test on the per-fold differences ``a - b``.

Degenerate inputs give a result with a note, never a crash:

- fewer than 2 pairs: statistics and p-values are NaN (no test is possible);
- every difference is zero: p = 1.0 for both tests (no evidence of any difference), statistic 0;
- the differences are all equal (to 1e-12 relative) but not zero: the t-test is undefined
  (zero variance), its statistic and p-value are NaN; the Wilcoxon test still runs.

With few folds the Wilcoxon test cannot reach small p-values at all: its smallest two-sided
p-value with n non-zero differences is ``2 / 2**n`` (0.0625 for 5 folds); the note says so.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import stats

from pathgen_batch.evaluation._checks import float_array, same_length


@dataclass(frozen=True)
class PairedTest:
    """Result of a paired comparison of ``a`` against ``b`` (differences ``a - b``)."""

    n: int
    mean_difference: float
    wilcoxon_statistic: float
    wilcoxon_p: float
    t_statistic: float
    t_p: float
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def paired_comparison(a: Any, b: Any) -> PairedTest:
    """Wilcoxon signed-rank and paired t-test of per-fold scores ``a`` vs ``b``, both (n,).

    Zero differences are dropped by the Wilcoxon test (Wilcoxon's convention) and kept by the
    t-test. Both tests are two-sided.
    """
    x = float_array("a", a, 1, min_len=0)
    y = float_array("b", b, 1, min_len=0)
    n = same_length(a=x, b=y)
    nan = float("nan")
    if n == 0:
        return PairedTest(0, nan, nan, nan, nan, nan, "no pairs: no test possible")
    d = x - y  # (n,)
    mean_diff = float(d.mean())
    if n < 2:
        return PairedTest(n, mean_diff, nan, nan, nan, nan, "one pair: no test possible")
    nonzero = int(np.count_nonzero(d))
    if nonzero == 0:
        return PairedTest(
            n, 0.0, 0.0, 1.0, 0.0, 1.0, "all differences are zero: no difference (p = 1.0)"
        )
    notes: list[str] = []
    w = stats.wilcoxon(d, zero_method="wilcox", alternative="two-sided")
    w_stat, w_p = float(w.statistic), float(w.pvalue)
    if nonzero < n:
        notes.append(f"Wilcoxon dropped {n - nonzero} zero difference(s)")
    if 2.0 / 2.0**nonzero > 0.05:
        notes.append(
            f"with {nonzero} non-zero difference(s) the Wilcoxon p-value cannot go below "
            f"{2.0 / 2.0**nonzero:.4g}"
        )
    if np.ptp(d) <= 1e-12 * max(1.0, float(np.abs(d).max())):
        t_stat, t_p = nan, nan
        notes.append("all differences are equal: the t-test is undefined (zero variance)")
    else:
        t = stats.ttest_rel(x, y, alternative="two-sided")
        t_stat, t_p = float(t.statistic), float(t.pvalue)
    return PairedTest(n, mean_diff, w_stat, w_p, t_stat, t_p, "; ".join(notes))
