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

# the commands in --help order, each defined by the module of pathgen_batch.cli of the same
# name; a module is imported only when its command runs (or help lists them), so that `query`
# or `models` does not pay for torch, MLflow or Ray at start-up
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


class LazyCommands(OneLineErrors):
    """The root group: each command's module is imported the first time the command is asked
    for (``get_command``), not when the CLI starts."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return [*COMMANDS, *sorted(set(self.commands) - set(COMMANDS))]  # in --help order

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.commands and cmd_name in COMMANDS:
            module = importlib.import_module(f"pathgen_batch.cli.{cmd_name}")
            self.add_command(getattr(module, cmd_name), cmd_name)
        return self.commands.get(cmd_name)


@click.group(cls=LazyCommands, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="pathgen-batch")
@click.option("-v", "--verbose", count=True, help="More log output (-v info, -vv debug).")
def main(verbose: int) -> None:
    """Synthetic transcriptomes and grade/survival predictions from whole-slide images."""
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
