"""``pathgen-batch cohort``: start a cohort folder of your own and check it."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from pathgen_batch.cli.options import apply
from pathgen_batch.cohort import EXPRESSION_UNITS, init_cohort, validate_cohort

_SETTINGS = "pathgen.cohort_settings"  # ctx.meta key of the settings given on the command line


def _keep_setting(ctx: click.Context, param: click.Parameter, value: str | None) -> None:
    if value is None or not value.strip():  # empty: not given (as ``mlflow run`` passes it)
        return
    key = str(param.name)
    given: Any = value.strip()
    if key == "expression_unit" and given not in EXPRESSION_UNITS:
        raise click.BadParameter(f"expected one of {', '.join(EXPRESSION_UNITS)}, got {value!r}")
    if key == "grade_classes":
        given = tuple(c.strip() for c in value.split(","))
        if any(not c for c in given):
            raise click.BadParameter(f"expected classes separated by commas, got {value!r}")
    ctx.meta.setdefault(_SETTINGS, {})[key] = given


settings_options = apply(
    click.option(
        "--expression-unit",
        metavar="UNIT",
        expose_value=False,
        callback=_keep_setting,
        help=f"Unit of the expression table ({'|'.join(EXPRESSION_UNITS)}) "
        "[default: cohort.toml's, else log2].",
    ),
    click.option(
        "--grade-classes",
        metavar="A,B,...",
        expose_value=False,
        callback=_keep_setting,
        help="Grade classes from lowest to highest, separated by commas "
        "[default: cohort.toml's, else the order of a numeric or categorical column].",
    ),
)


def cohort_settings() -> dict[str, Any]:
    """The ``cohort.toml`` keys given on the current command line (``settings_options``)."""
    return dict(click.get_current_context().meta.get(_SETTINGS, {}))


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
@settings_options
def validate(cohort_dir: str, folds: int | None, no_open_slides: bool) -> None:
    """Check a cohort (folder or s3:// prefix) and print its inventory.

    Every problem is printed, one line each naming file, row and column, and the exit status
    is 2 when there is any. --expression-unit and --grade-classes override cohort.toml's.
    """
    result = validate_cohort(
        cohort_dir, open_slides=not no_open_slides, folds=folds, settings=cohort_settings()
    )
    if result.cohort is None or result.problems:
        for line in result.lines():
            click.echo(line, err=True)
        click.echo(f"Error: {len(result.problems)} problem(s) in {result.root}", err=True)
        sys.exit(2)
    click.echo(result.cohort.inventory())
