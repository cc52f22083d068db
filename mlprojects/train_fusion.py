"""Entry point ``train_fusion``: train the fusion model on real transcriptomes (all patients,
one inner validation split), calibrate its conformal sets with a generator's synthetic
transcriptomes, save its bundle, log losses per epoch, and register it."""

from __future__ import annotations

from pathlib import Path

import _common
import click

from pathgen_batch.cohort.splits import inner_split
from pathgen_batch.errors import ConfigError
from pathgen_batch.inference.bundle import load_bundle, save_fusion
from pathgen_batch.inference.generator import TrainedGenerator
from pathgen_batch.registry import register_bundle, tracked_run
from pathgen_batch.training.data import load_training_data
from pathgen_batch.training.trainers import train_calibrated_fusion, train_predictor


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
@click.option("--generator", default="", help="Generator bundle for conformal calibration.")
@click.option("--config", default="", help="CVConfig JSON (its fusion part); empty = defaults.")
@click.option("--epochs", type=int, default=0, help="Cap on epochs; 0 = config.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True)
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
    generator: str,
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
    with tracked_run(store, "train_fusion") as run:
        run.set_tags(_common.data_tags(cohort_dir, data))
        if holdout_fold >= 0:
            run.log_params({"holdout_fold": holdout_fold})
        if generator:
            # validate and calibrate on the patients the generator held out
            gen = load_bundle(generator, device=device)
            if not isinstance(gen, TrainedGenerator):
                raise ConfigError(f"--generator: {generator} is a {gen.kind} bundle")
            fus = train_calibrated_fusion(
                data,
                gen,
                cfg.fusion,
                alpha=cfg.alpha,
                method=cfg.conformal_method,
                device=device,
                progress=run.progress(),
                name=cfg.fusion_name,
            )
            run.log_params({"calibrated_with": generator})
        else:
            tr, va = inner_split(data.strata(), cfg.val_fraction, cfg.seed)
            fus = train_predictor(
                data,
                tr,
                va,
                cfg.fusion,
                device=device,
                progress=run.progress(),
                name=cfg.fusion_name,
            )
        bundle = save_fusion(fus, out, overwrite=True)
        _common.log_training(run, "fusion", fus, cfg.fusion, bundle)
        click.echo(f"fusion bundle {bundle}; run {run.run_id}")
        if register:
            reg = register_bundle(store, bundle, run_id=run.run_id, eval_run_id=eval_run_id or None)
            click.echo(reg.summary())


if __name__ == "__main__":
    _common.run_main(main)
