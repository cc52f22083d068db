"""``pathgen-batch features``: tile encoders and per-slide feature extraction."""

from __future__ import annotations

import dataclasses
import json
import time
from typing import Any

import click

from pathgen_batch import storage
from pathgen_batch.batch.features_job import FeatureJob, cohort_sources, extract_features
from pathgen_batch.cli.options import (
    Tracking,
    device_option,
    exclude_geojson_option,
    key_value_option,
    optional_text,
    set_threads,
    tracking_options,
)
from pathgen_batch.cohort import load_cohort
from pathgen_batch.features import (
    DEFAULT_ENCODER,
    FeatureTarget,
    SlideResult,
    build_encoder,
    encoder_entries,
    encoder_names,
)


@click.group()
def features() -> None:
    """Embed slide tiles with a registered encoder; list the encoders."""


def _option_help(cls: type) -> str:
    parts = []
    for f in dataclasses.fields(cls):
        if f.name == "weights":
            continue
        if f.default is not dataclasses.MISSING:
            default = f.default
            shown = list(default) if isinstance(default, tuple) else default
            parts.append(f"{f.name}={json.dumps(shown)}")
        else:
            parts.append(f"{f.name} (required)")
    return ", ".join(parts)


@features.command("encoders")
def encoders_cmd() -> None:
    """List the registered encoders and their options."""
    for e in encoder_entries():
        default = " (default)" if e.name == DEFAULT_ENCODER else ""
        click.echo(f"{e.name}{default}: {e.summary}")
        if e.needs_weights:
            click.echo("    --weights PATH (required, local file)")
        click.echo(f"    options (-o KEY=VALUE): {_option_help(e.config_cls)}")


@features.command("extract")
@click.argument("cohort", required=False, metavar="[COHORT]")
@click.option(
    "--cohort",
    "cohort_opt",
    default=None,
    metavar="DIR|s3://...",
    help="Cohort folder or S3 prefix (or give it as the argument).",
)
@click.option(
    "--out",
    "out_dir",
    required=True,
    metavar="DIR|s3://...",
    help="Folder or S3 prefix for the per-slide feature files.",
)
@click.option(
    "--encoder",
    default=DEFAULT_ENCODER,
    show_default=True,
    metavar="NAME",
    help=f"One of {', '.join(encoder_names())} (timm:<architecture> for any timm model).",
)
@optional_text(
    "--weights",
    help="Weights file (safetensors, torch state dict or TorchScript): a local path (with Ray, "
    "every node reads it at this path) or s3://bucket/key (fetched once per machine into "
    "$PATHGEN_WEIGHTS_CACHE); never from a model hub.",
)
@key_value_option(
    "Encoder option, repeatable (see `features encoders`), e.g. -o dim=1024; one value may "
    "hold several, separated by spaces (-o 'dim=1024 tile_px=224')."
)
@click.option("--batch-size", type=click.IntRange(min=1), default=64, show_default=True)
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Threads that read and encode a slide's tile batches side by side, one torch "
    "thread each (on CUDA they read side by side and the GPU encodes in turn).",
)
@device_option("auto")
@exclude_geojson_option
@click.option(
    "--min-tissue",
    type=click.FloatRange(0.0, 1.0),
    default=0.5,
    show_default=True,
    help="Minimum tissue fraction of a kept tile.",
)
@click.option(
    "--mpp", type=float, default=None, help="Level-0 um/px of slides the cohort gives none."
)
@click.option(
    "--slides",
    "slide_ids",
    multiple=True,
    metavar="ID",
    help="Only these slide ids (repeatable or comma-separated); default all.",
)
@click.option("--overwrite", is_flag=True, help="Re-extract slides that already have features.")
@click.option(
    "--ray/--no-ray",
    "use_ray",
    default=None,
    help="Run the slides on a Ray actor pool (the scoring job's encoder stage), or the same "
    "stage in this process. [Ray with --ray-address, else in process]",
)
@click.option(
    "--ray-mode",
    type=click.Choice(["auto", "ray", "no-ray"]),
    default="auto",
    show_default=True,
    help="--ray/--no-ray as one value (the MLflow entry point's `ray` parameter).",
)
@optional_text("--ray-address", help="Join this Ray cluster (else a local Ray).")
@click.option(
    "--num-cpus", type=click.IntRange(min=0), default=0, help="CPUs of a local Ray (0: all)."
)
@click.option(
    "--actors",
    type=click.IntRange(min=0),
    default=0,
    help="Encoder actors (0: one per GPU, else one per CPU).",
)
@optional_text("--scratch", help="Node-local folder for slides staged from S3. [temp folder]")
@click.option(
    "--keep-going",
    is_flag=True,
    help="Accepted for older scripts: a failed slide is always reported and the rest go on.",
)
@tracking_options
@click.pass_context
def extract_cmd(
    ctx: click.Context,
    cohort: str | None,
    cohort_opt: str | None,
    out_dir: str,
    encoder: str,
    weights: str | None,
    exclude_geojson: str | None,
    options: dict[str, Any],
    batch_size: int,
    workers: int,
    device: str,
    min_tissue: float,
    mpp: float | None,
    slide_ids: tuple[str, ...],
    overwrite: bool,
    use_ray: bool | None,
    ray_mode: str,
    ray_address: str | None,
    num_cpus: int,
    actors: int,
    scratch: str | None,
    keep_going: bool,
    tracking: Tracking,
) -> None:
    """Tile and embed every slide of a cohort; one Parquet file per slide (resumable).

    Slides are local files or ``s3://`` objects (staged to scratch); the path from slide to
    bag is the scoring job's. A rerun skips slides whose features are complete; each failed
    slide is reported in one line (exit status 1). The MLflow entry point ``features`` runs
    this command; inside ``mlflow run`` (or with --track) it logs the settings, the encoder's
    feature contract and the tile counts.
    """
    if (cohort is None) == (cohort_opt is None):
        raise click.UsageError("give the cohort once: as the argument COHORT or with --cohort")
    cohort_dir = str(cohort if cohort is not None else cohort_opt)
    if use_ray is None and ray_mode != "auto":
        use_ray = ray_mode == "ray"
    if use_ray is False and ray_address:
        raise click.UsageError("--ray-address needs --ray")
    ray = bool(ray_address) if use_ray is None else use_ray
    enc = build_encoder(encoder, weights=weights, device=device, options=options)
    if workers > 1 and enc.device.type == "cpu":
        set_threads(1)  # the workers are the parallelism: no oversubscription
    ids = [s for item in slide_ids for s in item.split(",") if s] or None
    sources = [
        s if s.mpp is not None or mpp is None else dataclasses.replace(s, mpp=mpp)
        for s in cohort_sources(load_cohort(cohort_dir), ids)
    ]
    where = f"Ray ({ray_address or 'local'})" if ray else "this process"
    click.echo(
        f"encoder {enc.contract.describe()} on {enc.device}; {len(sources)} slide(s), in {where}"
    )
    job = FeatureJob(
        FeatureTarget(out_dir, enc.contract, min_tissue, exclude_geojson, overwrite),
        weights=weights,
        batch_size=batch_size,
        use_ray=ray,
        ray_address=ray_address,
        num_cpus=num_cpus or None,
        actors=actors or None,
        device=device,
        scratch_dir=scratch,
        workers=workers,
    )
    n = len(sources)
    counter = {"i": 0}

    def progress(r: SlideResult) -> None:
        counter["i"] += 1
        head = f"[{counter['i']}/{n}] {r.slide_id}:"
        if r.status == "done":
            click.echo(
                f"{head} {r.n_tiles} tiles in {r.seconds:.1f}s ({r.tiles_per_s:.0f} tiles/s)"
            )
        elif r.status == "skipped":
            click.echo(f"{head} skipped (features already extracted)")
        else:
            click.echo(f"{head} FAILED {r.error}", err=True)

    t0 = time.perf_counter()
    with tracking.run("features") as run:
        results = extract_features(job, sources, progress)
        if run is not None:
            from pathgen_batch.registry.step_logs import log_features

            settings = {
                "encoder": encoder,
                "weights": weights,
                "options": options,
                "batch_size": batch_size,
                "min_tissue": min_tissue,
                "device": device,
                "ray": ray,
                "cohort": storage.redact(cohort_dir),
                "out": storage.redact(out_dir),
            }
            log_features(run, settings, enc.contract, results)
            click.echo(f"features run {run.run_id}")
    done = [r for r in results if r.status == "done"]
    failed = [r for r in results if r.status == "failed"]
    tiles = sum(r.n_tiles for r in done)
    secs = sum(r.seconds for r in done)
    rate = f" ({tiles / secs:.0f} tiles/s)" if secs > 0 else ""
    click.echo(
        f"done {len(done)}, skipped {n - len(done) - len(failed)}, failed {len(failed)}; "
        f"{tiles} tiles in {secs:.1f}s{rate}; wall {time.perf_counter() - t0:.1f}s; "
        f"features in {out_dir}"
    )
    if failed:
        for r in failed:
            click.echo(f"failed: {r.slide_id}: {r.error}", err=True)
        ctx.exit(1)
