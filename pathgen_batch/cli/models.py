"""``pathgen-batch models``: the model registry (list, show, register, promote, rollback)."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from pathgen_batch.cli.options import (
    eval_run_option,
    key_value_option,
    optional_text,
    packed,
    parse_key_values,
    tracking_on,
    tracking_uri_option,
    workspace_option,
)
from pathgen_batch.config import load_json
from pathgen_batch.registry import (
    GateConfig,
    RegistryConfig,
    Store,
    lineage,
    list_models,
    open_store,
    promote,
    register_bundle,
    register_encoder,
    rollback,
    tracked_run,
)
from pathgen_batch.registry.tags import KINDS


@click.group()
@workspace_option
@tracking_uri_option
@click.option(
    "--registry-uri",
    default=None,
    envvar="MLFLOW_REGISTRY_URI",
    help="Registry store, if not the tracking store.",
)
@click.option("--experiment", default="pathgen", show_default=True, help="Experiment name.")
@click.pass_context
def models(
    ctx: click.Context,
    workspace: str,
    tracking_uri: str | None,
    registry_uri: str | None,
    experiment: str,
) -> None:
    """Registered models: stages (None -> Staging -> Production -> Archived) and aliases
    (staging, champion), a gate before Production, audit trail and rollback."""
    ctx.obj = RegistryConfig(
        workspace=workspace,
        tracking_uri=tracking_uri or None,
        registry_uri=registry_uri or None,
        experiment=experiment,
    )


def _store(ctx: click.Context) -> Store:
    cfg = ctx.find_object(RegistryConfig)
    return open_store(cfg if cfg is not None else RegistryConfig())


def _ms(ms: int) -> str:
    if not ms:
        return "-"
    return dt.datetime.fromtimestamp(ms / 1000, dt.timezone.utc).strftime("%Y-%m-%d %H:%M")


@models.command("init")
@click.pass_context
def init_cmd(ctx: click.Context) -> None:
    """Create the store and the experiment (artifacts under the workspace) if missing; print
    the URIs and the line that points `mlflow run` and `mlflow ui` at them."""
    s = _store(ctx)
    exp_id = s.experiment_id()
    click.echo(f"tracking URI : {s.tracking_uri}")
    click.echo(f"registry URI : {s.registry_uri}")
    click.echo(f"experiment   : {s.config.experiment} (id {exp_id})")
    click.echo(f"artifacts    : {s.experiment_artifact_location()}")
    click.echo(f"export MLFLOW_TRACKING_URI={s.tracking_uri}")


@models.command("list")
@click.argument("names", nargs=-1)
@click.pass_context
def list_cmd(ctx: click.Context, names: tuple[str, ...]) -> None:
    """List registered versions (of NAMES, default all): stage, aliases, CV metrics."""
    rows = list_models(_store(ctx), list(names) or None)
    gated = GateConfig()
    if not rows:
        click.echo("no registered models")
        return
    head = f"{'model':<22}{'ver':>4}  {'stage':<11}{'aliases':<18}{'kind':<10}{'created':<17}run"
    click.echo(head)
    click.echo("-" * (len(head) + 30))
    for r in rows:
        aliases = " ".join(f"@{a}" for a in r.aliases) or "-"
        click.echo(
            f"{r.name:<22}{r.version:>4}  {r.stage:<11}{aliases:<18}{r.kind:<10}"
            f"{_ms(r.created):<17}{r.run_id or '-'}"
        )
        keys = [m.name for m in gated.rules_for(r.kind)] if r.kind in KINDS else []
        shown = ", ".join(f"{k} {r.metrics[k]:.4g}" for k in keys if k in r.metrics)
        if shown:
            click.echo(f"{'':<26}cv: {shown}")


@models.command("show")
@click.argument("name")
@click.argument("version")
@click.option("--json", "as_json", is_flag=True, help="Print the lineage as JSON.")
@click.pass_context
def show_cmd(ctx: click.Context, name: str, version: str, as_json: bool) -> None:
    """Lineage of NAME at VERSION (a number, a stage such as Production, or @alias): training
    run, its parameters and metrics, data digest, artifact URI, tags and audit trail."""
    lin = lineage(_store(ctx), name, version)
    if as_json:
        click.echo(json.dumps(lin.to_dict(), indent=2, sort_keys=True, default=str))
    else:
        click.echo("\n".join(lin.lines()))


def _tolerances(values: tuple[str, ...]) -> dict[str, float]:
    out = {}
    for key, value in parse_key_values(values, "--tolerance").items():
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise click.BadParameter(
                f"expected METRIC=NUMBER, got {key}={value!r}", param_hint="--tolerance"
            )
        out[key] = float(value)
    return out


@dataclass(frozen=True)
class GateChoice:
    """What a promotion is gated by (``--gate-config``, ``--tolerance``) and whether a refusal
    is overridden (``--force``, ``--reason``)."""

    gate_config: Path | None
    tolerance: tuple[str, ...]
    force: bool
    reason: str

    def gate(self) -> GateConfig:
        cfg = GateConfig() if self.gate_config is None else load_json(GateConfig, self.gate_config)
        return cfg.with_tolerances(_tolerances(self.tolerance)) if self.tolerance else cfg


_with_gate_options = packed(
    GateChoice,
    "choice",
    click.option(
        "--gate-config",
        type=click.Path(dir_okay=False, exists=True, path_type=Path),
        default=None,
        help="JSON GateConfig: gated metrics per model kind, directions, tolerances.",
    ),
    click.option(
        "--tolerance",
        multiple=True,
        metavar="METRIC=NUMBER",
        help="Override a gated metric's tolerance (repeatable).",
    ),
    click.option("--force", is_flag=True, help="Override a gate refusal (needs --reason)."),
    click.option("--reason", default="", help="Why; recorded in the audit trail."),
)


@models.command("promote")
@click.argument("name")
@click.argument("version")
@click.option(
    "--to",
    "stage",
    type=click.Choice(["staging", "production", "archived"], case_sensitive=False),
    default="production",
    show_default=True,
)
@_with_gate_options
@click.pass_context
def promote_cmd(
    ctx: click.Context,
    name: str,
    version: str,
    stage: str,
    choice: GateChoice,
) -> None:
    """Move NAME at VERSION to a stage; Production goes through the gate."""
    gate, force, reason = choice.gate(), choice.force, choice.reason
    res = promote(_store(ctx), name, version, stage, gate=gate, force=force, reason=reason)
    click.echo(res.summary())
    if res.gate is not None:
        for m in res.gate.metrics:
            click.echo(f"  {'ok  ' if m.passed else 'FAIL'} {m.reason}")
        for c in res.gate.compat:
            click.echo(f"  {'ok  ' if c.passed else 'FAIL'} {c.what}: {c.reason}")


@models.command("rollback")
@click.argument("name")
@_with_gate_options
@click.pass_context
def rollback_cmd(ctx: click.Context, name: str, choice: GateChoice) -> None:
    """Restore the previous Production version of NAME and archive the current one."""
    gate, force, reason = choice.gate(), choice.force, choice.reason
    res = rollback(_store(ctx), name, gate=gate, force=force, reason=reason)
    click.echo(
        f"{res.name}: v{res.version} restored to Production; v{res.previous_production} archived"
    )


@models.command("register")
@click.argument(
    "bundle", type=click.Path(file_okay=False, exists=True, path_type=Path), metavar="BUNDLE"
)
@optional_text("--name", help="Registered model name [default: the bundle's].")
@optional_text(
    "--run-id", help="Training run to log the model into [default: the tracked run, if any]."
)
@eval_run_option
@optional_text("--description", help="Version description.")
@optional_text("--stage", help="Move the new version to this stage: staging (or none).")
@click.option(
    "--track",
    is_flag=True,
    help="Record the version in a run of its own (on by itself inside `mlflow run`).",
)
@click.pass_context
def register_cmd(
    ctx: click.Context,
    bundle: Path,
    name: str | None,
    run_id: str | None,
    eval_run_id: str | None,
    description: str | None,
    stage: str | None,
    track: bool,
) -> None:
    """Register a model bundle folder as a new version (pyfunc, state dict, no pickles).

    The MLflow entry point ``register`` runs this command; inside ``mlflow run`` (or with
    --track) the version is logged into that run unless --run-id names another, and the run is
    tagged with it.
    """
    if stage is not None and stage.lower() != "staging":
        raise click.BadParameter(
            f"expected 'staging' or nothing, got {stage!r}", param_hint="--stage"
        )
    store = _store(ctx)
    tracking = tracked_run(store, "register") if tracking_on(track) else contextlib.nullcontext()
    with tracking as run:
        reg = register_bundle(
            store,
            bundle,
            name=name,
            run_id=run_id or (run.run_id if run is not None else None),
            eval_run_id=eval_run_id,
            description=description,
        )
        if run is not None:
            run.set_tags({"pathgen.registered_version": f"{reg.name}/{reg.version}"})
        click.echo(reg.summary())
        if stage is not None:
            click.echo(promote(store, reg.name, reg.version, "staging").summary())


@models.command("register-encoder")
@click.argument(
    "weights", type=click.Path(dir_okay=False, exists=True, path_type=Path), metavar="WEIGHTS"
)
@click.option(
    "--encoder",
    default="torchscript",
    show_default=True,
    help="Registered encoder name that reads WEIGHTS (see `features encoders`).",
)
@key_value_option("Encoder option, repeatable, e.g. -o dim=1024 -o tile_px=224.")
@click.option("--name", default="pathgen-encoder", show_default=True)
@click.option("--description", default=None, help="Version description.")
@click.pass_context
def register_encoder_cmd(
    ctx: click.Context,
    weights: Path,
    encoder: str,
    options: dict[str, Any],
    name: str,
    description: str | None,
) -> None:
    """Register a tile encoder's weights file (and its feature contract) as a new version."""
    reg = register_encoder(
        _store(ctx),
        weights,
        encoder=encoder,
        options=options,
        name=name,
        description=description,
    )
    click.echo(reg.summary())
    click.echo(f"feature contract: {reg.tags['pathgen.feature_contract']}")
