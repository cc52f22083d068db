"""Encoder registry: name -> (config class, constructor). The CLI's choices come from here.

``build_encoder("stain-texture")`` needs nothing; ``build_encoder("resnet50-trunc",
weights="r50.pth")`` and ``build_encoder("torchscript", weights="uni.pt", options={"dim": 1024})``
load local files only, and so do the foundation models built with timm (``build_encoder("uni",
weights="pytorch_model.bin")``, ``"virchow2"``, ..., or ``"timm:<architecture>"`` with declared
``mean`` and ``std``; see :mod:`.timm_encoder`). Options are checked strictly against the
encoder's config dataclass, so a misspelt option is an error, never a silent default.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from pathgen_batch import config
from pathgen_batch.errors import ConfigError, DataError
from pathgen_batch.features import hf_encoder, resnet, stain, timm_encoder, torchscript
from pathgen_batch.features.contract import FeatureContract
from pathgen_batch.features.encoder import Encoder, file_sha256
from pathgen_batch.features.weights import fetch_weights

DEFAULT_ENCODER = stain.NAME
TIMM_ANY = timm_encoder.PREFIX + "<architecture>"  # listed in help; any timm:NAME is accepted


@dataclass(frozen=True)
class EncoderEntry:
    """One registered encoder: its config class, constructor and a line of help."""

    name: str
    config_cls: type
    build: Callable[[Any, str | torch.device], Encoder]
    summary: str
    needs_weights: bool


_REGISTRY: dict[str, EncoderEntry] = {}


def register_encoder(entry: EncoderEntry, replace: bool = False) -> None:
    """Add an encoder; registering a taken name is a ConfigError unless ``replace``."""
    if entry.name in _REGISTRY and not replace:
        raise ConfigError(f"encoder {entry.name!r} is already registered")
    _REGISTRY[entry.name] = entry


def encoder_names() -> tuple[str, ...]:
    return tuple(_REGISTRY)


def encoder_entries() -> tuple[EncoderEntry, ...]:
    return tuple(_REGISTRY.values())


def _timm_entry(name: str) -> EncoderEntry:
    return EncoderEntry(
        name=name,
        config_cls=timm_encoder.TimmEncoderConfig,
        build=lambda cfg, dev: timm_encoder.TimmEncoder(name, cfg, dev),
        summary=(
            timm_encoder.FOUNDATION_MODELS[name].summary
            if name in timm_encoder.FOUNDATION_MODELS
            else "any timm architecture from --weights; declare -o mean=[...] -o std=[...]"
        ),
        needs_weights=True,
    )


def get_entry(name: str) -> EncoderEntry:
    """The registered encoder ``name``; ``timm:<architecture>`` names any timm architecture."""
    if isinstance(name, str) and name.startswith(timm_encoder.PREFIX) and name != TIMM_ANY:
        return _timm_entry(name)
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ConfigError(
            f"encoder: unknown name {name!r}; registered encoders are {list(_REGISTRY)}"
        ) from None


def encoder_config(
    name: str, weights: str | None = None, options: Mapping[str, Any] | None = None
) -> Any:
    """Build the encoder's frozen config from ``weights`` and ``options``, strictly."""
    entry = get_entry(name)
    data = dict(options or {})
    if entry.needs_weights:
        if weights is None and "weights" not in data:
            raise ConfigError(
                f"encoder {name!r} needs a weights file (--weights PATH or s3://...); "
                "weights are never downloaded from a model hub"
            )
        if weights is not None:
            data["weights"] = fetch_weights(str(weights))
    elif weights is not None:
        raise ConfigError(f"encoder {name!r} takes no weights file, got {weights}")
    return config.from_dict(entry.config_cls, data, _where=f"encoder {name!r} options")


def build_encoder(
    name: str = DEFAULT_ENCODER,
    *,
    weights: str | None = None,
    device: str | torch.device = "cpu",
    options: Mapping[str, Any] | None = None,
) -> Encoder:
    """Construct a registered encoder on ``device`` (``"auto"`` picks CUDA when available)."""
    entry = get_entry(name)
    return entry.build(encoder_config(name, weights, options), device)


def check_weights(contract: FeatureContract, weights: str) -> None:
    """Cheaply (a digest, no model built) check that ``weights`` is the file ``contract`` was
    made with: ConfigError when the encoder takes no weights or the file is missing, DataError
    naming both digests when it is another file."""
    if not get_entry(contract.encoder).needs_weights:
        raise ConfigError(f"encoder {contract.encoder!r} takes no weights file, got {weights}")
    digest = file_sha256(fetch_weights(weights), what=f"{contract.encoder} weights file")
    want = contract.version.split(";", 1)[0]
    if digest != want:
        raise DataError(
            f"{weights}: not the weights of the feature contract {contract.describe()}: "
            f"the file's digest is {digest}"
        )


def encoder_for_contract(
    contract: FeatureContract,
    *,
    weights: str | None = None,
    device: str | torch.device = "cpu",
) -> Encoder:
    """Build the encoder that produces ``contract``'s features, or raise DataError naming the
    field that differs (e.g. a weights file whose digest is not the contract's version)."""
    options: dict[str, Any] = {"tile_px": contract.tile_px, "mpp": contract.mpp}
    if contract.encoder == stain.NAME:
        options.update(stain.options_for_version(contract.version))
    elif contract.encoder == torchscript.NAME:
        options.update({"dim": contract.dim, **torchscript.options_for_version(contract.version)})
    elif get_entry(contract.encoder).config_cls is timm_encoder.TimmEncoderConfig:
        recipe = contract.recipe_dict()
        options.update(timm_encoder.options_for_recipe(contract.encoder, recipe))
    elif contract.encoder in hf_encoder.MODELS:
        options.update(hf_encoder.options_for_recipe(contract.recipe_dict()))
    enc = build_encoder(contract.encoder, weights=weights, device=device, options=options)
    contract.check_matches(enc.contract, what="requested feature contract vs built encoder")
    return enc


# the built-in encoders: name, config class, constructor (config, device), needs weights, help
_BUILT_IN: tuple[tuple[str, type, Callable[[Any, str | torch.device], Encoder], bool, str], ...] = (
    (
        stain.NAME,
        stain.StainTextureConfig,
        stain.StainTextureEncoder,
        False,
        "H&E colour deconvolution statistics and multi-scale texture energies "
        f"({len(stain.feature_names())}-d); CPU or GPU, nothing downloaded",
    ),
    (
        resnet.NAME,
        resnet.ResNetTruncConfig,
        resnet.ResNetTruncEncoder,
        True,
        "ResNet-50 truncated after layer3, average pooled (1024-d, as CLAM); "
        "torchvision-style state dict from --weights",
    ),
    (
        torchscript.NAME,
        torchscript.TorchScriptConfig,
        torchscript.TorchScriptEncoder,
        True,
        "any TorchScript export from --weights (e.g. UNI ViT-L/16); declare dim, "
        "tile_px, mpp, mean, std as options",
    ),
)
for _name, _config_cls, _build, _needs_weights, _summary in _BUILT_IN:
    register_encoder(EncoderEntry(_name, _config_cls, _build, _summary, _needs_weights))
for _name in timm_encoder.FOUNDATION_MODELS:
    register_encoder(_timm_entry(_name))
register_encoder(_timm_entry(TIMM_ANY))


def _hf_entry(name: str) -> EncoderEntry:
    return EncoderEntry(
        name=name,
        config_cls=hf_encoder.HFEncoderConfig,
        build=lambda cfg, dev: hf_encoder.HFEncoder(name, cfg, dev),
        summary=hf_encoder.MODELS[name][2] + "; --weights model.safetensors, config.json beside",
        needs_weights=True,
    )


for _name in hf_encoder.MODELS:
    register_encoder(_hf_entry(_name))
