"""Training, cross-validated evaluation and model bundles.

::

    from pathgen_batch.training import CVConfig, load_training_data, run_cv, train_final

    data = load_training_data("cohort/", "features/")      # checked before any training
    result = run_cv(data, CVConfig(), "cv/")                # patient-level k-fold
    print(result.table())
    gen, fus = train_final(data, CVConfig(), "models/")     # bundles models/generator, /fusion

    from pathgen_batch.inference import load_bundle
    gen = load_bundle("models/generator")                   # TrainedGenerator
    mean, std = gen.generate(bags)                          # (B, G) in expression units
    fus = load_bundle("models/fusion")                      # TrainedFusion
    pred = fus.predict(bags, mean)                          # probs, hazards, risk, sets, ...

Names are imported on first use, so that importing a submodule (``training.config`` from the
command line) does not load the evaluation stack.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pathgen_batch.training.config import (
        CVConfig,
        FusionTrainConfig,
        GeneratorArch,
        GeneratorTrainConfig,
    )
    from pathgen_batch.training.cv import plan_folds, run_cv
    from pathgen_batch.training.cv_result import CVResult, FoldResult
    from pathgen_batch.training.data import TrainingData, assemble, load_training_data
    from pathgen_batch.training.final import train_final
    from pathgen_batch.training.loops import EpochLog, FitHistory
    from pathgen_batch.training.trainers import (
        calibrate_fusion,
        train_generator,
        train_predictor,
    )

_WHERE = {
    "CVConfig": "config",
    "FusionTrainConfig": "config",
    "GeneratorArch": "config",
    "GeneratorTrainConfig": "config",
    "CVResult": "cv_result",
    "FoldResult": "cv_result",
    "plan_folds": "cv",
    "run_cv": "cv",
    "train_final": "cv",
    "TrainingData": "data",
    "assemble": "data",
    "load_training_data": "data",
    "EpochLog": "loops",
    "FitHistory": "loops",
    "calibrate_fusion": "trainers",
    "train_generator": "trainers",
    "train_predictor": "trainers",
}


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)


__all__ = [
    "CVConfig",
    "CVResult",
    "EpochLog",
    "FitHistory",
    "FoldResult",
    "FusionTrainConfig",
    "GeneratorArch",
    "GeneratorTrainConfig",
    "TrainingData",
    "assemble",
    "calibrate_fusion",
    "load_training_data",
    "plan_folds",
    "run_cv",
    "train_final",
    "train_generator",
    "train_predictor",
]
