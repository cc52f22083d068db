"""Entry point ``register``: register a bundle folder, optionally move it to Staging."""

from __future__ import annotations

from pathlib import Path

import _common
import click

from pathgen_batch.registry import promote, register_bundle, tracked_run


@click.command()
@click.option(
    "--bundle", type=click.Path(file_okay=False, exists=True, path_type=Path), required=True
)
@click.option("--name", default="", help="Registered model name; empty = the bundle's.")
@click.option("--train-run-id", default="", help="Training run to log the model into.")
@click.option("--eval-run-id", default="", help="Evaluation run whose cv/* metrics to attach.")
@click.option("--stage", type=click.Choice(["", "staging"]), default="")
@click.option("--workspace", default="workspace")
def main(
    bundle: Path, name: str, train_run_id: str, eval_run_id: str, stage: str, workspace: str
) -> None:
    store = _common.store(workspace)
    with tracked_run(store, "register") as run:
        reg = register_bundle(
            store,
            bundle,
            name=name or None,
            run_id=train_run_id or run.run_id,
            eval_run_id=eval_run_id or None,
        )
        run.set_tags({"pathgen.registered_version": f"{reg.name}/{reg.version}"})
        click.echo(reg.summary())
        if stage:
            click.echo(promote(store, reg.name, reg.version, stage).summary())


if __name__ == "__main__":
    _common.run_main(main)
