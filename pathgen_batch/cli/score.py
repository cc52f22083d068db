"""``pathgen-batch score``: score an archive of slides into Parquet tables (a Ray Data job)."""

from __future__ import annotations

import sys

import click

from pathgen_batch.batch.config import ScoreConfig
from pathgen_batch.batch.model_refs import DEFAULT_FUSION, DEFAULT_GENERATOR
from pathgen_batch.cli.options import exclude_geojson_option
from pathgen_batch.errors import PathgenError
from pathgen_batch.storage import SLIDE_EXTENSIONS

EXIT_ALL_SCORED = 0
EXIT_COULD_NOT_START = 2
EXIT_SOME_FAILED = 3


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("archive")
@click.option("--out", "output", required=True, help="Output root: s3://bucket/prefix or a folder.")
@click.option("--run-id", default=None, help="Name of the run; the same id resumes it. [new id]")
@click.option(
    "--generator",
    default=DEFAULT_GENERATOR,
    show_default=True,
    envvar="PATHGEN_GENERATOR",
    help="Generator: registry URI (models:/name/stage|version, models:/name@alias) or folder.",
)
@click.option(
    "--fusion",
    default=DEFAULT_FUSION,
    show_default=True,
    envvar="PATHGEN_FUSION",
    help="Fusion model: registry URI or bundle folder.",
)
@click.option(
    "--workspace",
    default="workspace",
    show_default=True,
    envvar="PATHGEN_WORKSPACE",
    help="Workspace of the embedded registry store.",
)
@click.option(
    "--tracking-uri",
    default=None,
    envvar="MLFLOW_TRACKING_URI",
    help="MLflow tracking/registry store URI.",
)
@click.option(
    "--encoder-weights",
    default=None,
    help="Weights of the models' encoder (a file, s3://bucket/key, or "
    "models:/pathgen-encoder/N). [registered one]",
)
@click.option("--ray-address", default=None, help="Join this Ray cluster (else a local Ray).")
@click.option("--num-cpus", type=int, default=None, help="CPUs of the local Ray. [all]")
@click.option(
    "--ray/--no-ray",
    "use_ray",
    default=None,
    help="Ray actor pools, or the same stages in this process. [Ray; in this process when "
    "re-scoring without --ray-address]",
)
@click.option("--scratch", "scratch_dir", default=None, help="Node-local folder for staged slides.")
@click.option("--encoder-actors", type=int, default=None, help="Tile+encode actors. [per GPU/CPU]")
@click.option(
    "--encoder-batch-size",
    type=click.IntRange(min=1),
    default=None,
    help="Tiles per encoder pass. [from GPU memory; 64 on a CPU]",
)
@click.option("--encoder-gpus", type=float, default=None, help="GPUs per encoder actor.")
@click.option("--scorer-actors", type=int, default=1, show_default=True)
@click.option(
    "--scorer-batch-size", type=int, default=4, show_default=True, help="Slides per call."
)
@click.option("--scorer-gpus", type=float, default=None, help="GPUs per scorer actor.")
@click.option("--min-tissue", type=float, default=0.5, show_default=True)
@click.option("--samples", "n_samples", type=int, default=None, help="Generator samples per slide.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--write-features", is_flag=True, help="Also keep a features table.")
@click.option(
    "--reuse-features", is_flag=True, help="Re-score from a stored features table (no slides)."
)
@click.option("--features-run", default=None, help="Run whose features to reuse. [latest]")
@click.option("--retries", type=int, default=4, show_default=True, help="Tries per transfer.")
@click.option("--max-passes", type=int, default=3, show_default=True)
@click.option(
    "--ext",
    "extensions",
    multiple=True,
    help=f"Slide extensions to list (repeatable). [{' '.join(sorted(SLIDE_EXTENSIONS))}]",
)
@click.option("--progress-every", type=float, default=10.0, show_default=True, help="Seconds.")
@click.option(
    "--ray-stats", is_flag=True, help="Also print Ray Data's stats (time and CPU per operator)."
)
@exclude_geojson_option
@click.option(
    "--archive-profile",
    default=None,
    help="Profile of the shared AWS credentials/config files for an S3 archive. [standard chain]",
)
@click.option(
    "--output-profile",
    default=None,
    help="Profile of the shared AWS credentials/config files for an S3 output. [standard chain]",
)
@click.option(
    "--pseudonymise",
    "pseudonym_key",
    default=None,
    metavar="KEYFILE",
    help="Replace slide ids, patient ids and source URIs in every table and log line by keyed "
    "hashes (HMAC-SHA256 with the key in KEYFILE, ps-<16 hex>).",
)
def score(**kw: object) -> None:
    """Score ARCHIVE (s3://bucket/prefix, a folder, or a manifest .csv/.parquet) into tables.

    Exit status: 0 every slide scored; 3 some slides failed (rows in the failures table); 2 the
    run could not start or complete (bad arguments, models missing or mismatched, storage or Ray
    unreachable) - rerun with the same --run-id to resume.
    """
    from pathgen_batch.batch import Progress, score_archive

    exts = kw.pop("extensions")
    encoder_gpus = kw.pop("encoder_gpus")
    scorer_gpus = kw.pop("scorer_gpus")
    every = kw.pop("progress_every")
    ray_stats = kw.pop("ray_stats")
    use_ray = kw.pop("use_ray")
    try:
        cfg = ScoreConfig(
            **kw,  # type: ignore[arg-type]
            in_process=None if use_ray is None else not use_ray,
            encoder_num_gpus=encoder_gpus,  # type: ignore[arg-type]
            scorer_num_gpus=scorer_gpus,  # type: ignore[arg-type]
            progress_every_s=every,  # type: ignore[arg-type]
            **({"extensions": tuple(exts)} if exts else {}),  # type: ignore[arg-type]
        )

        def show(p: Progress) -> None:
            click.echo(p.line(), err=True)

        summary = score_archive(cfg, progress=show)
    except PathgenError as e:
        click.echo(f"Error: {e}", err=True)
        sys.exit(EXIT_COULD_NOT_START)
    click.echo("\n".join(summary.lines()))
    if ray_stats and summary.ray_stats:
        click.echo(summary.ray_stats)
    sys.exit(summary.exit_code)
