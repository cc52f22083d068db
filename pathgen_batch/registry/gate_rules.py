"""The rules of the promotion gate: gated metrics against Production, baselines of the
candidate's own evaluation, and the result of one such check (see :mod:`.gate`)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from pathgen_batch.errors import ConfigError

Direction = Literal["higher", "lower"]
EPS = 1e-12


@dataclass(frozen=True)
class MetricRule:
    """One gated metric: its name (a ``cv/<name>`` run metric), direction and tolerance."""

    name: str
    direction: Direction
    tolerance: float = 0.0

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.strip():
            raise ConfigError(f"MetricRule.name: expected a metric name, got {self.name!r}")
        if self.direction not in ("higher", "lower"):
            raise ConfigError(
                f"MetricRule.direction of {self.name!r}: expected 'higher' or 'lower', "
                f"got {self.direction!r}"
            )
        t = self.tolerance
        if isinstance(t, bool) or not isinstance(t, int | float) or not math.isfinite(t) or t < 0:
            raise ConfigError(
                f"MetricRule.tolerance of {self.name!r}: expected a number >= 0, got {t!r}"
            )
        object.__setattr__(self, "tolerance", float(t))


# Cross-validated metrics (``cv/<key>`` of the evaluation run, see ``tracking.cv_metrics``):
# the generator by the fidelity of its synthetic transcriptomes on the test folds, the fusion
# model by its predictions with synthetic transcriptomes, the way it is used at scoring time.
GENERATOR_RULES: tuple[MetricRule, ...] = (
    MetricRule("fidelity/mean_pearson", "higher", 0.02),
    MetricRule("fidelity/mae", "lower", 0.02),
)
FUSION_RULES: tuple[MetricRule, ...] = (
    MetricRule("synthetic/harrell_c", "higher", 0.01),
    MetricRule("synthetic/macro_auc", "higher", 0.01),
    MetricRule("synthetic/ibs", "lower", 0.01),
)


@dataclass(frozen=True)
class BaselineRule:
    """The candidate's metric ``name`` against ``baseline``, a metric of the same evaluation:
    ``higher`` fails when ``name < baseline - tolerance``, ``lower`` when
    ``name > baseline + tolerance``."""

    name: str
    baseline: str
    direction: Direction
    tolerance: float = 0.0

    def __post_init__(self) -> None:
        MetricRule(self.name, self.direction, self.tolerance)  # the same checks
        if not isinstance(self.baseline, str) or not self.baseline.strip():
            raise ConfigError(
                f"BaselineRule.baseline of {self.name!r}: expected a metric name, "
                f"got {self.baseline!r}"
            )
        object.__setattr__(self, "tolerance", float(self.tolerance))


GENERATOR_BASELINES: tuple[BaselineRule, ...] = (
    BaselineRule("fidelity/mean_pearson", "fidelity/ridge/mean_pearson", "higher"),
)
FUSION_BASELINES: tuple[BaselineRule, ...] = (
    BaselineRule("synthetic/harrell_c", "wsi_trained/harrell_c", "higher", 0.02),
)


@dataclass(frozen=True)
class MetricCheck:
    name: str
    direction: Direction
    tolerance: float
    candidate: float | None
    production: float | None
    passed: bool
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "metric": self.name,
            "direction": self.direction,
            "tolerance": self.tolerance,
            "candidate": self.candidate,
            "production": self.production,
            "passed": self.passed,
        }


def fmt(v: float) -> str:
    return f"{v:.4g}"


def check_baseline(rule: BaselineRule, metrics: Mapping[str, float]) -> MetricCheck:
    """The candidate's metric against a baseline of its own evaluation (see module doc)."""

    def finite(key: str) -> float | None:
        v = metrics.get(key)
        return float(v) if v is not None and math.isfinite(float(v)) else None

    c, b = finite(rule.name), finite(rule.baseline)
    name = f"{rule.name} vs {rule.baseline}"
    args = (name, rule.direction, rule.tolerance)
    if c is None or b is None:
        missing = rule.name if c is None else rule.baseline
        return MetricCheck(
            *args,
            c,
            b,
            False,
            f"the evaluation has no {missing!r} to compare {rule.name} with its baseline "
            f"{rule.baseline} (re-run `pathgen-batch evaluate`, or --force --reason)",
        )
    worse_by = b - c if rule.direction == "higher" else c - b
    ok = worse_by <= rule.tolerance + EPS
    verdict = (
        f"not worse beyond {fmt(rule.tolerance)}"
        if ok
        else f"below its baseline by {fmt(worse_by)}, beyond tolerance {fmt(rule.tolerance)}"
    )
    return MetricCheck(
        *args, c, b, ok, f"{rule.name} {fmt(c)} vs {rule.baseline} {fmt(b)}: {verdict}"
    )
