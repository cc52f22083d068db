"""Entry point ``train_generator``: train the diffusion generator on all patients (one inner
validation split), save its bundle, log losses per epoch, and register it."""

from __future__ import annotations

from pathlib import Path

import _common
import click

from pathgen_batch.cohort.splits import inner_split
from pathgen_batch.inference.bundle import save_generator
from pathgen_batch.registry import register_bundle, tracked_run
from pathgen_batch.training.data import load_training_data
from pathgen_batch.training.trainers import train_generator


@click.command()
@click.option(
    "--cohort",
    "cohort_dir",
    type=click.Path(file_okay=False, exists=True, path_type=Path),
    required=True,
)
@click.option(
    "--features",
    "features_dir",
    type=click.Path(file_okay=False, exists=True, path_type=Path),
    required=True,
)
@click.option("--config", default="", help="CVConfig JSON (its generator part); empty = defaults.")
@click.option("--epochs", type=int, default=0, help="Cap on epochs; 0 = config.")
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    required=True,
    help="Bundle folder to write (replaced if it holds a bundle).",
)
@click.option("--register/--no-register", default=True)
@click.option("--eval-run-id", default="", help="Evaluation run whose cv/* metrics to attach.")
@click.option(
    "--holdout-fold",
    type=int,
    default=-1,
    help="Leave this fold's patients out of training (to score them as unseen); -1 = none.",
)
@click.option("--device", default="cpu")
@click.option("--threads", type=int, default=1, help="torch intra-op CPU threads.")
@click.option("--workspace", default="workspace")
def main(
    cohort_dir: Path,
    features_dir: Path,
    config: str,
    epochs: int,
    out: Path,
    register: bool,
    eval_run_id: str,
    holdout_fold: int,
    device: str,
    threads: int,
    workspace: str,
) -> None:
    _common.set_threads(threads)
    cfg = _common.cv_config(config, epochs, 0)
    data = load_training_data(cohort_dir, features_dir)
    if holdout_fold >= 0:
        data = data.without_fold(holdout_fold)
    store = _common.store(workspace)
    with tracked_run(store, "train_generator") as run:
        run.set_tags(_common.data_tags(cohort_dir, data))
        if holdout_fold >= 0:
            run.log_params({"holdout_fold": holdout_fold})
        tr, va = inner_split(data.strata(), cfg.val_fraction, cfg.seed)
        gen = train_generator(
            data,
            tr,
            va,
            cfg.generator,
            device=device,
            progress=run.progress(),
            name=cfg.generator_name,
        )
        bundle = save_generator(gen, out, overwrite=True)
        _common.log_training(run, "generator", gen, cfg.generator, bundle)
        click.echo(f"generator bundle {bundle}; run {run.run_id}")
        if register:
            reg = register_bundle(store, bundle, run_id=run.run_id, eval_run_id=eval_run_id or None)
            click.echo(reg.summary())


if __name__ == "__main__":
    _common.run_main(main)
