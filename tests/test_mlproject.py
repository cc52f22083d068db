"""The MLflow project: each entry point is a `pathgen-batch` command with the CLI's options, and
`mlflow run` logs what it should and trains what the command line trains."""

from __future__ import annotations

import hashlib
import json
import re
import shlex
from pathlib import Path

import click
import pytest
import yaml
from click.testing import CliRunner
from mlflow_runs import ROOT
from mlflow_runs import check as _check
from mlflow_runs import env as _env
from mlflow_runs import mlflow_run as _mlflow_run
from tiny_training import TINY_CV as TINY

from pathgen_batch.cli import main
from pathgen_batch.config import to_dict
from pathgen_batch.training.config import CVConfig

ENTRIES = ("cohort", "features", "evaluate", "train_generator", "train_fusion", "register")
NUMBER_TYPES = ("integer", "float", "integer range", "float range")


def _project() -> dict:
    return yaml.safe_load((ROOT / "MLproject").read_text())


def _resolve(words: list[str]) -> tuple[list[click.Command], list[str], list[list[str]]]:
    """The command path of a `pathgen-batch ...` word list: the commands from the root to the
    leaf, the leaf's arguments and each group's own option words."""
    assert words[0] == "pathgen-batch"
    chain: list[click.Command] = [main]
    own: list[list[str]] = [[]]
    rest = words[1:]
    while isinstance(chain[-1], click.Group):
        group = chain[-1]
        word = rest.pop(0)
        sub = group.get_command(click.Context(group), word)
        if sub is not None:
            chain.append(sub)
            own.append([])
        else:  # a group option and its value
            own[-1] += [word, rest.pop(0)]
    return chain, rest, own


def test_mlproject_declares_every_entry_point_and_both_environments():
    project = _project()
    assert sorted(project["entry_points"]) == sorted(ENTRIES)
    env = yaml.safe_load((ROOT / project["python_env"]).read_text())
    conda = yaml.safe_load((ROOT / "conda.yaml").read_text())
    pip = next(d["pip"] for d in conda["dependencies"] if isinstance(d, dict))
    assert env["dependencies"] == pip  # the same environment for virtualenv and conda
    pins = [d for d in conda["dependencies"] if isinstance(d, str) and d.startswith("python=")]
    assert pins == [f"python={env['python']}"]
    assert not (ROOT / "mlprojects").exists()  # one front end


@pytest.mark.parametrize("entry", ENTRIES)
def test_entry_point_is_the_cli_command_with_the_same_options(entry: str, tmp_path: Path):
    spec = _project()["entry_points"][entry]
    words = spec["command"].split()
    chain, _, _ = _resolve(words)
    leaf = chain[-1]
    params = {o: p for cmd in chain for p in cmd.params for o in p.opts}
    arguments = {p.name: p for p in leaf.params if isinstance(p, click.Argument)}
    passed = re.findall(r"(?:(--?[a-z-]+) )?\{(\w+)\}", " ".join(words))
    declared = spec["parameters"]
    assert sorted(name for _, name in passed) == sorted(declared), "each parameter once"
    for opt, name in passed:
        if opt:  # parameter x_y is option --x-y of the command (or its group)
            assert opt in params, f"{entry}: {opt} is not an option of the command"
            assert opt == f"--{name.replace('_', '-')}" or params[opt].name == name, (opt, name)
            param = params[opt]
        else:
            param = arguments[name]
        if declared[name].get("type") == "float":
            assert param.type.name in NUMBER_TYPES, f"{name}: a typed number"
    for p in leaf.params:
        if p.required:
            assert any(o in p.opts for o, _ in passed) or p.name in arguments, p.name

    # the command line `mlflow run` builds from the defaults parses (types, callbacks)
    values = {
        k: str(tmp_path) if v.get("type") == "path" else str(v.get("default", ""))
        for k, v in declared.items()
    }
    line = shlex.split(spec["command"].format(**{k: shlex.quote(v) for k, v in values.items()}))
    chain, args, own = _resolve(line)
    ctx = None
    for cmd, sub, group_args in zip(chain[:-1], chain[1:], own[:-1], strict=True):
        ctx = cmd.make_context(cmd.name, [*group_args, sub.name], parent=ctx)
    with chain[-1].make_context(chain[-1].name, args, parent=ctx) as leaf_ctx:
        assert leaf_ctx.params
    result = CliRunner().invoke(main, [*(c.name for c in chain[1:]), "--help"])
    assert result.exit_code == 0 and "Usage:" in result.output


def test_evaluate_entry_point_takes_the_repeats_of_the_cli():
    spec = _project()["entry_points"]["evaluate"]
    assert spec["parameters"]["repeats"] == {"type": "float", "default": 1}
    assert "--repeats {repeats}" in " ".join(spec["command"].split())


def test_empty_and_zero_mean_not_given_as_mlflow_passes_them(tmp_path: Path):
    from pathgen_batch.cli.options import parse_key_values
    from pathgen_batch.training.overrides import cv_config

    assert parse_key_values(("",)) == {}
    assert parse_key_values(("dim=1024 grid=false", "name=x")) == {
        "dim": 1024,
        "grid": False,
        "name": "x",
    }
    with pytest.raises(click.BadParameter, match="expected KEY=VALUE, got 'dim'"):
        parse_key_values(("dim",))
    assert cv_config(None) == CVConfig()
    capped = cv_config(None, epochs=3)
    for section in (capped.generator, capped.fusion, capped.attention_mil, capped.omics_mlp):
        assert section.epochs == 3 and section.patience == 3
    r = CliRunner().invoke(
        main,
        f"evaluate --cohort {tmp_path} --features {tmp_path} --out x "
        f"--config {tmp_path / 'nope.json'}".split(),
    )
    assert r.exit_code == 2 and "nope.json: no such file" in r.output


def _weights_digest(bundle: Path) -> str:
    return json.loads((bundle / "bundle.json").read_text())["files"]["weights.pt"]


@pytest.mark.servers
@pytest.mark.slow
def test_mlflow_run_steps_log_register_and_train_what_the_cli_trains(tmp_path: Path):
    from pathgen_batch.registry import (
        RegistryConfig,
        default_tracking_uri,
        lineage,
        list_versions,
        open_store,
        resolve_version,
    )

    ws = tmp_path / "ws"
    store = open_store(RegistryConfig(workspace=str(ws), tracking_uri=default_tracking_uri(ws)))
    store.experiment_id()  # experiment with its artifacts in the workspace
    env = _env(store.tracking_uri)
    cohort, feats = tmp_path / "cohort", tmp_path / "features"
    rid = _mlflow_run(
        "cohort",
        {"out": cohort, "mode": "synthetic", "n_patients": 32, "n_genes": 12, "slide_px": 512}
        | {"folds": 2, "workers": 1, "workspace": ws},
        env,
    )
    run = store.client.get_run(rid)
    assert run.info.status == "FINISHED"
    assert run.data.params["cohort.mode"] == "synthetic"
    assert run.data.params["cohort.n_patients"] == "32"
    assert run.data.metrics["patients"] == 32
    meta = hashlib.sha256((cohort / "cohort.json").read_bytes()).hexdigest()
    assert run.data.tags["pathgen.data_digest"] == f"sha256:{meta}"
    art = Path(run.info.artifact_uri.removeprefix("file://"))
    assert art.is_relative_to(ws / "mlflow" / "artifacts")
    panel = (cohort / "gene_panel.csv").read_text()
    assert (art / "gene_panel" / "gene_panel.csv").read_text() == panel
    assert "32" in (art / "cohort" / "inventory.txt").read_text()

    rid = _mlflow_run(
        "features",
        {"cohort": cohort, "out": feats, "device": "cpu", "options": "grid=true"},
        env,
    )
    run = store.client.get_run(rid)
    assert run.data.params["features.options.grid"] == "True"
    assert run.data.metrics["slides_extracted"] == 32 and run.data.metrics["tiles"] > 0
    contract_digest = run.data.tags["pathgen.feature_contract_digest"]

    config = tmp_path / "cv.json"
    config.write_text(json.dumps(to_dict(TINY)))
    common = {"cohort": cohort, "features": feats, "config": config, "workspace": ws}
    eval_id = _mlflow_run("evaluate", common | {"out": tmp_path / "cv", "epochs": 1}, env)
    run = store.client.get_run(eval_id)
    assert run.data.params["cv.generator.epochs"] == "1"
    assert "cv/synthetic/harrell_c" in run.data.metrics
    assert run.data.tags["pathgen.eval_digest"].startswith("sha256:")
    art = Path(run.info.artifact_uri.removeprefix("file://"))
    assert (art / "plots" / "cv_metrics.png").stat().st_size > 1000
    assert (art / "cv" / "metrics_per_fold.csv").is_file()

    gen_mlflow = tmp_path / "generator-mlflow"
    train = common | {"epochs": 2, "holdout_fold": 0, "eval_run_id": eval_id}
    rid = _mlflow_run("train_generator", train | {"out": gen_mlflow}, env)
    run = store.client.get_run(rid)
    assert run.info.status == "FINISHED" and run.data.params["holdout_fold"] == "0"
    assert run.data.params["generator.epochs"] == "2"
    history = store.client.get_metric_history(rid, "generator/train_loss")
    assert sorted(m.step for m in history) == [1, 2]
    art = Path(run.info.artifact_uri.removeprefix("file://"))
    assert json.loads((art / "configs" / "generator.json").read_text())["epochs"] == 2
    assert (art / "plots" / "generator_loss.png").stat().st_size > 1000
    assert (art / "gene_panel" / "gene_panel.csv").read_text() == panel
    mv = resolve_version(store, "pathgen-generator", "1")
    assert mv.run_id == rid
    assert mv.tags["pathgen.feature_contract_digest"] == contract_digest
    assert (
        mv.tags["pathgen.eval_digest"]
        == store.client.get_run(eval_id).data.tags["pathgen.eval_digest"]
    )
    lin = lineage(store, "pathgen-generator", "1")
    assert lin.params["generator.epochs"] == "2" and lin.data_digest is not None

    # the same step through the command line, untracked: the same weights, no new run
    gen_cli = tmp_path / "generator-cli"
    runs_before = len(store.client.search_runs([store.experiment_id()]))
    cli_env = {k: v for k, v in env.items() if k != "MLFLOW_TRACKING_URI"}
    _check(
        f"pathgen-batch train generator --cohort {cohort} --features {feats} --config {config} "
        f"--epochs 2 --holdout-fold 0 --threads 1 --out {gen_cli}".split(),
        cli_env,
    )
    assert _weights_digest(gen_cli) == _weights_digest(gen_mlflow)
    assert len(store.client.search_runs([store.experiment_id()])) == runs_before

    fus_bundle = tmp_path / "fusion"
    rid = _mlflow_run("train_fusion", train | {"generator": gen_mlflow, "out": fus_bundle}, env)
    run = store.client.get_run(rid)
    assert run.data.params["calibrated_with"] == str(gen_mlflow)
    assert run.data.metrics["fusion/best_epoch"] >= 1
    assert resolve_version(store, "pathgen-fusion", "1").run_id == rid

    rid = _mlflow_run(
        "register",
        {"bundle": gen_cli, "name": "pathgen-generator", "stage": "staging", "workspace": ws},
        env,
    )
    assert store.client.get_run(rid).data.tags["pathgen.registered_version"] == (
        "pathgen-generator/2"
    )
    versions = {str(v.version): v.current_stage for v in list_versions(store, "pathgen-generator")}
    assert versions == {"1": "None", "2": "Staging"}
    assert not (ROOT / "mlruns").exists() and not (ROOT / "mlflow.db").exists()


def test_fusion_step_requires_a_generator_and_training_reads_a_cv_config(tmp_path: Path):
    r = CliRunner().invoke(
        main,
        f"train fusion --cohort {tmp_path} --features {tmp_path} --out {tmp_path / 'f'}".split(),
    )
    assert r.exit_code == 2 and "--generator" in r.output
    help_text = CliRunner().invoke(main, ["train", "generator", "--help"]).output
    assert "CVConfig JSON" in help_text and "--holdout-fold" in help_text
