"""The promotion gate: may a candidate version replace the current Production version?

Pure logic over :class:`VersionFacts` (what the registry knows of a version); no mlflow here.

A candidate passes when

1. it was evaluated the same way as the current Production version (same evaluation digest:
   same cohort and patient folds), so their metrics are comparable;
2. for every gated metric of its kind, it is not worse than Production beyond the metric's
   tolerance, in the metric's direction (``higher``: C-index, AUC; ``lower``: IBS, MAE):
   ``higher`` fails when ``candidate < production - tolerance``, ``lower`` when
   ``candidate > production + tolerance``; a metric missing on either side fails;
3. it is not worse than the baselines of its own evaluation (``BaselineRule``): a generator
   whose synthetic transcriptomes correlate less with the real ones than ridge regression from
   mean-pooled tile features does (``fidelity/mean_pearson`` vs ``fidelity/ridge/mean_pearson``)
   adds nothing over a linear map; a fusion model whose synthetic-transcriptome predictions
   rank patients worse than the trained WSI-only comparator (``synthetic/harrell_c`` vs
   ``wsi_trained/harrell_c``, tolerance 0.02) adds nothing over the slide alone. A baseline
   metric missing from the evaluation fails (evaluations older than the repeated-CV protocol
   have none); ``promote --force --reason`` overrides, as for every refusal;
4. it fits the Production versions of the other models: generator and fusion model share the
   feature contract and the gene panel; the encoder's contract is the one they were trained on.

With no Production version yet, (1) and the comparisons of (2) are skipped ((3) is not), but
the candidate must still carry every gated metric, so that the next candidate can be compared
with it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from pathgen_batch import config
from pathgen_batch.errors import ConfigError, DataError
from pathgen_batch.features.contract import FeatureContract
from pathgen_batch.registry.gate_rules import (
    EPS,
    FUSION_BASELINES,
    FUSION_RULES,
    GENERATOR_BASELINES,
    GENERATOR_RULES,
    BaselineRule,
    Direction,
    MetricCheck,
    MetricRule,
    check_baseline,
    fmt,
)
from pathgen_batch.registry.tags import ENCODER_MODEL, FUSION_MODEL, GENERATOR_MODEL


@dataclass(frozen=True)
class GateConfig:
    """Gated metrics per model kind, and the names of the models that must fit together.

    same_evaluation: require candidate and Production to carry the same evaluation digest.
    """

    generator: tuple[MetricRule, ...] = GENERATOR_RULES
    fusion: tuple[MetricRule, ...] = FUSION_RULES
    encoder: tuple[MetricRule, ...] = ()
    same_evaluation: bool = True
    generator_baselines: tuple[BaselineRule, ...] = GENERATOR_BASELINES
    fusion_baselines: tuple[BaselineRule, ...] = FUSION_BASELINES
    generator_name: str = GENERATOR_MODEL
    fusion_name: str = FUSION_MODEL
    encoder_name: str = ENCODER_MODEL

    def __post_init__(self) -> None:
        for kind in ("generator", "fusion", "encoder"):
            names = [r.name for r in getattr(self, kind)]
            dups = sorted({n for n in names if names.count(n) > 1})
            if dups:
                raise ConfigError(f"GateConfig.{kind}: metric(s) {dups} listed more than once")

    def rules_for(self, kind: str) -> tuple[MetricRule, ...]:
        if kind not in ("generator", "fusion", "encoder"):
            raise ConfigError(f"model kind: expected generator, fusion or encoder, got {kind!r}")
        rules: tuple[MetricRule, ...] = getattr(self, kind)
        return rules

    def baselines_for(self, kind: str) -> tuple[BaselineRule, ...]:
        """The baseline rules of ``kind`` (none for encoders)."""
        self.rules_for(kind)
        rules: tuple[BaselineRule, ...] = getattr(self, f"{kind}_baselines", ())
        return rules

    def name_of(self, kind: str) -> str:
        self.rules_for(kind)
        name: str = getattr(self, f"{kind}_name")
        return name

    def with_tolerances(self, overrides: Mapping[str, float]) -> GateConfig:
        """A copy whose rules named in ``overrides`` get those tolerances (any kind)."""
        known = {r.name for k in ("generator", "fusion", "encoder") for r in self.rules_for(k)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise ConfigError(
                f"tolerance override: unknown metric(s) {unknown}; gated metrics are "
                f"{sorted(known)}"
            )
        data = self.to_dict()
        for kind in ("generator", "fusion", "encoder"):
            for r in data[kind]:
                if r["name"] in overrides:
                    r["tolerance"] = overrides[r["name"]]
        return from_dict(data)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON data (rules as lists of mappings); ``from_dict`` is the inverse."""
        out: dict[str, Any] = {}
        for k, v in dataclasses.asdict(self).items():
            out[k] = [dict(r) for r in v] if isinstance(v, tuple) else v
        return out


def from_dict(data: dict[str, Any]) -> GateConfig:
    """Build a GateConfig strictly (unknown keys are ConfigErrors)."""
    return config.from_dict(GateConfig, data)


@dataclass(frozen=True)
class VersionFacts:
    """What the gate needs to know of one registered version."""

    name: str
    version: str
    kind: str
    stage: str = "None"
    metrics: Mapping[str, float] = field(default_factory=dict)
    contract_json: str | None = None
    contract_digest: str | None = None
    panel_digest: str | None = None
    eval_digest: str | None = None

    @property
    def label(self) -> str:
        return f"{self.name} v{self.version}"


@dataclass(frozen=True)
class CompatCheck:
    """Candidate vs one other model's Production version, on one contract."""

    what: Literal["kind", "feature contract", "gene panel", "evaluation"]
    other: str  # label of the other version
    passed: bool
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return {"check": self.what, "against": self.other, "passed": self.passed}


@dataclass(frozen=True)
class GateReport:
    candidate: VersionFacts
    production: VersionFacts | None
    metrics: tuple[MetricCheck, ...]
    compat: tuple[CompatCheck, ...]

    @property
    def passed(self) -> bool:
        return all(m.passed for m in self.metrics) and all(c.passed for c in self.compat)

    @property
    def failures(self) -> list[str]:
        return [c.reason for c in self.compat if not c.passed] + [
            m.reason for m in self.metrics if not m.passed
        ]

    def summary(self) -> str:
        """One line: passed, or every failure."""
        against = self.production.label if self.production else "no Production version"
        if self.passed:
            return f"gate passed for {self.candidate.label} (against {against})"
        return f"gate refused {self.candidate.label}: " + "; ".join(self.failures)

    def to_dict(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "production": self.production.version if self.production else None,
            "metrics": [m.to_dict() for m in self.metrics],
            "compat": [c.to_dict() for c in self.compat],
            "failures": self.failures,
        }


def check_metric(
    rule: MetricRule, candidate: Mapping[str, float], production: VersionFacts | None
) -> MetricCheck:
    """Compare one metric of the candidate with the Production version's (see module doc)."""
    c = candidate.get(rule.name)
    c = float(c) if c is not None and math.isfinite(float(c)) else None
    args = (rule.name, rule.direction, rule.tolerance)
    if c is None:
        return MetricCheck(
            *args, None, None, False, f"candidate has no cross-validated metric {rule.name!r}"
        )
    if production is None:
        return MetricCheck(
            *args, c, None, True, f"{rule.name} {fmt(c)}: no Production version to compare with"
        )
    p = production.metrics.get(rule.name)
    p = float(p) if p is not None and math.isfinite(float(p)) else None
    if p is None:
        return MetricCheck(
            *args,
            c,
            None,
            False,
            f"{production.label} (Production) has no metric {rule.name!r} to compare with",
        )
    worse_by = p - c if rule.direction == "higher" else c - p
    ok = worse_by <= rule.tolerance + EPS
    better = "higher" if rule.direction == "higher" else "lower"
    verdict = (
        f"within tolerance {fmt(rule.tolerance)}"
        if ok
        else f"worse by {fmt(worse_by)}, beyond tolerance {fmt(rule.tolerance)}"
    )
    reason = (
        f"{rule.name} {fmt(c)} vs {fmt(p)} of {production.label} (Production): {verdict} "
        f"({better} is better)"
    )
    return MetricCheck(*args, c, p, ok, reason)


def _contract_diff(a: VersionFacts, b: VersionFacts) -> str:
    if a.contract_json and b.contract_json:
        try:
            FeatureContract.from_json(a.contract_json).check_matches(
                FeatureContract.from_json(b.contract_json), f"{a.label} vs {b.label}"
            )
        except DataError as e:
            return str(e)
    return f"{a.label} vs {b.label}: feature contract {a.contract_digest} vs {b.contract_digest}"


def check_compat(candidate: VersionFacts, other: VersionFacts) -> list[CompatCheck]:
    """Contract checks between the candidate and another model's Production version."""
    out = []
    label = f"{other.label} (Production)"
    if candidate.contract_digest is None or other.contract_digest is None:
        who = candidate.label if candidate.contract_digest is None else label
        out.append(
            CompatCheck("feature contract", other.label, False, f"{who} has no feature contract")
        )
    elif candidate.contract_digest != other.contract_digest:
        out.append(
            CompatCheck(
                "feature contract",
                other.label,
                False,
                "feature contract mismatch with " + label + ": " + _contract_diff(candidate, other),
            )
        )
    else:
        out.append(CompatCheck("feature contract", other.label, True, "same feature contract"))
    if "encoder" in (candidate.kind, other.kind):
        return out
    if candidate.panel_digest is None or other.panel_digest is None:
        who = candidate.label if candidate.panel_digest is None else label
        out.append(CompatCheck("gene panel", other.label, False, f"{who} has no gene panel digest"))
    elif candidate.panel_digest != other.panel_digest:
        out.append(
            CompatCheck(
                "gene panel",
                other.label,
                False,
                f"gene panel mismatch with {label}: {candidate.panel_digest[:19]}... vs "
                f"{other.panel_digest[:19]}...",
            )
        )
    else:
        out.append(CompatCheck("gene panel", other.label, True, "same gene panel"))
    return out


def check_evaluation(candidate: VersionFacts, production: VersionFacts) -> CompatCheck:
    """Candidate and Production must have been evaluated on the same cohort and folds."""
    label = f"{production.label} (Production)"
    if candidate.eval_digest is None or production.eval_digest is None:
        who = candidate.label if candidate.eval_digest is None else label
        return CompatCheck(
            "evaluation",
            production.label,
            False,
            f"{who} has no evaluation digest; metrics cannot be compared",
        )
    if candidate.eval_digest != production.eval_digest:
        return CompatCheck(
            "evaluation",
            production.label,
            False,
            f"evaluation differs from {label} ({candidate.eval_digest[:19]}... vs "
            f"{production.eval_digest[:19]}...): not the same cohort and folds, metrics are "
            "not comparable",
        )
    return CompatCheck("evaluation", production.label, True, "same evaluation")


def evaluate_gate(
    candidate: VersionFacts,
    production: VersionFacts | None,
    partners: Sequence[VersionFacts],
    rules: Sequence[MetricRule],
    same_evaluation: bool = True,
    baselines: Sequence[BaselineRule] = (),
) -> GateReport:
    """Run every check; ``partners`` are the other models' Production versions;
    ``baselines`` compare the candidate with baselines of its own evaluation."""
    compat: list[CompatCheck] = []
    if candidate.kind not in ("generator", "fusion", "encoder"):
        compat.append(
            CompatCheck(
                "kind",
                candidate.label,
                False,
                f"{candidate.label} has no pathgen.kind tag (generator, fusion or encoder): "
                "register bundles with `pathgen-batch models register`",
            )
        )
    if production is not None and same_evaluation and rules:
        compat.append(check_evaluation(candidate, production))
    for other in partners:
        compat.extend(check_compat(candidate, other))
    metrics = tuple(check_metric(r, candidate.metrics, production) for r in rules) + tuple(
        check_baseline(b, candidate.metrics) for b in baselines
    )
    return GateReport(candidate, production, metrics, tuple(compat))


def evaluation_digest(data_digest: str, folds: Mapping[int, Sequence[str]]) -> str:
    """``sha256:`` over the training data digest and every outer fold's held-out patients.

    Two cross-validations with equal digests scored the same patients in the same folds of
    the same data, so their metrics can be compared. Order of folds and patients is irrelevant.
    """
    if not isinstance(data_digest, str) or not data_digest:
        raise DataError(f"evaluation digest: expected a data digest, got {data_digest!r}")
    if not folds:
        raise DataError("evaluation digest: expected at least one fold, got none")
    canon = {
        "data": data_digest,
        "folds": {str(int(k)): sorted(str(p) for p in v) for k, v in sorted(folds.items())},
    }
    text = json.dumps(canon, sort_keys=True, separators=(",", ":"))
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


__all__ = [
    "FUSION_BASELINES",
    "FUSION_RULES",
    "GENERATOR_BASELINES",
    "GENERATOR_RULES",
    "BaselineRule",
    "CompatCheck",
    "Direction",
    "GateConfig",
    "GateReport",
    "MetricCheck",
    "MetricRule",
    "VersionFacts",
    "check_baseline",
    "check_compat",
    "check_evaluation",
    "check_metric",
    "evaluate_gate",
    "evaluation_digest",
    "from_dict",
]
