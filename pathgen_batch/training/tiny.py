"""Tiny models that train in seconds on a CPU: for checking the pipeline around the models
(the tests, the scorer's benchmarks), where what the models predict does not matter.

::

    gen, fus = train_tiny(load_training_data("cohort/", "features/"), n_train=10)
"""

from __future__ import annotations

import numpy as np

from pathgen_batch.inference.fusion import TrainedFusion
from pathgen_batch.inference.generator import TrainedGenerator
from pathgen_batch.models.diffusion import DiffusionConfig, SamplerConfig
from pathgen_batch.models.generator import GeneratorArch
from pathgen_batch.training.config import FusionTrainConfig, GeneratorTrainConfig
from pathgen_batch.training.data import TrainingData
from pathgen_batch.training.trainers import train_generator, train_predictor


def tiny_configs(
    width: int = 16, num_timesteps: int = 50, steps: int = 5, n_samples: int = 2
) -> tuple[GeneratorTrainConfig, FusionTrainConfig]:
    """A one-block generator and a fusion model of ``width``, two epochs each (the
    generator's DDIM sampler takes ``steps`` of ``num_timesteps``, ``n_samples`` draws)."""
    gen = GeneratorTrainConfig(
        model=GeneratorArch(width=width, depth=1, heads=2, time_dim=width),
        diffusion=DiffusionConfig(num_timesteps=num_timesteps),
        sampler=SamplerConfig(name="ddim", steps=steps, n_samples=n_samples),
        epochs=2,
        repeats=1,
        val_draws=1,
    )
    fus = FusionTrainConfig(options={"width": width, "dropout": 0.0}, n_bins=2, epochs=2)
    return gen, fus


def train_tiny(
    data: TrainingData,
    n_train: int,
    configs: tuple[GeneratorTrainConfig, FusionTrainConfig] | None = None,
) -> tuple[TrainedGenerator, TrainedFusion]:
    """The generator and fusion model of ``configs`` (default: :func:`tiny_configs`) trained on
    the first ``n_train`` patients of ``data`` and early-stopped on the rest."""
    tr, va = np.arange(n_train), np.arange(n_train, data.n_patients)
    gen_cfg, fus_cfg = configs or tiny_configs()
    return train_generator(data, tr, va, gen_cfg), train_predictor(data, tr, va, fus_cfg)
