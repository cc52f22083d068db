"""``pathgen-batch features``: tile encoders and per-slide feature extraction."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import click

from pathgen_batch.cli.options import (
    Tracking,
    cohort_option,
    device_option,
    exclude_geojson_option,
    key_value_option,
    optional_text,
    out_option,
    set_threads,
    tracking_options,
)
from pathgen_batch.features import (
    DEFAULT_ENCODER,
    SlideResult,
    build_encoder,
    cohort_slides,
    encoder_entries,
    encoder_names,
    extract_slides,
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
@cohort_option
@out_option("Folder for the per-slide feature files.", dest="out_dir")
@click.option(
    "--encoder",
    default=DEFAULT_ENCODER,
    show_default=True,
    metavar="NAME",
    help=f"One of {', '.join(encoder_names())} (timm:<architecture> for any timm model).",
)
@optional_text(
    "--weights",
    help="Local weights file (safetensors, torch state dict or TorchScript); never downloaded.",
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
@click.option("--mpp", type=float, default=None, help="Level-0 um/px for every slide (override).")
@click.option(
    "--slides",
    "slide_ids",
    multiple=True,
    metavar="ID",
    help="Only these slide ids (repeatable or comma-separated); default all.",
)
@click.option("--overwrite", is_flag=True, help="Re-extract slides that already have features.")
@click.option(
    "--keep-going", is_flag=True, help="Record slides that fail and go on (exit status 1)."
)
@tracking_options
@click.pass_context
def extract_cmd(
    ctx: click.Context,
    cohort_dir: Path,
    out_dir: Path,
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
    keep_going: bool,
    tracking: Tracking,
) -> None:
    """Tile and embed every slide of a cohort; one Parquet file per slide (resumable).

    The MLflow entry point ``features`` runs this command; inside ``mlflow run`` (or with
    --track) it logs the settings, the encoder's feature contract and the tile counts.
    """
    enc = build_encoder(encoder, weights=weights, device=device, options=options)
    if workers > 1 and enc.device.type == "cpu":
        set_threads(1)  # the workers are the parallelism: no oversubscription
    ids = [s for item in slide_ids for s in item.split(",") if s] or None
    slides = cohort_slides(cohort_dir, ids)
    click.echo(f"encoder {enc.contract.describe()} on {enc.device}; {len(slides)} slide(s)")
    n = len(slides)
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

    with tracking.run("features") as run:
        results = extract_slides(
            slides,
            out_dir,
            enc,
            min_tissue=min_tissue,
            mpp_override=mpp,
            batch_size=batch_size,
            overwrite=overwrite,
            on_error="record" if keep_going else "raise",
            progress=progress,
            exclude_geojson=exclude_geojson,
            workers=workers,
        )
        if run is not None:
            from pathgen_batch.registry.step_logs import log_features

            settings = {
                "encoder": encoder,
                "weights": weights,
                "options": options,
                "batch_size": batch_size,
                "min_tissue": min_tissue,
                "device": str(enc.device),
                "cohort": str(cohort_dir),
                "out": str(out_dir),
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
        f"{tiles} tiles in {secs:.1f}s{rate}; features in {out_dir}"
    )
    if failed:
        ctx.exit(1)
