"""Tile encoders that ``transformers`` defines rather than timm: ``phikon-v2`` (Owkin's DINOv2
ViT-L/14, 1024-d class token).

The weights are the model's published ``model.safetensors``; its architecture arguments are the
``config.json`` published beside it (read as JSON, never executed; ``-o config=PATH`` when it
lies elsewhere). Both stay local: the network is built by ``transformers`` from that folder with
``local_files_only`` and safetensors only (a pickle ``.bin`` is refused), so ``transformers`` may
rename the keys of an older release of the file, and any key still missing, unexpected or
mis-shaped is refused with those keys named. The config's architecture arguments, the input
size, the normalisation and the output rule are the contract's recipe (see
:mod:`.timm_encoder`, whose :class:`~.timm_encoder.Recipe` and forward pass this reuses).
"""

from __future__ import annotations

import json
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pathgen_batch.errors import ConfigError
from pathgen_batch.features.contract import FeatureContract
from pathgen_batch.features.encoder import IMAGENET_MEAN, IMAGENET_STD, file_sha256
from pathgen_batch.features.timm_encoder import Recipe, TimmEncoder
from pathgen_batch.features.weights import SAFETENSORS_SUFFIX

# name -> (transformers model class, config class, summary); normalisation is ImageNet's
MODELS = {
    "phikon-v2": (
        "Dinov2Model",
        "Dinov2Config",
        "Phikon-v2 (Owkin): DINOv2 ViT-L/14 built by transformers, 1024-d class token",
    ),
}
# config.json entries that are bookkeeping, not architecture
_NOT_ARCHITECTURE = (
    "_name_or_path",
    "architectures",
    "torch_dtype",
    "dtype",
    "transformers_version",
)


def import_transformers() -> Any:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import transformers
    except ImportError as e:
        raise ConfigError(
            f"phikon-v2 needs the 'transformers' package ({e}); install the 'encoders' extra"
        ) from e
    return transformers


@dataclass(frozen=True)
class HFEncoderConfig:
    """weights: the model's ``model.safetensors``; config: its ``config.json`` (default: the
    one beside the weights); tile_px, mpp, input_px, micro_batch: as for timm encoders."""

    weights: str
    config: str | None = None
    tile_px: int | None = None
    mpp: float = 0.5
    input_px: int = 224
    micro_batch: int | None = None
    arch_args: dict[str, Any] | None = None  # set when rebuilt from a contract's recipe

    def __post_init__(self) -> None:
        if Path(self.weights).suffix != SAFETENSORS_SUFFIX:
            raise ConfigError(
                f"{self.weights}: transformers-built encoders read safetensors weights only "
                "(model.safetensors)"
            )
        if self.input_px < 8 or (self.tile_px is not None and self.tile_px < 8):
            raise ConfigError("transformers encoder: tile_px and input_px must be >= 8")
        if not self.mpp > 0:
            raise ConfigError(f"transformers encoder: mpp must be positive, got {self.mpp}")


def architecture_args(cfg: HFEncoderConfig) -> dict[str, Any]:
    """The architecture arguments: the contract's, or the published config.json's."""
    if cfg.arch_args is not None:
        return dict(cfg.arch_args)
    path = Path(cfg.config) if cfg.config else Path(cfg.weights).with_name("config.json")
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError as e:
        raise ConfigError(
            f"{path} not found: give the config.json published with the weights "
            "(beside them, or -o config=PATH)"
        ) from e
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: not a JSON model config ({e})") from e
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a JSON object")
    return {k: v for k, v in sorted(data.items()) if k not in _NOT_ARCHITECTURE}


def _key(entry: Any) -> str:
    """A key of transformers' loading report (a name, or a (name, shapes...) tuple)."""
    return str(entry[0] if isinstance(entry, tuple) else entry)


def build_hf_network(name: str, args: dict[str, Any], weights: Path) -> nn.Module:
    """The network from ``weights`` and ``args`` (a config), strictly, by transformers."""
    tf = import_transformers()
    model_cls, config_cls, _ = MODELS[name]
    try:
        config = getattr(tf, config_cls)(**args)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{name}: {config_cls} refused the config ({e})") from e
    with tempfile.TemporaryDirectory(prefix="pathgen-hf-") as tmp:
        folder = Path(tmp)
        (folder / "model.safetensors").symlink_to(weights.resolve())
        config.save_pretrained(folder)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                model, info = getattr(tf, model_cls).from_pretrained(
                    folder,
                    local_files_only=True,
                    use_safetensors=True,
                    output_loading_info=True,
                    ignore_mismatched_sizes=True,  # reported below, key by key
                )
        except (OSError, ValueError, RuntimeError) as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ConfigError(f"{weights}: transformers cannot load it as {name} ({first})") from e
    problems = [
        f"{len(keys)} {what} key(s) {sorted(_key(k) for k in keys)[:5]}"
        for what, keys in (
            ("missing", info.get("missing_keys", [])),
            ("unexpected", info.get("unexpected_keys", [])),
            ("mis-shaped", info.get("mismatched_keys", [])),
        )
        if keys
    ]
    if problems:
        raise ConfigError(f"{weights}: not a {name} state dict: " + "; ".join(problems))
    return model.eval()


class _LastHidden(nn.Module):
    """A transformers model seen as timm's ``forward_features``: pixels -> tokens (B, N, D)."""

    num_prefix_tokens = 1

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values=x).last_hidden_state


class HFEncoder(TimmEncoder):
    """A transformers-built network behind the timm encoder's forward pass (class token)."""

    def __init__(self, name: str, cfg: HFEncoderConfig, device: str | torch.device = "cpu"):
        args = architecture_args(cfg)
        digest = file_sha256(cfg.weights, what=f"{name} weights file")
        net = build_hf_network(name, args, Path(cfg.weights))
        recipe = Recipe(
            architecture="transformers:" + MODELS[name][0],
            args=args,
            input_px=cfg.input_px,
            mean=IMAGENET_MEAN,
            std=IMAGENET_STD,
            output="cls",
        )
        width = int(args.get("hidden_size", 0)) or int(getattr(net, "config").hidden_size)  # noqa: B009
        tile_px = cfg.tile_px or cfg.input_px
        contract = FeatureContract(name, digest, width, tile_px, cfg.mpp, recipe.to_json())
        self._init_loaded(recipe, _LastHidden(net), contract, cfg.micro_batch, device)


def options_for_recipe(recipe: dict[str, Any]) -> dict[str, Any]:
    """The options that rebuild a contract's recipe."""
    return {"input_px": recipe.get("input_px"), "arch_args": recipe.get("args")}
