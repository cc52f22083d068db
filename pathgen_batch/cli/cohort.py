"""``pathgen-batch cohort``: start a cohort folder of your own and check it."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from pathgen_batch.cohort import init_cohort, validate_cohort


@click.group()
def cohort() -> None:
    """Your own cohort: a template to fill in, and a check of the result."""


@cohort.command()
@click.argument("out_dir", type=click.Path(file_okay=False, path_type=Path))
def init(out_dir: Path) -> None:
    """Write an empty cohort (tables with their headers, cohort.toml, README.md) to OUT_DIR."""
    written = init_cohort(out_dir)
    click.echo(f"cohort template in {out_dir}: {', '.join(p.name for p in written)}")
    readme = out_dir / "README.md"
    click.echo(f"fill it in (see {readme}), then: pathgen-batch cohort validate {out_dir}")


@cohort.command()
@click.argument("cohort_dir")
@click.option(
    "--folds",
    type=click.IntRange(min=2),
    default=None,
    help="Check for this many cross-validation folds [default: cohort.toml's, else 5].",
)
@click.option(
    "--no-open-slides",
    is_flag=True,
    help="Do not open the slide files (tables only).",
)
def validate(cohort_dir: str, folds: int | None, no_open_slides: bool) -> None:
    """Check a cohort (folder or s3:// prefix) and print its inventory.

    Every problem is printed, one line each naming file, row and column, and the exit status
    is 2 when there is any.
    """
    result = validate_cohort(cohort_dir, open_slides=not no_open_slides, folds=folds)
    if result.cohort is None or result.problems:
        for line in result.lines():
            click.echo(line, err=True)
        click.echo(f"Error: {len(result.problems)} problem(s) in {result.root}", err=True)
        sys.exit(2)
    click.echo(result.cohort.inventory())
