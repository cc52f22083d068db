"""The PathGen models (pure torch, no I/O) and their registry.

A model is saved as its ``state_dict`` plus ``to_dict(model.config)`` (JSON) and rebuilt with
``build_model(name, config_dict)``; the registry names are the CLI's choices.

=================  ==========================  =========================
name               config                      model
=================  ==========================  =========================
``generator``      :class:`GeneratorConfig`    :class:`TranscriptomeDenoiser`
``fusion``         :class:`FusionConfig`       :class:`FusionModel`
``attention_mil``  :class:`AttentionMILConfig` :class:`AttentionMIL`
``omics_mlp``      :class:`OmicsMLPConfig`     :class:`OmicsMLP`
=================  ==========================  =========================
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from torch import nn

from pathgen_batch.config import from_dict
from pathgen_batch.errors import ConfigError
from pathgen_batch.models.baselines import (
    AttentionMIL,
    AttentionMILConfig,
    OmicsMLP,
    OmicsMLPConfig,
)
from pathgen_batch.models.fusion import FusionConfig, FusionModel, FusionOutput
from pathgen_batch.models.generator import GeneratorArch, GeneratorConfig, TranscriptomeDenoiser


@dataclass(frozen=True)
class ModelSpec:
    config_cls: type
    model_cls: type[nn.Module]


MODELS: dict[str, ModelSpec] = {
    "generator": ModelSpec(GeneratorConfig, TranscriptomeDenoiser),
    "fusion": ModelSpec(FusionConfig, FusionModel),
    "attention_mil": ModelSpec(AttentionMILConfig, AttentionMIL),
    "omics_mlp": ModelSpec(OmicsMLPConfig, OmicsMLP),
}


def model_names() -> tuple[str, ...]:
    return tuple(MODELS)


def _spec(name: str) -> ModelSpec:
    if name not in MODELS:
        raise ConfigError(f"model: expected one of {sorted(MODELS)}, got {name!r}")
    return MODELS[name]


def config_class(name: str) -> type:
    """The config dataclass of model ``name``."""
    return _spec(name).config_cls


def build_model(name: str, config: Mapping[str, Any] | Any) -> nn.Module:
    """Build model ``name`` from its config (a config instance or its ``to_dict`` form)."""
    spec = _spec(name)
    cfg: Any
    if isinstance(config, Mapping):
        cfg = from_dict(spec.config_cls, dict(config), _where=f"{name} config")
    elif isinstance(config, spec.config_cls):
        cfg = config
    else:
        raise ConfigError(
            f"{name} config: expected a mapping or {spec.config_cls.__name__}, "
            f"got {type(config).__name__}"
        )
    return spec.model_cls(cfg)


def model_name_of(model: nn.Module) -> str:
    """The registry name of a built model."""
    for name, spec in MODELS.items():
        if type(model) is spec.model_cls:
            return name
    raise ConfigError(f"model: {type(model).__name__} is not a registered model")


__all__ = [
    "MODELS",
    "AttentionMIL",
    "AttentionMILConfig",
    "FusionConfig",
    "FusionModel",
    "FusionOutput",
    "GeneratorArch",
    "GeneratorConfig",
    "ModelSpec",
    "OmicsMLP",
    "OmicsMLPConfig",
    "TranscriptomeDenoiser",
    "build_model",
    "config_class",
    "model_name_of",
    "model_names",
]
