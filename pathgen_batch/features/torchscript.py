"""The ``torchscript`` encoder: any TorchScript export given by path (e.g. a UNI ViT-L/16).

The user declares what the export expects and returns: tile size, resolution, feature
dimension and the input normalisation (ImageNet mean/std by default). Tiles are scaled to [0, 1],
normalised per channel and passed as float (B, 3, H, W); the module must return a (B, dim)
tensor, which is checked on every batch. The contract's version is the sha256 of the file, with
the normalisation appended when it is not ImageNet's (the same file under another normalisation
gives other features).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from pathgen_batch.errors import ConfigError
from pathgen_batch.features.contract import FeatureContract
from pathgen_batch.features.encoder import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    Encoder,
    file_sha256,
    normalise,
)

NAME = "torchscript"


@dataclass(frozen=True)
class TorchScriptConfig:
    """weights: path of the TorchScript file; dim: declared output dimension; tile_px, mpp:
    the tiling the model expects; mean, std: per-channel normalisation of [0, 1] RGB."""

    weights: str
    dim: int
    tile_px: int = 224
    mpp: float = 0.5
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    def __post_init__(self) -> None:
        if self.dim <= 0:
            raise ConfigError(f"torchscript: dim must be a positive integer, got {self.dim}")
        if self.tile_px <= 0:
            raise ConfigError(f"torchscript: tile_px must be positive, got {self.tile_px}")
        if not self.mpp > 0:
            raise ConfigError(f"torchscript: mpp must be positive, got {self.mpp}")
        if any(not s > 0 for s in self.std):
            raise ConfigError(f"torchscript: std must be positive, got {self.std}")

    @property
    def normalisation_tag(self) -> str:
        """'' for ImageNet normalisation, else ';mean=a,b,c;std=d,e,f'."""
        if tuple(self.mean) == IMAGENET_MEAN and tuple(self.std) == IMAGENET_STD:
            return ""
        fmt = ",".join
        return f";mean={fmt(f'{v:g}' for v in self.mean)};std={fmt(f'{v:g}' for v in self.std)}"


def options_for_version(version: str) -> dict[str, Any]:
    """The mean/std options encoded in a contract version (none for ImageNet's)."""
    parts = version.split(";")
    out: dict[str, Any] = {}
    for part in parts[1:]:
        key, _, vals = part.partition("=")
        if key not in ("mean", "std"):
            raise ConfigError(f"torchscript: cannot read normalisation from version {version!r}")
        try:
            out[key] = [float(v) for v in vals.split(",")]
        except ValueError as e:
            raise ConfigError(
                f"torchscript: cannot read normalisation from version {version!r}"
            ) from e
    return out


class TorchScriptEncoder(Encoder):
    """Runs a ``torch.jit.load``-ed module on normalised tiles; output dim checked per batch."""

    def __init__(self, cfg: TorchScriptConfig, device: str | torch.device = "cpu") -> None:
        digest = file_sha256(cfg.weights, what="torchscript file")
        try:
            module = torch.jit.load(str(Path(cfg.weights)), map_location="cpu")
        except (RuntimeError, ValueError, OSError) as e:
            raise ConfigError(
                f"{cfg.weights}: not a TorchScript file that torch.jit.load can read "
                f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"
            ) from e
        self.cfg = cfg
        self.module = module.eval()
        floats = [p.dtype for p in module.parameters() if p.is_floating_point()]
        self._dtype = floats[0] if floats else torch.float32
        contract = FeatureContract(
            NAME, digest + cfg.normalisation_tag, cfg.dim, cfg.tile_px, cfg.mpp
        )
        super().__init__(contract, device)
        self._moved()

    def _moved(self) -> None:
        self.module.to(self.device)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (B, H, W, 3) -> (B, dim)."""
        x = normalise(images, self.cfg.mean, self.cfg.std).to(self._dtype)  # (B, 3, H, W)
        out = self.module(x)
        if not isinstance(out, torch.Tensor):
            raise ConfigError(
                f"torchscript encoder {self.cfg.weights}: the module returned "
                f"{type(out).__name__}, expected a (B, {self.dim}) tensor"
            )
        return out
