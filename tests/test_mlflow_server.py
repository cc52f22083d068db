"""A real `mlflow server` on loopback: register, promote and load through HTTP."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from mlflow_server import running_server
from test_registry import EVAL, FUS_CV, GEN_CV, make_fusion, make_generator, make_panel

from pathgen_batch.inference.bundle import load_bundle
from pathgen_batch.registry import (
    GateRefusedError,
    RegistryConfig,
    fetch_bundle,
    list_versions,
    open_store,
    promote,
    register_bundle,
    rollback,
)

pytestmark = pytest.mark.servers


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """``mlflow server`` with a SQLite backend and served local artifacts; stopped after."""
    root = tmp_path_factory.mktemp("mlflow-server")
    with running_server(root) as url:
        yield url, root


LOAD = """
import json, sys
import mlflow, numpy as np, pandas as pd
rng = np.random.default_rng(0)
bags = [rng.normal(size=(4, 8)).tolist(), rng.normal(size=(7, 8)).tolist()]
frame = pd.DataFrame({"slide_id": ["s1", "s2"], "features": bags})
gen = mlflow.pyfunc.load_model("models:/pathgen-generator/Production")
import pathgen_batch
syn = gen.predict(frame, params={"n_samples": 3})
expr = [syn.loc[syn.slide_id == s, "mean"].tolist() for s in ("s1", "s2")]
fus = mlflow.pyfunc.load_model("models:/pathgen-fusion@champion")
pred = fus.predict(frame.assign(expression=expr))
print(json.dumps({"syn": syn.to_dict("list"), "pred": pred.to_dict("list"),
                  "code": pathgen_batch.__file__}))
"""


def test_register_promote_rollback_and_load_through_http(
    server: tuple[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    url, root = server
    monkeypatch.setenv("PATHGEN_USER", "bob")
    store = open_store(RegistryConfig(workspace=str(tmp_path / "ws"), tracking_uri=url))
    g1 = register_bundle(store, make_generator(tmp_path / "g1"), cv=GEN_CV, eval_digest=EVAL)
    f1 = register_bundle(store, make_fusion(tmp_path / "f1"), cv=FUS_CV, eval_digest=EVAL)
    assert promote(store, g1.name, g1.version, "Staging").to_stage == "Staging"
    assert promote(store, g1.name, g1.version, "Production").gate.passed
    assert promote(store, f1.name, f1.version, "Production").gate.passed
    # nothing of the registry lives on the client: artifacts went to the server's folder
    assert not (tmp_path / "ws").exists()
    assert len(list((root / "artifacts").rglob("MLmodel"))) == 2

    worse = GEN_CV | {"fidelity/mae": 0.5}
    g2 = register_bundle(store, make_generator(tmp_path / "g2", seed=3), cv=worse, eval_digest=EVAL)
    with pytest.raises(GateRefusedError, match="fidelity/mae"):
        promote(store, g2.name, g2.version, "Production")
    promote(store, g2.name, g2.version, "Production", force=True, reason="canary")
    rollback(store, g2.name, reason="canary failed")
    st = {str(v.version): v.current_stage for v in list_versions(store, g2.name)}
    assert st == {"1": "Production", "2": "Archived"}
    fetched = fetch_bundle(store, "pathgen-generator", "@champion", tmp_path / "fetched")
    assert fetched.is_relative_to(tmp_path / "fetched")
    assert load_bundle(fetched).contract == load_bundle(tmp_path / "g1").contract

    env = {**os.environ, "MLFLOW_TRACKING_URI": url, "OMP_NUM_THREADS": "1"}
    res = subprocess.run(
        [sys.executable, "-c", LOAD],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
        cwd=tmp_path,
        check=False,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    genes = list(make_panel().genes)
    assert out["syn"]["slide_id"] == ["s1"] * 6 + ["s2"] * 6
    assert out["syn"]["gene"] == genes * 2
    assert all(v == v for v in out["syn"]["mean"])  # finite, no NaN
    assert out["pred"]["slide_id"] == ["s1", "s2"]
    probs = [out["pred"][f"p_{c}"] for c in ("well", "moderate", "poor")]
    assert [round(sum(p), 6) for p in zip(*probs, strict=True)] == [1.0, 1.0]
    assert str(Path(__file__).resolve().parents[1]) not in out["code"]  # the model's own code


def test_a_tracked_command_logs_its_step_to_the_server(
    server: tuple[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    from click.testing import CliRunner

    from pathgen_batch.cli import main

    url, root = server
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    cohort = tmp_path / "cohort"
    args = f"synth cohort --out {cohort} --mode synthetic --n-patients 6 --n-genes 8 "
    args += f"--slide-px 512 --folds 2 --workers 1 --track --tracking-uri {url} "
    args += f"--workspace {tmp_path / 'ws'}"
    r = CliRunner().invoke(main, args.split())
    assert r.exit_code == 0, r.output
    run_id = re.findall(r"cohort run ([0-9a-f]{32})", r.output)[0]
    store = open_store(RegistryConfig(tracking_uri=url))
    run = store.client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.metrics["patients"] == 6
    assert run.data.params["cohort.mode"] == "synthetic"
    logged = {a.path for a in store.client.list_artifacts(run_id, "cohort")}
    assert logged == {"cohort/cohort.json", "cohort/inventory.txt"}
    assert not (tmp_path / "ws").exists()  # nothing of the store on the client
    assert len(list((root / "artifacts").rglob("inventory.txt"))) == 1
