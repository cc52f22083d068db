"""``pathgen-batch report``: an offline HTML page of one scoring run."""

from __future__ import annotations

from pathlib import Path

import click

from pathgen_batch.cli.options import out_option


@click.command()
@click.argument("output_root", envvar="PATHGEN_OUTPUT")
@click.option("--run", "run_id", default=None, help="Run id [default: the latest complete run].")
@click.option(
    "--clinical",
    default=None,
    help="CSV/Parquet with slide_id or patient_id, time, event, grade or grade_index.",
)
@click.option(
    "--expression",
    default=None,
    help="CSV/Parquet with patient_id (or slide_id) and one column per gene.",
)
@click.option(
    "--slides",
    type=click.IntRange(min=0),
    default=12,
    show_default=True,
    help="Slides with a heatmap panel, highest risk first.",
)
@click.option(
    "--thumb-px",
    type=click.IntRange(32, 4096),
    default=512,
    show_default=True,
    help="Longer side of slide thumbnails (px).",
)
@click.option(
    "--pseudonymise",
    "pseudonym_key",
    default=None,
    metavar="KEYFILE",
    help="The key of a pseudonymised run: ids of --clinical and --expression are hashed the same "
    "way before joining.",
)
@out_option("Folder for index.html and img/.", dest="out_dir")
def report(
    output_root: str,
    run_id: str | None,
    clinical: str | None,
    expression: str | None,
    slides: int,
    thumb_px: int,
    pseudonym_key: str | None,
    out_dir: Path,
) -> None:
    """Write OUT/index.html (+ OUT/img/*.png) for a run under OUTPUT_ROOT (folder or s3://).

    Everything comes from the tables: heatmaps are drawn on the slide's stored thumbnail (the
    thumbnails table), for folder and S3 archives alike; no slide is opened or downloaded.
    """
    from pathgen_batch.report import ReportConfig, write_report
    from pathgen_batch.tables.pseudonyms import Pseudonymiser

    pseudonyms = Pseudonymiser.from_file(pseudonym_key) if pseudonym_key is not None else None

    path = write_report(
        output_root,
        out_dir,
        run_id=run_id,
        clinical=clinical,
        expression=expression,
        config=ReportConfig(slides=slides, thumb_px=thumb_px),
        pseudonyms=pseudonyms,
    )
    click.echo(f"report written to {path}")
