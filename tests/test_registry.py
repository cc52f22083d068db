"""The model registry on an embedded SQLite store: gate, stages and aliases, audit, rollback.

Bundles are saved through the bundle API with untrained weights: registry logic does not need
good weights. Each test gets a fresh store (a copy of a once-initialised empty database).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import shutil
import socket
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
from click.testing import CliRunner

from pathgen_batch.cli import main
from pathgen_batch.config import to_dict
from pathgen_batch.errors import ConfigError
from pathgen_batch.features.contract import FeatureContract
from pathgen_batch.inference import TrainedFusion, TrainedGenerator, ZScoreScaler
from pathgen_batch.inference.bundle import save_fusion, save_generator
from pathgen_batch.inference.fusion import RiskCuts
from pathgen_batch.models import FusionConfig, GeneratorConfig, build_model
from pathgen_batch.models.diffusion import DiffusionConfig, SamplerConfig
from pathgen_batch.omics.panel import GenePanel
from pathgen_batch.registry import (
    GateConfig,
    GateRefusedError,
    MetricRule,
    MissingArtifactsError,
    RegistryConfig,
    RegistryConflictError,
    RegistryError,
    RegistryUnavailableError,
    UnknownModelError,
    VersionFacts,
    audit_trail,
    evaluate_gate,
    fetch_bundle,
    lineage,
    list_versions,
    open_store,
    promote,
    register_bundle,
    register_encoder,
    resolve_version,
    rollback,
)
from pathgen_batch.registry.gate import check_metric, evaluation_digest, from_dict
from pathgen_batch.registry.promote import _settle, _transition
from pathgen_batch.registry.store import default_tracking_uri, resolve_tracking_uri
from pathgen_batch.registry.tracking import cv_metrics, flatten
from pathgen_batch.training.config import FusionTrainConfig, GeneratorTrainConfig

cli = main

# cross-validated metrics, with the baselines of the same evaluation the gate compares with
GEN_CV = {"fidelity/mean_pearson": 0.50, "fidelity/mae": 0.30, "fidelity/ridge/mean_pearson": 0.3}
FUS_CV = {
    "synthetic/harrell_c": 0.70,
    "synthetic/macro_auc": 0.72,
    "synthetic/ibs": 0.20,
    "wsi_trained/harrell_c": 0.65,
}
EVAL = "sha256:" + "e" * 64
CLASSES = ("well", "moderate", "poor")


# ---------------------------------------------------------------- bundles (untrained weights)


def make_panel(n_genes: int = 6) -> GenePanel:
    return GenePanel.from_pairs([(f"G{i}", f"F{i % 2}") for i in range(n_genes)])


@dataclass(frozen=True)
class BundleSpec:
    """What an untrained test bundle is made of: D = dim (``contract.dim`` when given), the
    gene panel (:func:`make_panel` by default) and the seed of its weights."""

    dim: int = 8
    panel: GenePanel | None = None
    seed: int = 0
    contract: FeatureContract | None = None

    def prepare(self) -> tuple[GenePanel, int, FeatureContract, tuple[int, ...], tuple[int, int]]:
        """Seed torch; (panel, D, contract, gene -> family, family sizes)."""
        panel = self.panel or make_panel()
        dim = self.contract.dim if self.contract is not None else self.dim
        torch.manual_seed(self.seed)
        fam = tuple(0 if f == "F0" else 1 for f in panel.families)
        contract = self.contract or FeatureContract("stain-texture", "v1", dim, 256, 0.5)
        return panel, dim, contract, fam, (fam.count(0), fam.count(1))


def make_generator(out: Path, **spec: Any) -> Path:
    """An untrained generator bundle (``spec``: :class:`BundleSpec`), 2 families, DDIM 4 steps,
    2 samples."""
    panel, dim, contract, fam, sizes = BundleSpec(**spec).prepare()
    cfg = GeneratorConfig(dim, sizes, fam, width=16, depth=1, heads=2, mlp_ratio=2, time_dim=16)
    diffusion = DiffusionConfig(num_timesteps=40)
    sampler = SamplerConfig(name="ddim", steps=4, eta=0.0, n_samples=2)
    gen = TrainedGenerator(
        model=build_model("generator", cfg),
        diffusion=diffusion,
        sampler=sampler,
        expression_scaler=ZScoreScaler((5.0,) * panel.n_genes, (2.0,) * panel.n_genes),
        feature_scaler=ZScoreScaler((0.0,) * dim, (1.0,) * dim),
        panel=panel,
        contract=contract,
        grade_classes=CLASSES,
        train_config=to_dict(GeneratorTrainConfig(diffusion=diffusion, sampler=sampler)),
        provenance={"cohort_digest": "sha256:" + "d" * 64},
    )
    return save_generator(gen, out)


def make_fusion(out: Path, **spec: Any) -> Path:
    """An untrained fusion bundle (``spec``: :class:`BundleSpec`) with 2 time bins and no
    conformal states."""
    panel, dim, contract, fam, sizes = BundleSpec(**spec).prepare()
    cfg = FusionConfig(dim, sizes, 3, fam, n_bins=2, width=16, heads=2)
    fus = TrainedFusion(
        model=build_model("fusion", cfg),
        model_name="fusion",
        expression_scaler=ZScoreScaler((0.0,) * panel.n_genes, (1.0,) * panel.n_genes),
        feature_scaler=ZScoreScaler((0.0,) * dim, (1.0,) * dim),
        panel=panel,
        contract=contract,
        grade_classes=CLASSES,
        bin_edges=np.array([0.0, 5.0, np.inf]),
        train_config=to_dict(FusionTrainConfig()),
        risk_cuts=RiskCuts((1 / 3, 2 / 3), (-1.6, -1.2), 40),
        provenance={"cohort_digest": "sha256:" + "d" * 64},
    )
    return save_fusion(fus, out)


@pytest.fixture(scope="session")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("bundles")
    other = GenePanel.from_pairs([(f"H{i}", f"F{i % 2}") for i in range(6)])
    return {
        "gen": make_generator(root / "gen"),
        "gen_b": make_generator(root / "gen_b", seed=1),
        "fus": make_fusion(root / "fus"),
        "fus_dim16": make_fusion(root / "fus16", dim=16),
        "fus_panel": make_fusion(root / "fus_panel", panel=other),
    }


@pytest.fixture(scope="session")
def empty_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An initialised tracking database with no experiment of ours (copied per test)."""
    root = tmp_path_factory.mktemp("template")
    uri = default_tracking_uri(root)
    store = open_store(RegistryConfig(workspace=str(root), tracking_uri=uri))
    store.client.search_registered_models()
    store.client.search_experiments()
    return root / "mlflow" / "mlflow.db"


@pytest.fixture
def store(tmp_path: Path, empty_db: Path, monkeypatch: pytest.MonkeyPatch, no_mlflow_env: None):
    monkeypatch.setenv("PATHGEN_USER", "alice")
    (tmp_path / "mlflow").mkdir()
    shutil.copy(empty_db, tmp_path / "mlflow" / "mlflow.db")
    return open_store(RegistryConfig(workspace=str(tmp_path)))


def register(store, bundle: Path, cv: dict[str, float], eval_digest: str = EVAL):
    return register_bundle(store, bundle, cv=cv, eval_digest=eval_digest)


def stages(store, name: str) -> dict[str, str]:
    return {str(v.version): v.current_stage for v in list_versions(store, name)}


def aliases(store, name: str) -> dict[str, str]:
    return {a: str(v) for a, v in store.client.get_registered_model(name).aliases.items()}


# ----------------------------------------------------------------------- gate (pure logic)


def facts(version: str, metrics: dict[str, float], **kw) -> VersionFacts:
    base = {
        "name": "pathgen-fusion",
        "version": version,
        "kind": "fusion",
        "metrics": metrics,
        "contract_digest": "sha256:c1",
        "panel_digest": "sha256:p1",
        "eval_digest": EVAL,
    }
    return VersionFacts(**(base | kw))


@pytest.mark.parametrize(
    ("candidate", "passed"),
    [(0.70, False), (0.7095, False), (0.71, True), (0.7105, True), (0.75, True)],
    ids=["worse-by-0.02", "worse-by-0.0105", "worse-by-exactly-tol", "worse-by-0.0095", "better"],
)
def test_higher_is_better_metric_fails_only_beyond_tolerance(candidate, passed):
    # Production 0.72, tolerance 0.01: refused iff candidate < 0.72 - 0.01 = 0.71
    rule = MetricRule("synthetic/harrell_c", "higher", 0.01)
    prod = facts("1", {"synthetic/harrell_c": 0.72})
    check = check_metric(rule, {"synthetic/harrell_c": candidate}, prod)
    assert check.passed is passed
    assert "synthetic/harrell_c" in check.reason


@pytest.mark.parametrize(("candidate", "passed"), [(0.20, False), (0.19, True), (0.15, True)])
def test_lower_is_better_metric_fails_only_beyond_tolerance(candidate, passed):
    # Production IBS 0.18, tolerance 0.01: refused iff candidate > 0.19
    rule = MetricRule("synthetic/ibs", "lower", 0.01)
    check = check_metric(rule, {"synthetic/ibs": candidate}, facts("1", {"synthetic/ibs": 0.18}))
    assert check.passed is passed
    assert (check.candidate, check.production) == (candidate, 0.18)


def test_gate_refusal_names_every_failed_metric_and_contract():
    rules = GateConfig().fusion
    prod = facts(
        "1", {"synthetic/harrell_c": 0.70, "synthetic/macro_auc": 0.70, "synthetic/ibs": 0.2}
    )
    cand = facts("2", {"synthetic/harrell_c": 0.60, "synthetic/macro_auc": 0.70})  # no ibs
    gen = facts("4", {}, name="pathgen-generator", kind="generator", panel_digest="sha256:p2")
    report = evaluate_gate(cand, prod, [gen], rules)
    assert not report.passed
    text = report.summary()
    assert (
        "synthetic/harrell_c 0.6 vs 0.7" in text and "worse by 0.1, beyond tolerance 0.01" in text
    )
    assert "no cross-validated metric 'synthetic/ibs'" in text
    assert "gene panel mismatch with pathgen-generator v4" in text
    assert "synthetic/macro_auc" not in " ".join(report.failures)  # equal: within tolerance


def test_gate_refuses_comparison_across_different_evaluations():
    prod = facts("1", GEN_CV | FUS_CV)
    cand = facts("2", GEN_CV | FUS_CV, eval_digest="sha256:other")
    report = evaluate_gate(cand, prod, [], GateConfig().fusion)
    assert not report.passed
    assert "evaluation differs" in report.summary()
    same = evaluate_gate(facts("2", GEN_CV | FUS_CV), prod, [], GateConfig().fusion)
    assert same.passed


def test_first_production_needs_metrics_but_no_baseline():
    assert evaluate_gate(facts("1", FUS_CV), None, [], GateConfig().fusion).passed
    report = evaluate_gate(facts("1", {}), None, [], GateConfig().fusion)
    assert not report.passed and len(report.failures) == 3


def test_version_without_kind_tag_is_refused():
    report = evaluate_gate(facts("1", FUS_CV, kind="unknown"), None, [], ())
    assert not report.passed and "no pathgen.kind tag" in report.summary()


def test_contract_mismatch_names_the_differing_field():
    a = FeatureContract("stain-texture", "v1", 8, 256, 0.5)
    b = FeatureContract("stain-texture", "v1", 16, 256, 0.5)
    cand = facts("1", FUS_CV, contract_json=a.to_json(), contract_digest=a.digest)
    gen = facts(
        "3",
        {},
        name="pathgen-generator",
        kind="generator",
        contract_json=b.to_json(),
        contract_digest=b.digest,
    )
    report = evaluate_gate(cand, None, [gen], GateConfig().fusion)
    assert not report.passed
    assert "feature contract mismatch" in report.summary() and "dim 8 vs 16" in report.summary()


def test_gate_refuses_a_candidate_below_the_baselines_of_its_own_evaluation():
    from pathgen_batch.registry.gate import BaselineRule, check_baseline

    gate = GateConfig()
    gen = gate.baselines_for("generator")
    assert [(b.name, b.baseline) for b in gen] == [
        ("fidelity/mean_pearson", "fidelity/ridge/mean_pearson")
    ]
    assert evaluate_gate(facts("1", GEN_CV, kind="generator"), None, [], (), True, gen).passed
    below = GEN_CV | {"fidelity/mean_pearson": 0.25}  # ridge 0.30: no Production needed
    report = evaluate_gate(facts("1", below, kind="generator"), None, [], (), True, gen)
    assert not report.passed
    assert "fidelity/mean_pearson 0.25 vs fidelity/ridge/mean_pearson 0.3: below its " in (
        report.summary()
    )
    old = {k: v for k, v in GEN_CV.items() if "ridge" not in k}  # evaluated before ridge
    report = evaluate_gate(facts("1", old, kind="generator"), None, [], (), True, gen)
    assert not report.passed and "has no 'fidelity/ridge/mean_pearson'" in report.summary()
    fus = gate.baselines_for("fusion")  # synthetic C within 0.02 of the trained WSI-only C
    tied = FUS_CV | {"synthetic/harrell_c": 0.64}
    assert evaluate_gate(facts("1", tied), None, [], (), True, fus).passed
    worse = FUS_CV | {"synthetic/harrell_c": 0.62}
    assert not evaluate_gate(facts("1", worse), None, [], (), True, fus).passed
    lower = BaselineRule("fidelity/mae", "fidelity/mean_expression/mae", "lower")
    ok = check_baseline(lower, {"fidelity/mae": 0.6, "fidelity/mean_expression/mae": 0.7})
    assert ok.passed
    assert not check_baseline(
        lower, {"fidelity/mae": 0.8, "fidelity/mean_expression/mae": 0.7}
    ).passed
    assert gate.baselines_for("encoder") == ()
    with pytest.raises(ConfigError, match=r"BaselineRule\.baseline"):
        BaselineRule("fidelity/mae", " ", "lower")
    back = from_dict(gate.to_dict())
    assert back.generator_baselines == gen and back.fusion_baselines == fus


def test_gate_config_is_strict():
    with pytest.raises(ConfigError, match="unknown key"):
        from_dict({"fusion": [], "tolerence": 1})
    with pytest.raises(ConfigError, match="tolerance"):
        MetricRule("x", "higher", -0.1)
    with pytest.raises(ConfigError, match="direction"):
        from_dict({"fusion": [{"name": "x", "direction": "up"}]})
    with pytest.raises(ConfigError, match="unknown metric"):
        GateConfig().with_tolerances({"c_index": 0.1})
    g = GateConfig().with_tolerances({"synthetic/ibs": 0.05})
    assert {r.name: r.tolerance for r in g.fusion}["synthetic/ibs"] == 0.05
    assert from_dict(g.to_dict()) == g


def test_evaluation_digest_depends_on_folds_not_on_order():
    a = evaluation_digest("sha256:d", {0: ["p1", "p2"], 1: ["p3", "p4"]})
    b = evaluation_digest("sha256:d", {1: ["p4", "p3"], 0: ["p2", "p1"]})
    moved = evaluation_digest("sha256:d", {0: ["p1", "p3"], 1: ["p2", "p4"]})
    other_data = evaluation_digest("sha256:x", {0: ["p1", "p2"], 1: ["p3", "p4"]})
    assert a == b
    assert len({a, moved, other_data}) == 3


def test_cv_summary_flattens_to_condition_metric_means():
    summary = {
        "metrics": {
            "synthetic": {"harrell_c": {"mean": 0.61, "sd": 0.1}, "ibs": {"mean": float("nan")}}
        },
        "fidelity": {"mae": {"mean": 0.4, "sd": 0.0}},
        "pooled_fidelity": {"mean_pearson": 0.3},
    }
    assert cv_metrics(summary) == {
        "synthetic/harrell_c": 0.61,
        "fidelity/mae": 0.4,
        "pooled_fidelity/mean_pearson": 0.3,
    }
    nested = {  # a repeated CV's summary: one fidelity section per model
        "fidelity": {
            "generator": {"mean_pearson": {"mean": 0.2}},
            "ridge": {"mean_pearson": {"mean": 0.25}},
        }
    }
    assert cv_metrics(nested) == {
        "fidelity/generator/mean_pearson": 0.2,
        "fidelity/mean_pearson": 0.2,
        "fidelity/ridge/mean_pearson": 0.25,
    }
    assert flatten({"a": {"b": 1, "c": [1, 2]}, "d": None}) == {
        "a.b": 1,
        "a.c": "[1, 2]",
        "d": None,
    }


# ------------------------------------------------------------------------------ store


def test_store_resolution_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    ws = RegistryConfig(workspace=str(tmp_path / "ws"))
    assert resolve_tracking_uri(ws) == f"sqlite:///{tmp_path.resolve()}/ws/mlflow/mlflow.db"
    assert default_tracking_uri(tmp_path / "ws") == resolve_tracking_uri(ws)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:////elsewhere/db")
    assert resolve_tracking_uri(ws) == "sqlite:////elsewhere/db"
    explicit = RegistryConfig(workspace=str(tmp_path), tracking_uri="http://127.0.0.1:1")
    assert resolve_tracking_uri(explicit) == "http://127.0.0.1:1"


def test_server_down_is_one_clear_error_and_writes_nothing(tmp_path: Path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    cfg = RegistryConfig(workspace=str(tmp_path), tracking_uri=f"http://127.0.0.1:{port}")
    with pytest.raises(RegistryUnavailableError, match="not reachable") as err:
        open_store(cfg)
    assert "\n" not in str(err.value)
    assert list(tmp_path.iterdir()) == []
    result = CliRunner().invoke(
        cli, ["models", "--tracking-uri", f"http://127.0.0.1:{port}", "list"]
    )
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: MLflow server")


def test_experiment_artifacts_live_in_the_workspace(store, tmp_path: Path):
    loc = store.experiment_artifact_location()
    assert loc == (tmp_path / "mlflow" / "artifacts").resolve().as_uri()


# ----------------------------------------------------------- registration and promotion


def test_register_tags_carry_contract_panel_metrics_and_code_version(store, bundles):
    reg = register(store, bundles["gen"], GEN_CV)
    mv = resolve_version(store, reg.name, reg.version)
    tags = mv.tags
    assert (reg.name, reg.version, mv.current_stage) == ("pathgen-generator", "1", "None")
    contract = FeatureContract("stain-texture", "v1", 8, 256, 0.5)
    assert tags["pathgen.kind"] == "generator"
    assert tags["pathgen.feature_contract_digest"] == contract.digest
    assert FeatureContract.from_json(tags["pathgen.feature_contract"]) == contract
    assert tags["pathgen.gene_panel_digest"] == make_panel().digest
    assert tags["pathgen.data_digest"] == "sha256:" + "d" * 64
    assert tags["pathgen.eval_digest"] == EVAL
    assert float(tags["pathgen.cv.fidelity/mean_pearson"]) == 0.5
    assert tags["pathgen.code_version"].startswith("0.")
    run = store.client.get_run(mv.run_id)
    assert run.data.tags["pathgen.registered.pathgen-generator"] == "1"
    assert "pathgen.risk_cuts" not in tags  # a generator has no risk groups


def test_fusion_version_shows_its_risk_cuts(store, bundles):
    reg = register(store, bundles["fus"], FUS_CV)
    tags = resolve_version(store, reg.name, reg.version).tags
    cuts = json.loads(tags["pathgen.risk_cuts"])
    assert cuts == {"cuts": [-1.6, -1.2], "n": 40, "quantiles": [1 / 3, 2 / 3]}


def test_promote_keeps_stages_and_aliases_in_step_and_loads_by_both_uris(store, bundles):
    g = register(store, bundles["gen"], GEN_CV)
    promote(store, g.name, g.version, "staging")
    assert stages(store, g.name) == {"1": "Staging"}
    assert aliases(store, g.name) == {"staging": "1"}
    res = promote(store, g.name, g.version, "Production")
    assert res.gate is not None and res.gate.passed
    assert stages(store, g.name) == {"1": "Production"}
    assert aliases(store, g.name) == {"champion": "1"}
    bag = np.random.default_rng(0).normal(size=(5, 8)).tolist()
    frame = pd.DataFrame({"slide_id": ["s1"], "features": [bag]})
    with store.active():
        by_stage = mlflow.pyfunc.load_model("models:/pathgen-generator/Production")
        by_alias = mlflow.pyfunc.load_model("models:/pathgen-generator@champion")
    assert by_stage.metadata.model_uuid == by_alias.metadata.model_uuid
    out = by_stage.predict(frame, params={"n_samples": 3})
    assert list(out.columns) == ["slide_id", "gene", "family", "mean", "std"]
    assert out["gene"].tolist() == list(make_panel().genes)
    assert np.isfinite(out[["mean", "std"]].to_numpy()).all()
    assert (out["std"] > 0).all()  # 3 samples differ
    local = fetch_bundle(store, g.name, "@champion")  # a local store: the folder in place
    assert local.is_relative_to(store.experiment_artifact_location().removeprefix("file://"))
    assert (local / "bundle.json").read_bytes() == (bundles["gen"] / "bundle.json").read_bytes()


def test_worse_candidate_is_refused_and_nothing_changes(store, bundles):
    g1 = register(store, bundles["gen"], GEN_CV)
    promote(store, g1.name, "1", "Production")
    worse = GEN_CV | {"fidelity/mean_pearson": 0.40}  # 0.10 below, tolerance 0.02
    g2 = register(store, bundles["gen_b"], worse)
    with pytest.raises(GateRefusedError, match=r"fidelity/mean_pearson 0\.4 vs 0\.5") as err:
        promote(store, g2.name, g2.version, "Production")
    assert not err.value.report.passed
    assert stages(store, g1.name) == {"1": "Production", "2": "None"}
    assert aliases(store, g1.name) == {"champion": "1"}
    assert audit_trail(resolve_version(store, g1.name, "2")) == []


def test_force_needs_reason_and_is_recorded(store, bundles):
    register(store, bundles["gen"], GEN_CV)
    promote(store, "pathgen-generator", "1", "Production")
    register(store, bundles["gen_b"], GEN_CV | {"fidelity/mae": 0.9})
    with pytest.raises(ConfigError, match="--reason"):
        promote(store, "pathgen-generator", "2", "Production", force=True)
    res = promote(
        store, "pathgen-generator", "2", "Production", force=True, reason="hotfix for site B"
    )
    assert res.previous_production == "1" and res.archived == ("1",)
    assert stages(store, "pathgen-generator") == {"1": "Archived", "2": "Production"}
    assert aliases(store, "pathgen-generator") == {"champion": "2"}
    v2 = resolve_version(store, "pathgen-generator", "2")
    event = audit_trail(v2)[-1]
    assert event["action"] == "promote" and event["forced"] is True
    assert event["who"] == "alice" and event["why"] == "hotfix for site B"
    assert event["previous_production"] == "1"
    assert any("fidelity/mae" in f for f in event["overridden"])
    compared = {m["metric"]: (m["candidate"], m["production"]) for m in event["gate"]["metrics"]}
    assert compared["fidelity/mae"] == (0.9, 0.3)
    when = dt.datetime.fromisoformat(event["when"])
    assert abs((dt.datetime.now(dt.timezone.utc) - when).total_seconds()) < 600
    assert v2.tags["pathgen.previous_production"] == "1"
    superseded = audit_trail(resolve_version(store, "pathgen-generator", "1"))[-1]
    assert superseded["action"] == "superseded" and superseded["by"] == "2"


def test_rollback_restores_previous_production_and_archives_current(store, bundles):
    register(store, bundles["gen"], GEN_CV)
    register(store, bundles["gen_b"], GEN_CV)
    register(store, bundles["gen"], GEN_CV)
    for v in ("1", "2", "3"):
        promote(store, "pathgen-generator", v, "Production")
    res = rollback(store, "pathgen-generator", reason="regression in v3")
    assert (res.version, res.previous_production) == ("2", "3")
    assert stages(store, "pathgen-generator") == {
        "1": "Archived",
        "2": "Production",
        "3": "Archived",
    }
    assert aliases(store, "pathgen-generator") == {"champion": "2"}
    event = audit_trail(resolve_version(store, "pathgen-generator", "2"))[-1]
    assert event["action"] == "rollback" and event["replaces"] == "3"
    rollback(store, "pathgen-generator")
    assert aliases(store, "pathgen-generator") == {"champion": "1"}
    with pytest.raises(RegistryError, match="nothing to roll back"):
        rollback(store, "pathgen-generator")
    assert aliases(store, "pathgen-generator") == {"champion": "1"}


def test_generator_and_fusion_must_share_contract_and_panel(store, bundles):
    register(store, bundles["gen"], GEN_CV)
    promote(store, "pathgen-generator", "1", "Production")
    register(store, bundles["fus_dim16"], FUS_CV)
    register(store, bundles["fus_panel"], FUS_CV)
    register(store, bundles["fus"], FUS_CV)
    with pytest.raises(GateRefusedError, match=r"feature contract mismatch.*dim 16 vs 8"):
        promote(store, "pathgen-fusion", "1", "Production")
    with pytest.raises(GateRefusedError, match="gene panel mismatch with pathgen-generator v1"):
        promote(store, "pathgen-fusion", "2", "Production")
    assert promote(store, "pathgen-fusion", "3", "Production").gate.passed
    assert stages(store, "pathgen-fusion") == {"1": "None", "2": "None", "3": "Production"}


def test_unknown_names_and_versions_are_clear_errors(store, bundles):
    register(store, bundles["gen"], GEN_CV)
    with pytest.raises(
        UnknownModelError, match=r"no registered model 'pathgen-gen'.*pathgen-generator"
    ):
        promote(store, "pathgen-gen", "1", "Production")
    with pytest.raises(UnknownModelError, match=r"no version 7 \(versions: 1\)"):
        promote(store, "pathgen-generator", "7", "Production")
    with pytest.raises(UnknownModelError, match="no version in stage Production"):
        lineage(store, "pathgen-generator", "Production")
    with pytest.raises(ConfigError, match="model name"):
        promote(store, "bad name'", "1")


def test_version_with_missing_artifacts_is_not_promoted(store, bundles):
    g = register(store, bundles["gen"], GEN_CV)
    uri = store.client.get_model_version_download_uri(g.name, g.version)
    weights = Path(uri.removeprefix("file://")) / "artifacts" / "bundle" / "weights.pt"
    assert weights.is_file()
    weights.unlink()
    with pytest.raises(MissingArtifactsError, match=r"artifacts/bundle/weights\.pt"):
        promote(store, g.name, g.version, "Production", force=True, reason="try anyway")
    assert stages(store, g.name) == {"1": "None"}
    assert aliases(store, g.name) == {}


def test_concurrent_promotions_leave_exactly_one_production(store, bundles):
    for b in ("gen", "gen_b", "gen"):
        register(store, bundles[b], GEN_CV)
    promote(store, "pathgen-generator", "1", "Production")
    barrier = threading.Barrier(2)
    errors: list[BaseException] = []

    def go(version: str) -> None:
        barrier.wait()
        try:
            promote(store, "pathgen-generator", version, "Production")
        except BaseException as e:  # collected and asserted below
            errors.append(e)

    threads = [threading.Thread(target=go, args=(v,)) for v in ("2", "3")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    st = stages(store, "pathgen-generator")
    prod = [v for v, s in st.items() if s == "Production"]
    assert len(prod) == 1 and prod[0] in ("2", "3")
    assert sorted(v for v, s in st.items() if s == "Archived") == sorted(
        {"1", "2", "3"} - set(prod)
    )
    assert aliases(store, "pathgen-generator") == {"champion": prod[0]}
    winner = resolve_version(store, "pathgen-generator", prod[0])
    loser = "3" if prod[0] == "2" else "2"
    assert winner.tags["pathgen.previous_production"] == loser  # promoted second, over the first


def test_split_production_state_is_repaired_by_the_check_after_writing(store, bundles):
    for b in ("gen", "gen_b"):
        register(store, bundles[b], GEN_CV)
    v1 = resolve_version(store, "pathgen-generator", "1")
    v2 = resolve_version(store, "pathgen-generator", "2")
    _transition(store, v1, "Production", archive_existing=False)
    _transition(store, v2, "Production", archive_existing=False)  # a writer that raced
    store.client.set_registered_model_alias("pathgen-generator", "champion", "1")
    with pytest.raises(RegistryConflictError, match="v2 holds Production"):
        _settle(store, "pathgen-generator", "Production", "1")
    assert stages(store, "pathgen-generator") == {"1": "Archived", "2": "Production"}
    assert aliases(store, "pathgen-generator") == {"champion": "2"}


# ----------------------------------------------------------------------------- run logging


def test_tracked_run_logs_params_epochs_and_ends_finished_or_failed(store):
    from pathgen_batch.registry import tracked_run
    from pathgen_batch.training.config import CVConfig
    from pathgen_batch.training.loops import EpochLog

    with tracked_run(store, "train") as run:
        run.log_config("cv", CVConfig())
        progress = run.progress("fold0/")
        for epoch, (tl, vl) in enumerate([(1.0, 0.9), (0.5, 0.6)], start=1):
            progress(EpochLog("generator", epoch, 2, tl, vl, epoch, 0.1, 0.1 * epoch, "pearson"))
        run.log_cv({"metrics": {"synthetic": {"harrell_c": {"mean": 0.66, "sd": 0.1}}}})
    done = store.client.get_run(run.run_id)
    assert done.info.status == "FINISHED"
    assert done.data.params["cv.generator.epochs"] == str(CVConfig().generator.epochs)
    assert done.data.metrics["cv/synthetic/harrell_c"] == 0.66
    hist = store.client.get_metric_history(run.run_id, "fold0/generator/val_loss")
    assert [(m.step, m.value) for m in sorted(hist, key=lambda m: m.step)] == [(1, 0.9), (2, 0.6)]
    score = store.client.get_metric_history(run.run_id, "fold0/generator/val_pearson")
    assert sorted((m.step, round(m.value, 6)) for m in score) == [(1, 0.1), (2, 0.2)]
    with pytest.raises(ZeroDivisionError), tracked_run(store, "broken") as broken:
        _ = 1 / 0
    assert store.client.get_run(broken.run_id).info.status == "FAILED"


# ------------------------------------------------------------------------------- encoder


class _ChannelMean(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(2, 3))  # (B, 3, H, W) -> (B, 3)


def test_encoder_weights_register_load_and_fix_the_contract_of_other_models(
    store, bundles, tmp_path
):
    weights = tmp_path / "channel_mean.pt"
    torch.jit.script(_ChannelMean()).save(str(weights))
    reg = register_encoder(
        store, weights, encoder="torchscript", options={"dim": 3, "tile_px": 8, "mpp": 0.5}
    )
    contract = FeatureContract.from_json(reg.tags["pathgen.feature_contract"])
    digest = "sha256:" + hashlib.sha256(weights.read_bytes()).hexdigest()
    assert (contract.encoder, contract.version, contract.dim, contract.tile_px) == (
        "torchscript",
        digest,
        3,
        8,
    )
    assert promote(store, reg.name, reg.version, "Production").gate.passed  # no gated metrics
    tiles = np.zeros((2, 8, 8, 3), dtype=np.uint8)
    tiles[0] = (255, 0, 128)
    with store.active():
        model = mlflow.pyfunc.load_model("models:/pathgen-encoder@champion")
    out = model.predict(tiles)
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])  # ImageNet
    expected = (np.array([[255, 0, 128], [0, 0, 0]]) / 255.0 - mean) / std  # (2, 3)
    assert out.shape == (2, 3) and out.dtype == np.float32
    np.testing.assert_allclose(out, expected, atol=1e-5)
    register(store, bundles["gen"], GEN_CV)  # stain-texture features, dim 8
    with pytest.raises(GateRefusedError, match="feature contract mismatch with pathgen-encoder v1"):
        promote(store, "pathgen-generator", "1", "Production")
    with pytest.raises(ConfigError, match="no weights file"):
        register_encoder(store, weights, encoder="stain-texture")


# --------------------------------------------------------------------------- lineage, CLI


def test_lineage_and_cli_show_training_run_params_digest_and_uri(store, bundles, tmp_path):
    run = store.client.create_run(store.experiment_id(), run_name="train")
    store.client.log_param(run.info.run_id, "generator.epochs", "3")
    store.client.log_metric(run.info.run_id, "generator/val_loss", 0.25, step=3)
    g = register_bundle(store, bundles["gen"], run_id=run.info.run_id, cv=GEN_CV, eval_digest=EVAL)
    assert g.run_id == run.info.run_id
    lin = lineage(store, g.name, g.version)
    assert lin.run_id == run.info.run_id and lin.params["generator.epochs"] == "3"
    assert lin.metrics["generator/val_loss"] == 0.25
    assert lin.data_digest == "sha256:" + "d" * 64
    assert lin.artifact_uri.startswith((tmp_path / "mlflow" / "artifacts").resolve().as_uri())
    args = ["models", "--workspace", str(tmp_path)]
    shown = CliRunner().invoke(cli, [*args, "show", g.name, "1"])
    assert shown.exit_code == 0, shown.output
    for needle in (run.info.run_id, "param generator.epochs = 3", lin.artifact_uri, "sha256:ddd"):
        assert needle in shown.output
    as_json = json.loads(CliRunner().invoke(cli, [*args, "show", g.name, "1", "--json"]).output)
    assert as_json["run"]["id"] == run.info.run_id


def test_cli_promote_list_and_refusal(store, bundles, tmp_path):
    register(store, bundles["gen"], GEN_CV)
    register(store, bundles["gen_b"], GEN_CV | {"fidelity/mean_pearson": 0.35})
    args = ["models", "--workspace", str(tmp_path)]
    ok = CliRunner().invoke(cli, [*args, "promote", "pathgen-generator", "1"])
    assert ok.exit_code == 0, ok.output
    assert "None -> Production" in ok.output
    refused = CliRunner().invoke(cli, [*args, "promote", "pathgen-generator", "2"])
    assert refused.exit_code == 2
    lines = refused.output.strip().splitlines()
    assert len(lines) == 1 and "gate refused pathgen-generator v2" in lines[0]
    assert "fidelity/mean_pearson" in lines[0]
    loose = CliRunner().invoke(
        cli,
        [*args, "promote", "pathgen-generator", "2", "--tolerance", "fidelity/mean_pearson=0.5"],
    )
    assert loose.exit_code == 0, loose.output
    listed = CliRunner().invoke(cli, [*args, "list"])
    assert listed.exit_code == 0
    rows = [ln.split() for ln in listed.output.splitlines() if ln.startswith("pathgen-generator")]
    assert [r[:3] for r in rows] == [
        ["pathgen-generator", "1", "Archived"],
        ["pathgen-generator", "2", "Production"],
    ]
    assert "@champion" in rows[1]
    back = CliRunner().invoke(cli, [*args, "rollback", "pathgen-generator", "--reason", "r"])
    assert back.exit_code == 0, back.output
    assert "v1 restored to Production; v2 archived" in back.output
