"""``pathgen-batch train``: train a generator or a fusion model on a cohort, save a bundle.

Both read the CVConfig JSON that ``evaluate`` reads (``--config``): its ``generator`` or
``fusion`` section configures the model, its ``val_fraction`` and ``seed`` the inner
validation split. The MLflow entry points ``train_generator`` and ``train_fusion`` run these
commands; inside ``mlflow run`` (or with ``--track``) they log to MLflow and register the bundle.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from pathgen_batch.cli.cohort import cohort_settings, settings_options
from pathgen_batch.cli.options import (
    apply,
    cohort_option,
    cv_config_option,
    device_option,
    epochs_option,
    eval_run_option,
    features_option,
    holdout_option,
    optional_text,
    out_option,
    progress,
    seed_option,
    set_threads,
    threads_option,
    tracked,
    tracking_options,
)
from pathgen_batch.errors import DataError
from pathgen_batch.training.config import FUSION_MODELS

if TYPE_CHECKING:
    from pathgen_batch.registry.tracking import RunLog
    from pathgen_batch.training.data import TrainingData

training_options = apply(
    cohort_option,
    settings_options,
    features_option,
    out_option("Bundle folder to write."),
    cv_config_option,
    epochs_option,
    holdout_option,
    device_option("cpu"),
    threads_option,
    click.option("--overwrite", is_flag=True, help="Replace an existing bundle at --out."),
    optional_text("--name", help="Registry name [default: the config's generator/fusion_name]."),
    eval_run_option,
    click.option(
        "--no-register",
        "no_register",
        is_flag=True,
        help="When tracking, log the run but do not register the bundle.",
    ),
    tracking_options,
)


def _data(cohort_dir: Path, features_dir: Path, holdout_fold: int) -> TrainingData:
    from pathgen_batch.training.data import load_training_data

    data = load_training_data(cohort_dir, features_dir, settings=cohort_settings())
    return data.without_fold(holdout_fold) if holdout_fold >= 0 else data


def _log(
    run: RunLog,
    kind: str,
    model: Any,
    cfg: Any,
    bundle: str | Path,
    data: TrainingData,
    cohort_dir: Path,
    params: dict[str, Any],
    eval_run_id: str | None,
    register: bool,
) -> None:
    from pathgen_batch.registry.step_logs import data_tags, log_trained, register_trained

    run.set_tags(data_tags(cohort_dir, data))
    if params:
        run.log_params(params)
    log_trained(run, kind, model, cfg, bundle)
    click.echo(f"{kind} run {run.run_id}")
    if register:
        click.echo(register_trained(run, bundle, eval_run_id).summary())


@click.group()
def train() -> None:
    """Train on every patient of a cohort (with an inner validation split); save a bundle."""


@train.command("generator")
@training_options
@seed_option
def generator_cmd(
    cohort_dir: Path,
    features_dir: Path,
    out: Path,
    config_file: Path | None,
    epochs: int,
    holdout_fold: int,
    device: str,
    threads: int,
    overwrite: bool,
    name: str | None,
    eval_run_id: str | None,
    no_register: bool,
    track: bool,
    workspace: str,
    tracking_uri: str | None,
    seed: int | None,
) -> None:
    """Train the conditional diffusion generator and save it as a bundle at --out."""
    from pathgen_batch.cohort.splits import inner_split
    from pathgen_batch.inference.bundle import save_generator
    from pathgen_batch.training.overrides import cv_config
    from pathgen_batch.training.trainers import train_generator

    set_threads(threads)
    cfg = cv_config(config_file, epochs=epochs or None, seed=seed)
    data = _data(cohort_dir, features_dir, holdout_fold)
    tr, va = inner_split(data.strata(), cfg.val_fraction, cfg.seed)
    with tracked("train_generator", track, workspace, tracking_uri) as run:
        t0 = time.perf_counter()
        gen = train_generator(
            data,
            tr,
            va,
            cfg.generator,
            device=device,
            progress=progress(run),
            name=name or cfg.generator_name,
        )
        path = save_generator(gen, out, overwrite=overwrite)
        h = gen.provenance["history"]
        click.echo(
            f"generator bundle {path}: {len(tr)} training / {len(va)} validation patients, best "
            f"epoch {h['best_epoch']} of {h['epochs_run']} (val loss {h['best_val_loss']:.4f}), "
            f"{time.perf_counter() - t0:.1f}s"
        )
        if run is not None:
            params = {"holdout_fold": holdout_fold} if holdout_fold >= 0 else {}
            _log(
                run,
                "generator",
                gen,
                cfg.generator,
                path,
                data,
                cohort_dir,
                params,
                eval_run_id,
                not no_register,
            )


@train.command("fusion")
@training_options
@click.option(
    "--generator",
    "generator_dir",
    required=True,
    type=click.Path(file_okay=False, exists=True, path_type=Path),
    help="Generator bundle trained on the same data: its held-out patients are the validation "
    "set and its synthetic transcriptomes calibrate the conformal sets.",
)
@click.option(
    "--model",
    type=click.Choice(FUSION_MODELS),
    default="fusion",
    show_default=True,
    help="Model to train; its section of the CVConfig configures it.",
)
@click.option(
    "--alpha",
    type=click.FloatRange(0, 1, min_open=True, max_open=True),
    default=None,
    help="Conformal miscoverage [default: the config's alpha].",
)
@click.option(
    "--conformal-method",
    type=click.Choice(["aps", "lac"]),
    default=None,
    help="Grade-set score [default: the config's conformal_method].",
)
def fusion_cmd(
    cohort_dir: Path,
    features_dir: Path,
    out: Path,
    config_file: Path | None,
    epochs: int,
    holdout_fold: int,
    device: str,
    threads: int,
    overwrite: bool,
    name: str | None,
    eval_run_id: str | None,
    no_register: bool,
    track: bool,
    workspace: str,
    tracking_uri: str | None,
    generator_dir: Path,
    model: str,
    alpha: float | None,
    conformal_method: str | None,
) -> None:
    """Train a fusion model on real transcriptomes, calibrate it on synthetic ones, save it.

    Early stopping and conformal calibration use the patients the generator held out.
    """
    from pathgen_batch.inference.bundle import load_bundle, save_fusion
    from pathgen_batch.inference.generator import TrainedGenerator
    from pathgen_batch.training.overrides import cv_config
    from pathgen_batch.training.trainers import train_calibrated_fusion

    set_threads(threads)
    cfg = cv_config(config_file, epochs=epochs or None)
    section = getattr(cfg, model)
    alpha = cfg.alpha if alpha is None else alpha
    gen = load_bundle(generator_dir, device=device)
    if not isinstance(gen, TrainedGenerator):
        raise DataError(f"{generator_dir}: expected a generator bundle, got a {gen.kind} bundle")
    data = _data(cohort_dir, features_dir, holdout_fold)
    with tracked("train_fusion", track, workspace, tracking_uri) as run:
        t0 = time.perf_counter()
        fus = train_calibrated_fusion(
            data,
            gen,
            section,
            alpha=alpha,
            method="aps" if (conformal_method or cfg.conformal_method) == "aps" else "lac",
            device=device,
            progress=progress(run),
            name=name or cfg.fusion_name,
        )
        n_val = len(gen.provenance.get("val_patients", []))
        path = save_fusion(fus, out, overwrite=overwrite)
        h = fus.provenance["history"]
        q = fus.grade_conformal.qhat if fus.grade_conformal else float("nan")
        click.echo(
            f"{section.model} bundle {path}: {data.n_patients - n_val} training / {n_val} "
            f"validation patients, best epoch {h['best_epoch']} of {h['epochs_run']} (val loss "
            f"{h['best_val_loss']:.4f}), conformal qhat {q:.3f} at alpha {alpha:g}, "
            f"{time.perf_counter() - t0:.1f}s"
        )
        if run is not None:
            params: dict[str, Any] = {"calibrated_with": str(generator_dir)}
            if holdout_fold >= 0:
                params["holdout_fold"] = holdout_fold
            _log(
                run,
                "fusion",
                fus,
                section,
                path,
                data,
                cohort_dir,
                params,
                eval_run_id,
                not no_register,
            )
