"""Tiny training configs and the shared test cohort for the training and CV tests."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator
from pathlib import Path

import torch

from pathgen_batch.features import build_encoder, extract_cohort
from pathgen_batch.models.diffusion import DiffusionConfig, SamplerConfig
from pathgen_batch.synth import CohortConfig, build_cohort
from pathgen_batch.synth.cohort import SynthCohort
from pathgen_batch.training.config import (
    CVConfig,
    FusionTrainConfig,
    GeneratorArch,
    GeneratorTrainConfig,
)

COHORT = CohortConfig(
    mode="synthetic", n_patients=48, n_genes=18, n_families=3, slide_px=768, levels=2, folds=2
)
GEN = GeneratorTrainConfig(
    model=GeneratorArch(width=16, depth=1, heads=2, mlp_ratio=2, dropout=0.1, time_dim=16),
    diffusion=DiffusionConfig(num_timesteps=100),
    sampler=SamplerConfig(name="ddim", steps=5, eta=0.0, n_samples=2),
    epochs=3,
    batch_size=16,
    repeats=1,
    val_draws=2,
    patience=2,
    max_tiles=4,
)
FUS = FusionTrainConfig(
    options={"width": 16, "heads": 2, "dropout": 0.25}, n_bins=3, epochs=4, patience=4, max_tiles=4
)


def _fus(model: str) -> FusionTrainConfig:
    opts = dict(FUS.options) if model == "fusion" else {"width": 16}
    return FusionTrainConfig(**{**FUS.__dict__, "model": model, "options": opts})


# the tiny models as the CVConfig JSON that evaluate and train read (--config)
TINY_CV = CVConfig(
    generator=dataclasses.replace(GEN, sampler_steps=(3, 5)),
    fusion=dataclasses.replace(_fus("fusion"), survival_weights=(0.3, 0.7)),
    attention_mil=_fus("attention_mil"),
    omics_mlp=_fus("omics_mlp"),
    wsi_trained=FusionTrainConfig(
        **{
            **FUS.__dict__,
            "options": {**FUS.options, "modality_dropout": 0.5},
            "validate_slide_only": True,
        }
    ),
    val_fraction=0.25,
    alpha=0.25,
)


def build_training_cohort(base: Path) -> tuple[Path, Path]:
    """The shared test cohort and its features (reused when already built in this session)."""
    cohort, feats = base / "training-cohort", base / "training-features"
    build_cohort(cohort, COHORT, workers=1)
    extract_cohort(cohort, feats, build_encoder("stain-texture", device="cpu"))
    return cohort, feats


def render_tiny_cohort(root: Path, n_patients: int, slide_px: int = 512) -> SynthCohort:
    """A synthetic cohort of ``n_patients`` (12 genes, 2 levels, 2 folds) rendered in-process."""
    cfg = CohortConfig(
        mode="synthetic", n_patients=n_patients, n_genes=12, slide_px=slide_px, levels=2, folds=2
    )
    return build_cohort(root, cfg, workers=1)


@contextlib.contextmanager
def threads(n: int) -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def tiny_bundles(root: Path) -> tuple[SynthCohort, Path, Path]:
    """A 16-patient synthetic cohort and a tiny generator and calibrated fusion bundle trained
    on it (stain-texture features, 64 px tiles): (cohort, generator folder, fusion folder).

    Reused when ``root`` already holds them (the fusion bundle is saved last), so test modules
    that pass the same ``root`` (e.g. under the session's base temp) render and train once."""
    import numpy as np

    from pathgen_batch.inference.bundle import save_fusion, save_generator
    from pathgen_batch.training.data import load_training_data
    from pathgen_batch.training.tiny import train_tiny
    from pathgen_batch.training.trainers import calibrate_fusion

    cohort = render_tiny_cohort(root / "cohort", 16)
    if (root / "fus" / "bundle.json").is_file():
        return cohort, root / "gen", root / "fus"
    enc = build_encoder("stain-texture", options={"tile_px": 64, "scales": 2})
    extract_cohort(root / "cohort", root / "features", enc)
    data = load_training_data(root / "cohort", root / "features")
    gen, fus = train_tiny(data, n_train=10)
    va = np.arange(10, 16)
    bags = [data.bags[i] for i in va]
    syn, _ = gen.generate(bags)
    fus = calibrate_fusion(fus, bags, syn, data.expression[va], data.grade[va], alpha=0.2)
    save_generator(gen, root / "gen")
    save_fusion(fus, root / "fus")
    return cohort, root / "gen", root / "fus"
