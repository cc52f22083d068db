"""The models to register: trained on every patient of a cohort with one three-way split
(train / early-stop / calibrate), as the CV folds are inside each training part."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Unpack

import numpy as np

from pathgen_batch.cohort.splits import three_way_split
from pathgen_batch.inference.bundle import save_fusion, save_generator
from pathgen_batch.inference.fusion import TrainedFusion
from pathgen_batch.inference.generator import TrainedGenerator
from pathgen_batch.training.config import CVConfig
from pathgen_batch.training.cv import RunOptions
from pathgen_batch.training.data import TrainingData, check_training_part
from pathgen_batch.training.loops import Progress
from pathgen_batch.training.trainers import train_calibrated_fusion, train_generator

log = logging.getLogger(__name__)


def train_final(
    data: TrainingData,
    cfg: CVConfig | None = None,
    out_dir: str | Path | None = None,
    *,
    overwrite: bool = False,
    **run: Unpack[RunOptions],
) -> tuple[TrainedGenerator, TrainedFusion]:
    """Train the models to register on all patients (one three-way split).

    The generator and the fusion model (trained on real transcriptomes) train on the same
    patients and early-stop on the same validation patients; the fusion model's conformal
    states are calibrated with synthetic transcriptomes on the calibration patients, which
    neither model trained or early-stopped on. With ``out_dir`` the bundles are saved to
    ``out_dir/generator`` and ``out_dir/fusion``.
    """
    cfg = cfg or CVConfig()
    everyone = np.arange(data.n_patients)
    check_training_part(data, everyone, "all patients")
    device, progress = run.get("device", "cpu"), run.get("progress")
    say = run.get("echo") or (lambda s: log.info("%s", s))
    t0 = time.perf_counter()
    gen, _ = train_final_generator(
        data, cfg, device=device, progress=progress, n_bins=cfg.fusion.n_bins
    )
    say(f"generator trained in {time.perf_counter() - t0:.1f}s")
    t1 = time.perf_counter()
    fus = train_calibrated_fusion(
        data,
        gen,
        cfg.fusion,
        alpha=cfg.alpha,
        method=cfg.conformal_method,
        device=device,
        progress=progress,
        name=cfg.fusion_name,
    )
    say(f"fusion trained and calibrated in {time.perf_counter() - t1:.1f}s")
    if out_dir is not None:
        save_generator(gen, Path(out_dir) / "generator", overwrite=overwrite)
        save_fusion(fus, Path(out_dir) / "fusion", overwrite=overwrite)
    return gen, fus


def train_final_generator(
    data: TrainingData,
    cfg: CVConfig,
    *,
    device: str = "cpu",
    progress: Progress | None = None,
    name: str | None = None,
    n_bins: int | None = None,
) -> tuple[TrainedGenerator, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """The generator to register: one three-way split of all patients (``cfg``'s
    val_fraction, cal_fraction and seed); it trains on the first part, early-stops on the
    second and records the third as its calibration patients. With ``n_bins`` the training
    part is first checked to hold events enough for that many time bins (the fusion model
    trains on it too). Returns the generator and the split (train, val, cal)."""
    tr, va, cal = three_way_split(data.strata(), cfg.val_fraction, cfg.cal_fraction, cfg.seed)
    if n_bins is not None:
        check_training_part(data, tr, "inner training part", n_bins)
    gen = train_generator(
        data,
        tr,
        va,
        cfg.generator,
        device=device,
        progress=progress,
        name=name or cfg.generator_name,
        cal_idx=cal,
    )
    return gen, (tr, va, cal)


__all__ = ["train_final", "train_final_generator"]
