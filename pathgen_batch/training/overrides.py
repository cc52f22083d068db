"""The one rule by which the command line (and so every MLflow entry point) adjusts a CVConfig.

``evaluate``, ``train generator`` and ``train fusion`` all read a CVConfig JSON file (or take
``CVConfig()``); ``epochs`` sets every trained model's epochs and caps its patience at that,
``folds`` draws new stratified folds, ``seed`` sets the seed of the folds and of the inner
validation split.
"""

from __future__ import annotations

from pathlib import Path

from pathgen_batch.config import load_json, replace, to_dict
from pathgen_batch.training.config import CVConfig

TRAINED = ("generator", "fusion", "attention_mil", "omics_mlp", "wsi_trained")


def cv_config(
    path: str | Path | None = None,
    *,
    epochs: int | None = None,
    folds: int | None = None,
    seed: int | None = None,
) -> CVConfig:
    """CVConfig from ``path`` (None = defaults) with the overrides that are not None."""
    cfg = load_json(CVConfig, path) if path else CVConfig()
    over: dict[str, object] = {}
    if epochs is not None:
        for name in TRAINED:
            section = to_dict(getattr(cfg, name))
            over[name] = section | {"epochs": epochs, "patience": min(section["patience"], epochs)}
    if folds is not None:
        over["folds"] = folds
    if seed is not None:
        over["seed"] = seed
    return replace(cfg, **over) if over else cfg
