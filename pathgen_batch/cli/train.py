"""``pathgen-batch train``: train a generator or a fusion model on a cohort, save a bundle.

Both read the CVConfig JSON that ``evaluate`` reads (``--config``): its ``generator`` or
``fusion`` section configures the model, its ``val_fraction``, ``cal_fraction`` and ``seed``
the three-way split (train / early stopping / conformal calibration) that the generator
records and the fusion model reuses. The MLflow entry points ``train_generator`` and
``train_fusion`` run these commands; inside ``mlflow run`` (or with ``--track``) they log to
MLflow and register the bundle.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from pathgen_batch.cli.cohort import cohort_settings, settings_options
from pathgen_batch.cli.options import (
    Tracking,
    cohort_option,
    cv_config_option,
    device_option,
    epochs_option,
    eval_run_option,
    features_option,
    holdout_option,
    optional_text,
    out_option,
    packed,
    progress,
    seed_option,
    set_threads,
    threads_option,
    tracking_options,
)
from pathgen_batch.errors import DataError
from pathgen_batch.training.config import FUSION_MODELS

if TYPE_CHECKING:
    from pathgen_batch.registry.tracking import RunLog
    from pathgen_batch.training.config import CVConfig
    from pathgen_batch.training.data import TrainingData


@dataclass(frozen=True)
class TrainingInputs:
    """What both train commands read and where they write (their shared options)."""

    cohort_dir: Path
    features_dir: Path
    out: Path
    config_file: Path | None
    epochs: int
    holdout_fold: int
    device: str
    threads: int
    overwrite: bool
    name: str | None
    eval_run_id: str | None
    no_register: bool

    def config(self, seed: int | None = None) -> CVConfig:
        """The CVConfig with --epochs (and --seed) applied; sets torch's threads."""
        from pathgen_batch.training.overrides import cv_config

        set_threads(self.threads)
        return cv_config(self.config_file, epochs=self.epochs or None, seed=seed)

    def data(self) -> TrainingData:
        """The cohort's training data, less the --holdout-fold patients."""
        from pathgen_batch.training.data import load_training_data

        data = load_training_data(self.cohort_dir, self.features_dir, settings=cohort_settings())
        return data.without_fold(self.holdout_fold) if self.holdout_fold >= 0 else data

    def log(
        self,
        run: RunLog,
        kind: str,
        model: Any,
        cfg: Any,
        data: TrainingData,
        params: dict[str, Any],
    ) -> None:
        """Log a trained model into ``run`` and register its bundle (unless --no-register)."""
        from pathgen_batch.registry.step_logs import data_tags, log_trained, register_trained

        run.set_tags(data_tags(self.cohort_dir, data))
        if self.holdout_fold >= 0:
            params = {**params, "holdout_fold": self.holdout_fold}
        if params:
            run.log_params(params)
        log_trained(run, kind, model, cfg, self.out)
        click.echo(f"{kind} run {run.run_id}")
        if not self.no_register:
            click.echo(register_trained(run, self.out, self.eval_run_id).summary())


training_options = packed(
    TrainingInputs,
    "inputs",
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
)


@click.group()
def train() -> None:
    """Train on every patient of a cohort (with an inner validation split); save a bundle."""


@train.command("generator")
@training_options
@seed_option
@tracking_options
def generator_cmd(inputs: TrainingInputs, seed: int | None, tracking: Tracking) -> None:
    """Train the conditional diffusion generator and save it as a bundle at --out."""
    from pathgen_batch.inference.bundle import save_generator
    from pathgen_batch.training.final import train_final_generator

    cfg = inputs.config(seed)
    data = inputs.data()
    with tracking.run("train_generator") as run:
        t0 = time.perf_counter()
        gen, (_, _, cal) = train_final_generator(
            data,
            cfg,
            device=inputs.device,
            progress=progress(run),
            name=inputs.name,
        )
        path = save_generator(gen, inputs.out, overwrite=inputs.overwrite)
        h = gen.provenance["history"]
        pv = gen.provenance
        click.echo(
            f"generator bundle {path}: {pv['n_train']} training / {pv['n_val']} early-stopping / "
            f"{len(cal)} calibration patients{_left_out(pv)}, best epoch {h['best_epoch']} of "
            f"{h['epochs_run']} (val {h['select_on']} {h['best_val_score']:.4f}, val loss "
            f"{h['best_val_loss']:.4f}), {time.perf_counter() - t0:.1f}s"
        )
        if run is not None:
            inputs.log(run, "generator", gen, cfg.generator, data, {})


@train.command("fusion")
@training_options
@tracking_options
@click.option(
    "--generator",
    "generator_dir",
    required=True,
    type=click.Path(file_okay=False, exists=True, path_type=Path),
    help="Generator bundle trained on the same data: its early-stopping patients are the "
    "validation set, and its calibration patients, with its synthetic transcriptomes, "
    "calibrate the conformal sets.",
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
    inputs: TrainingInputs,
    tracking: Tracking,
    generator_dir: Path,
    model: str,
    alpha: float | None,
    conformal_method: str | None,
) -> None:
    """Train a fusion model on real transcriptomes, calibrate it on synthetic ones, save it.

    Early stopping uses the generator's early-stopping patients, conformal calibration its
    calibration patients (two disjoint sets the generator held out of training).
    """
    from pathgen_batch.inference.bundle import load_bundle, save_fusion
    from pathgen_batch.inference.generator import TrainedGenerator
    from pathgen_batch.training.trainers import train_calibrated_fusion

    cfg = inputs.config()
    section = getattr(cfg, model)
    alpha = cfg.alpha if alpha is None else alpha
    gen = load_bundle(generator_dir, device=inputs.device)
    if not isinstance(gen, TrainedGenerator):
        raise DataError(f"{generator_dir}: expected a generator bundle, got a {gen.kind} bundle")
    data = inputs.data()
    with tracking.run("train_fusion") as run:
        t0 = time.perf_counter()
        fus = train_calibrated_fusion(
            data,
            gen,
            section,
            alpha=alpha,
            method="aps" if (conformal_method or cfg.conformal_method) == "aps" else "lac",
            device=inputs.device,
            progress=progress(run),
            name=inputs.name or cfg.fusion_name,
        )
        pv = fus.provenance
        n_cal = len(gen.provenance.get("cal_patients", []))
        path = save_fusion(fus, inputs.out, overwrite=inputs.overwrite)
        h = fus.provenance["history"]
        q = fus.grade_conformal.qhat if fus.grade_conformal else float("nan")
        click.echo(
            f"{section.model} bundle {path}: {pv['n_train']} training / {pv['n_val']} "
            f"early-stopping / {n_cal} calibration patients{_left_out(pv)}, best epoch "
            f"{h['best_epoch']} of {h['epochs_run']} (val {h['select_on']} "
            f"{h['best_val_score']:.4f}, val loss {h['best_val_loss']:.4f}), conformal qhat "
            f"{q:.3f} at alpha {alpha:g}, {time.perf_counter() - t0:.1f}s"
        )
        if run is not None:
            inputs.log(run, "fusion", fus, section, data, {"calibrated_with": str(generator_dir)})


def _left_out(provenance: dict) -> str:
    """``" (N more left out: no expression)"`` when a model left N patients out for want of
    expression, else nothing."""
    n = int(provenance.get("n_left_out_without_expression", 0))
    return f" ({n} more left out: no expression)" if n else ""
