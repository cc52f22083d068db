"""The ``pathgen-batch`` command line: a thin layer over the library.

Each command group lives in its own module and only parses options, builds a config and calls
the library. Errors a user can cause (:class:`~pathgen_batch.errors.PathgenError`) are printed
as one line and exit with status 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import importlib
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


# the command groups, in --help order: module pathgen_batch.cli.<name> defines group <name>
COMMANDS = (
    "slides",
    "synth",
    "cohort",
    "features",
    "train",
    "evaluate",
    "results",
    "models",
    "score",
    "query",
    "report",
    "export",
)


def _register() -> None:
    for name in COMMANDS:
        main.add_command(getattr(importlib.import_module(f"pathgen_batch.cli.{name}"), name))


_register()
