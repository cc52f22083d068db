"""Options shared by several commands, as click decorators, the helpers they need, and the
group class that makes library errors one line.

The MLproject entry points run these same commands, so an option that an entry point passes
must accept what ``mlflow run`` substitutes for an unset parameter: an empty string for a file
or a name (``--config ''``), 0 for "the config's value" (``--epochs 0``), -1 for "none"
(``--holdout-fold -1``).

Tracking: a command that logs to MLflow does so inside an active MLflow run (``mlflow run``
sets ``MLFLOW_RUN_ID``) or with ``--track``; otherwise it writes its files only and opens no
MLflow store or run.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from pathgen_batch.errors import PathgenError

if TYPE_CHECKING:
    from pathgen_batch.registry.tracking import RunLog
    from pathgen_batch.training.loops import EpochLog

Decorator = Callable[[Any], Any]


class OneLineErrors(click.Group):
    """A click group that turns library errors (PathgenError) into one line, exit status 2."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except PathgenError as e:
            click.echo(f"Error: {e}", err=True)
            sys.exit(2)


def apply(*decorators: Decorator) -> Decorator:
    """One decorator from several, applied so that options show in the order given."""

    def wrap(f: Any) -> Any:
        for d in reversed(decorators):
            f = d(f)
        return f

    return wrap


def parse_key_values(values: tuple[str, ...], param_hint: str = "--option") -> dict[str, Any]:
    """``KEY=VALUE`` pairs; one value may hold several pairs separated by spaces (as an
    MLproject parameter does). VALUE is read as JSON (numbers, true/false, lists) else kept as
    a string."""
    out: dict[str, Any] = {}
    for item in (pair for value in values for pair in value.split()):
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise click.BadParameter(f"expected KEY=VALUE, got {item!r}", param_hint=param_hint)
        try:
            out[key.strip()] = json.loads(raw)
        except json.JSONDecodeError:
            out[key.strip()] = raw
    return out


def key_value_option(help: str) -> Decorator:
    """``-o/--option KEY=VALUE``, repeatable; the command receives a dict."""
    return click.option(
        "-o",
        "--option",
        "options",
        multiple=True,
        metavar="KEY=VALUE",
        callback=lambda _ctx, _param, value: parse_key_values(value),
        help=help,
    )


def _blank_is_none(_ctx: click.Context, _param: click.Parameter, value: Any) -> Any:
    return value if value not in ("", None) else None


def _optional_file(_ctx: click.Context, param: click.Parameter, value: str | None) -> Path | None:
    if not value:
        return None
    path = Path(value)
    if not path.is_file():
        raise click.BadParameter(f"{value}: no such file", param_hint=param.opts[-1])
    return path


def optional_text(*names: str, help: str) -> Decorator:
    """A text option where empty means not given (None)."""
    return click.option(*names, default=None, callback=_blank_is_none, help=help)


def optional_file(*names: str, help: str) -> Decorator:
    """A file option where empty means not given (None); a given file must exist."""
    return click.option(*names, default=None, callback=_optional_file, metavar="FILE", help=help)


def existing_dir_option(flag: str, dest: str, help: str) -> Decorator:
    """A required option naming a folder that exists."""
    folder = click.Path(file_okay=False, exists=True, path_type=Path)
    return click.option(flag, dest, required=True, type=folder, help=help)


cohort_option = existing_dir_option(
    "--cohort", "cohort_dir", "Cohort folder (clinical, expression, gene panel, slides)."
)
features_option = existing_dir_option(
    "--features",
    "features_dir",
    "Folder of per-slide feature files (`pathgen-batch features extract`).",
)


def out_option(help: str, dest: str = "out") -> Decorator:
    """``--out``: a folder to write."""
    return click.option(
        "--out", dest, required=True, type=click.Path(file_okay=False, path_type=Path), help=help
    )


def device_option(default: str) -> Decorator:
    return click.option(
        "--device",
        default=default,
        show_default=True,
        metavar="auto|cpu|cuda[:N]" if default == "auto" else "cpu|cuda[:N]",
        help="auto uses CUDA when available." if default == "auto" else "Torch device.",
    )


def count_option(name: str, default: int, minimum: int, help: str) -> Decorator:
    """An integer option of at least ``minimum``, its default shown."""
    return click.option(
        name, type=click.IntRange(min=minimum), default=default, show_default=True, help=help
    )


threads_option = count_option("--threads", 1, 1, "torch intra-op CPU threads.")

cv_config_option = optional_file(
    "--config",
    "config_file",
    help="CVConfig JSON (strict: unknown keys are errors) [default: CVConfig()]. Its "
    "generator and fusion sections configure `train generator` / `train fusion`, its "
    "val_fraction, cal_fraction and seed their three-way split (train / early stopping / "
    "calibration).",
)
epochs_option = click.option(
    "--epochs",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="Sets the epochs of every trained model and caps its patience; 0 = the config's.",
)
seed_option = click.option(
    "--seed",
    type=click.IntRange(min=0),
    default=None,
    help="CVConfig.seed: seed of new folds and of the inner validation split "
    "[default: the config's].",
)
holdout_option = click.option(
    "--holdout-fold",
    type=click.IntRange(min=-1),
    default=-1,
    show_default=True,
    help="Leave this fold's patients out of training (to score them as unseen); -1 = none.",
)
eval_run_option = optional_text(
    "--eval-run-id",
    help="Run holding the cross-validated metrics (cv/*) and evaluation digest.",
)

workspace_option = click.option(
    "--workspace",
    default="workspace",
    show_default=True,
    envvar="PATHGEN_WORKSPACE",
    type=click.Path(file_okay=False),
    help="Workspace of the embedded store (<workspace>/mlflow/mlflow.db).",
)
tracking_uri_option = click.option(
    "--tracking-uri",
    default=None,
    envvar="MLFLOW_TRACKING_URI",
    help="Tracking store (sqlite:///..., http://host:port); default: the workspace store.",
)


def tracking_on(track: bool) -> bool:
    """Whether to log: ``--track``, or a run launched by ``mlflow run`` (MLFLOW_RUN_ID)."""
    from pathgen_batch.registry.tracking import launched_run_id

    return track or launched_run_id() is not None


@dataclass(frozen=True)
class Tracking:
    """Whether and where a command logs to MLflow (``--track``, ``--workspace``,
    ``--tracking-uri``)."""

    track: bool = False
    workspace: str = "workspace"
    tracking_uri: str | None = None

    @contextlib.contextmanager
    def run(self, step: str) -> Iterator[RunLog | None]:
        """The run to log ``step`` into, or None when tracking is off (MLflow not used)."""
        if not tracking_on(self.track):
            yield None
            return
        from pathgen_batch.registry import RegistryConfig, open_store, tracked_run

        config = RegistryConfig(workspace=self.workspace, tracking_uri=self.tracking_uri or None)
        with tracked_run(open_store(config), step) as run:
            yield run


def packed(cls: type, arg: str, *decorators: Decorator) -> Decorator:
    """Options whose values reach the command as one ``cls`` instance in ``arg``; the option
    destinations are the field names of the dataclass ``cls``."""
    names = [f.name for f in dataclasses.fields(cls)]

    def wrap(f: Any) -> Any:
        @functools.wraps(f)
        def command(*args: Any, **kwargs: Any) -> Any:
            values = {n: kwargs.pop(n) for n in names}
            return f(*args, **{arg: cls(**values)}, **kwargs)

        return apply(*decorators)(command)

    return wrap


tracking_options = packed(
    Tracking,
    "tracking",
    click.option(
        "--track",
        is_flag=True,
        help="Log to MLflow (on by itself inside `mlflow run`, which sets MLFLOW_RUN_ID).",
    ),
    workspace_option,
    tracking_uri_option,
)
"""``--track``, ``--workspace``, ``--tracking-uri``; the command receives ``tracking``."""


def set_threads(threads: int) -> None:
    """Intra-op threads of torch (small models gain nothing from more on a shared CPU)."""
    import torch

    torch.set_num_threads(threads)


def epoch_line(e: EpochLog) -> None:
    """Progress: one line per epoch on stderr."""
    click.echo(e.line(), err=True)


def progress(run: RunLog | None, quiet: bool = False) -> Callable[[EpochLog], None] | None:
    """Per-epoch progress: a line on stderr (unless ``quiet``) and, in a run, loss metrics."""
    calls = [] if quiet else [epoch_line]
    if run is not None:
        calls.append(run.progress())
    if not calls:
        return None

    def each(e: EpochLog) -> None:
        for call in calls:
            call(e)

    return each


exclude_geojson_option = click.option(
    "--exclude-geojson",
    default=None,
    metavar="FOLDER",
    help="Folder or s3:// prefix of <slide_id>.geojson annotations: their polygons (level-0 px) "
    "are not tiled.",
)
