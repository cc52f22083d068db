"""The ``pathgen-batch`` command line: a thin layer over the library.

Each command group lives in its own module and only parses options, builds a config and calls
the library. Errors a user can cause (:class:`~pathgen_batch.errors.PathgenError`) are printed
as one line and exit with status 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import logging

import click

from pathgen_batch import __version__
from pathgen_batch.cli.options import OneLineErrors


@click.group(cls=OneLineErrors, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="pathgen-batch")
@click.option("-v", "--verbose", count=True, help="More log output (-v info, -vv debug).")
def main(verbose: int) -> None:
    """Synthetic transcriptomes and grade/survival predictions from whole-slide images."""
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def _register() -> None:
    from pathgen_batch.cli import cohort as _cohort
    from pathgen_batch.cli import evaluate as _evaluate
    from pathgen_batch.cli import export as _export
    from pathgen_batch.cli import features as _features
    from pathgen_batch.cli import models as _models
    from pathgen_batch.cli import query as _query
    from pathgen_batch.cli import report as _report
    from pathgen_batch.cli import results as _results
    from pathgen_batch.cli import score as _score
    from pathgen_batch.cli import slides as _slides
    from pathgen_batch.cli import synth as _synth
    from pathgen_batch.cli import train as _train

    main.add_command(_slides.slides)
    main.add_command(_synth.synth)
    main.add_command(_cohort.cohort)
    main.add_command(_features.features)
    main.add_command(_train.train)
    main.add_command(_evaluate.evaluate)
    main.add_command(_results.results)
    main.add_command(_models.models)
    main.add_command(_score.score)
    main.add_command(_query.query)
    main.add_command(_report.report)
    main.add_command(_export.export)


_register()
