"""The MLflow project: entry points match their scripts, and `mlflow run` logs what it should."""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

ROOT = Path(__file__).resolve().parents[1]
ENTRIES = ("cohort", "features", "evaluate", "train_generator", "train_fusion", "register")


def _project() -> dict:
    return yaml.safe_load((ROOT / "MLproject").read_text())


def _script(entry: str):
    sys.path.insert(0, str(ROOT / "mlprojects"))
    try:
        return importlib.import_module(entry).main
    finally:
        sys.path.remove(str(ROOT / "mlprojects"))


def test_mlproject_declares_every_entry_point_and_both_environments():
    project = _project()
    assert sorted(project["entry_points"]) == sorted(ENTRIES)
    env = yaml.safe_load((ROOT / project["python_env"]).read_text())
    conda = yaml.safe_load((ROOT / "conda.yaml").read_text())
    pip = next(d["pip"] for d in conda["dependencies"] if isinstance(d, dict))
    assert env["dependencies"] == pip  # the same environment for virtualenv and conda
    pins = [d for d in conda["dependencies"] if isinstance(d, str) and d.startswith("python=")]
    assert pins == [f"python={env['python']}"]


@pytest.mark.parametrize("entry", ENTRIES)
def test_entry_point_command_matches_its_script(entry: str):
    spec = _project()["entry_points"][entry]
    command = " ".join(spec["command"].split())
    assert command.startswith(f"python mlprojects/{entry}.py ")
    declared = set(spec["parameters"])
    pairs = re.findall(r"(--[a-z-]+) \{(\w+)\}", command)
    assert {p for _, p in pairs} == declared, "every parameter is passed, and only those"
    main = _script(entry)
    options = {o for p in main.params for o in p.opts}
    assert {o for o, _ in pairs} <= options
    for p in main.params:
        if p.required:
            assert any(o in p.opts for o, _ in pairs), f"{p.name} is required but not passed"
    numeric = {name for name, v in spec["parameters"].items() if v.get("type") == "float"}
    for opt, name in pairs:
        param = next(p for p in main.params if opt in p.opts)
        if name in numeric:
            assert param.type.name in ("integer", "float"), f"{name}: typed number"
    result = CliRunner().invoke(main, ["--help"])
    assert result.exit_code == 0 and "Usage:" in result.output


def _run(args: list[str], env: dict[str, str], timeout: int = 240) -> str:
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "mlflow",
            "run",
            str(ROOT),
            "--env-manager",
            "local",
            "--experiment-name",
            "pathgen",
            *args,
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        check=False,
    )
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-4000:]
    return out


def _run_id(output: str) -> str:
    ids = re.findall(r"Run \(ID '([0-9a-f]{32})'\) succeeded", output)
    assert len(ids) == 1, output[-2000:]
    return ids[0]


@pytest.mark.servers
def test_mlflow_run_cohort_and_train_generator_log_params_metrics_artifacts_and_model(
    tmp_path: Path,
):
    from pathgen_batch.features import build_encoder, extract_cohort
    from pathgen_batch.registry import (
        RegistryConfig,
        default_tracking_uri,
        lineage,
        open_store,
        resolve_version,
    )

    ws = tmp_path / "ws"
    store = open_store(RegistryConfig(workspace=str(ws), tracking_uri=default_tracking_uri(ws)))
    store.experiment_id()  # experiment with its artifacts in the workspace
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": store.tracking_uri,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "OMP_NUM_THREADS": "1",
    }
    env.pop("MLFLOW_RUN_ID", None)
    cohort = tmp_path / "cohort"
    out = _run(
        [
            "-e",
            "cohort",
            "-P",
            f"out={cohort}",
            "-P",
            "mode=synthetic",
            "-P",
            "n_patients=16",
            "-P",
            "n_genes=12",
            "-P",
            "slide_px=512",
            "-P",
            "folds=2",
            "-P",
            "workers=1",
            "-P",
            f"workspace={ws}",
        ],
        env,
    )
    cohort_run = store.client.get_run(_run_id(out))
    assert cohort_run.info.status == "FINISHED"
    assert cohort_run.data.params["cohort.mode"] == "synthetic"
    assert cohort_run.data.params["cohort.n_patients"] == "16"
    assert cohort_run.data.metrics["patients"] == 16
    meta = hashlib.sha256((cohort / "cohort.json").read_bytes()).hexdigest()
    assert cohort_run.data.tags["pathgen.data_digest"] == f"sha256:{meta}"
    art = Path(cohort_run.info.artifact_uri.removeprefix("file://"))
    assert art.is_relative_to(ws / "mlflow" / "artifacts")
    assert (art / "gene_panel" / "gene_panel.csv").read_text() == (
        cohort / "gene_panel.csv"
    ).read_text()

    encoder = build_encoder("stain-texture", device="cpu")
    extract_cohort(cohort, tmp_path / "features", encoder)
    bundle = tmp_path / "generator"
    out = _run(
        [
            "-e",
            "train_generator",
            "-P",
            f"cohort={cohort}",
            "-P",
            f"features={tmp_path / 'features'}",
            "-P",
            "epochs=2",
            "-P",
            f"out={bundle}",
            "-P",
            f"workspace={ws}",
        ],
        env,
    )
    rid = _run_id(out)
    run = store.client.get_run(rid)
    assert run.info.status == "FINISHED"
    assert run.data.params["generator.epochs"] == "2"
    history = store.client.get_metric_history(rid, "generator/train_loss")
    assert sorted(m.step for m in history) == [1, 2]
    art = Path(run.info.artifact_uri.removeprefix("file://"))
    assert json.loads((art / "configs" / "generator.json").read_text())["epochs"] == 2
    assert (art / "plots" / "generator_loss.png").stat().st_size > 1000
    assert (art / "gene_panel" / "gene_panel.csv").read_text() == (
        cohort / "gene_panel.csv"
    ).read_text()
    mv = resolve_version(store, "pathgen-generator", "1")
    assert mv.run_id == rid
    assert mv.tags["pathgen.feature_contract_digest"] == encoder.contract.digest
    lin = lineage(store, "pathgen-generator", "1")
    assert lin.params["generator.epochs"] == "2" and lin.data_digest is not None
    assert not (ROOT / "mlruns").exists() and not (ROOT / "mlflow.db").exists()
