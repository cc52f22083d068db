"""``pathgen-batch train``: train a generator or a fusion model on a cohort, save a bundle."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
import numpy as np
import torch

from pathgen_batch.config import load_json, replace
from pathgen_batch.errors import DataError
from pathgen_batch.training.config import FUSION_MODELS, FusionTrainConfig, GeneratorTrainConfig
from pathgen_batch.training.loops import EpochLog

if TYPE_CHECKING:
    from pathgen_batch.training.data import TrainingData


def epoch_line(e: EpochLog) -> None:
    """Progress: one line per epoch on stderr."""
    click.echo(e.line(), err=True)


def set_threads(threads: int) -> None:
    """Intra-op threads of torch (small models gain nothing from more on a shared CPU)."""
    torch.set_num_threads(threads)


def data_options(f: Any) -> Any:
    """Options shared by the training and evaluation commands."""
    opts = [
        click.option(
            "--cohort",
            "cohort_dir",
            required=True,
            type=click.Path(file_okay=False, exists=True, path_type=Path),
            help="Cohort folder (clinical, expression, gene panel).",
        ),
        click.option(
            "--features",
            "features_dir",
            required=True,
            type=click.Path(file_okay=False, exists=True, path_type=Path),
            help="Folder of per-slide feature files (`pathgen-batch features extract`).",
        ),
        click.option(
            "--out",
            "out",
            required=True,
            type=click.Path(file_okay=False, path_type=Path),
            help="Output folder.",
        ),
        click.option(
            "--config",
            "config_file",
            type=click.Path(dir_okay=False, exists=True, path_type=Path),
            default=None,
            help="Training config as JSON (strict: unknown keys are errors).",
        ),
        click.option("--epochs", type=click.IntRange(min=1), default=None, help="Max epochs."),
        click.option("--seed", type=click.IntRange(min=0), default=None, help="Random seed."),
        click.option("--device", default="cpu", show_default=True, help="cpu or cuda[:N]."),
        click.option(
            "--threads",
            type=click.IntRange(min=1),
            default=1,
            show_default=True,
            help="torch intra-op CPU threads.",
        ),
    ]
    for opt in reversed(opts):
        f = opt(f)
    return f


def _overrides(epochs: int | None, seed: int | None) -> dict[str, Any]:
    return {k: v for k, v in (("epochs", epochs), ("seed", seed)) if v is not None}


def _inner(data: TrainingData, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    from pathgen_batch.cohort.splits import inner_split

    return inner_split(data.strata(), val_fraction, seed)


@click.group()
def train() -> None:
    """Train on every patient of a cohort (with an inner validation split); save a bundle."""


@train.command("generator")
@data_options
@click.option("--name", default="pathgen-generator", show_default=True, help="Registry name.")
@click.option("--overwrite", is_flag=True, help="Replace an existing bundle at --out.")
def generator_cmd(
    cohort_dir: Path,
    features_dir: Path,
    out: Path,
    config_file: Path | None,
    epochs: int | None,
    seed: int | None,
    device: str,
    threads: int,
    name: str,
    overwrite: bool,
) -> None:
    """Train the conditional diffusion generator and save it as a bundle at --out."""
    from pathgen_batch.inference.bundle import save_generator
    from pathgen_batch.training.data import load_training_data
    from pathgen_batch.training.trainers import train_generator

    set_threads(threads)
    cfg = load_json(GeneratorTrainConfig, config_file) if config_file else GeneratorTrainConfig()
    cfg = replace(cfg, **_overrides(epochs, seed))
    data = load_training_data(cohort_dir, features_dir)
    tr, va = _inner(data, cfg.val_fraction, cfg.seed)
    t0 = time.perf_counter()
    gen = train_generator(data, tr, va, cfg, device=device, progress=epoch_line, name=name)
    path = save_generator(gen, out, overwrite=overwrite)
    h = gen.provenance["history"]
    click.echo(
        f"generator bundle {path}: {len(tr)} training / {len(va)} validation patients, best "
        f"epoch {h['best_epoch']} of {h['epochs_run']} (val loss {h['best_val_loss']:.4f}), "
        f"{time.perf_counter() - t0:.1f}s"
    )


@train.command("fusion")
@data_options
@click.option(
    "--generator",
    "generator_dir",
    required=True,
    type=click.Path(file_okay=False, exists=True, path_type=Path),
    help="Generator bundle: its synthetic transcriptomes calibrate the conformal states.",
)
@click.option(
    "--model",
    type=click.Choice(FUSION_MODELS),
    default=None,
    help="Model to train [default: the config's, fusion].",
)
@click.option("--alpha", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=0.1)
@click.option(
    "--conformal-method", type=click.Choice(["aps", "lac"]), default="lac", show_default=True
)
@click.option("--name", default="pathgen-fusion", show_default=True, help="Registry name.")
@click.option("--overwrite", is_flag=True, help="Replace an existing bundle at --out.")
def fusion_cmd(
    cohort_dir: Path,
    features_dir: Path,
    out: Path,
    config_file: Path | None,
    epochs: int | None,
    seed: int | None,
    device: str,
    threads: int,
    generator_dir: Path,
    model: str | None,
    alpha: float,
    conformal_method: str,
    name: str,
    overwrite: bool,
) -> None:
    """Train a fusion model on real transcriptomes, calibrate it on synthetic ones, save it.

    Early stopping and conformal calibration use the patients the generator held out.
    """
    from pathgen_batch.inference.bundle import load_bundle, save_fusion
    from pathgen_batch.inference.generator import TrainedGenerator
    from pathgen_batch.training.data import load_training_data
    from pathgen_batch.training.trainers import train_calibrated_fusion

    set_threads(threads)
    cfg = load_json(FusionTrainConfig, config_file) if config_file else FusionTrainConfig()
    over = _overrides(epochs, seed)
    if model is not None:
        over["model"] = model
        if model != cfg.model and config_file is None:
            over["options"] = FusionTrainConfig().options
    cfg = replace(cfg, **over)
    gen = load_bundle(generator_dir, device=device)
    if not isinstance(gen, TrainedGenerator):
        raise DataError(f"{generator_dir}: expected a generator bundle, got a {gen.kind} bundle")
    data = load_training_data(cohort_dir, features_dir)
    t0 = time.perf_counter()
    fus = train_calibrated_fusion(
        data,
        gen,
        cfg,
        alpha=alpha,
        method="lac" if conformal_method == "lac" else "aps",
        device=device,
        progress=epoch_line,
        name=name,
    )
    n_val = len(gen.provenance.get("val_patients", []))
    path = save_fusion(fus, out, overwrite=overwrite)
    h = fus.provenance["history"]
    q = fus.grade_conformal.qhat if fus.grade_conformal else float("nan")
    click.echo(
        f"{cfg.model} bundle {path}: {data.n_patients - n_val} training / {n_val} validation "
        f"patients, best "
        f"epoch {h['best_epoch']} of {h['epochs_run']} (val loss {h['best_val_loss']:.4f}), "
        f"conformal qhat {q:.3f} at alpha {alpha:g}, {time.perf_counter() - t0:.1f}s"
    )
