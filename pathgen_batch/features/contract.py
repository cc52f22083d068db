"""The feature contract: what a bag of tile features means.

Tile features are only comparable when they come from the same encoder (name and version or
weights digest), have the same dimension, and were cut at the same tile size and resolution.
Every model records the contract of the features it was trained on, every feature file carries
the contract of its features, and combining two different contracts is refused with an error
that names the field that differs.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, fields
from typing import Any

from pathgen_batch import config
from pathgen_batch.errors import ConfigError, DataError


@dataclass(frozen=True)
class FeatureContract:
    """Encoder identity and tiling that together define a feature space.

    encoder: registry name of the encoder (``"stain-texture"``, ``"resnet50-trunc"``, ...).
    version: a version tag (``"v1"``) or the digest of the weights file (``"sha256:<hex>"``).
    dim: feature dimension D of every tile vector.
    tile_px: tile side in pixels at the target resolution.
    mpp: target resolution in microns per pixel.
    """

    encoder: str
    version: str
    dim: int
    tile_px: int
    mpp: float

    def __post_init__(self) -> None:
        for name in ("encoder", "version"):
            v = getattr(self, name)
            if not isinstance(v, str) or not v.strip():
                raise ConfigError(f"FeatureContract.{name}: expected a non-empty string, got {v!r}")
        for name in ("dim", "tile_px"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
                raise ConfigError(f"FeatureContract.{name}: expected a positive integer, got {v!r}")
        m = self.mpp
        if isinstance(m, bool) or not isinstance(m, int | float) or not math.isfinite(m) or m <= 0:
            raise ConfigError(f"FeatureContract.mpp: expected a positive number, got {m!r}")
        object.__setattr__(self, "mpp", float(m))

    def to_dict(self) -> dict[str, Any]:
        return config.to_dict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FeatureContract:
        """Build from plain data; unknown keys and wrong types are ConfigErrors."""
        return config.from_dict(cls, data)

    def to_json(self) -> str:
        """Canonical JSON (sorted keys, no spaces): the digested form."""
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str, source: str = "feature contract") -> FeatureContract:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise DataError(f"{source}: feature contract is not valid JSON ({e})") from e
        try:
            return cls.from_dict(data)
        except ConfigError as e:
            raise DataError(f"{source}: invalid feature contract ({e})") from e

    @property
    def digest(self) -> str:
        """``sha256:<hex>`` of the canonical JSON; equal digests mean equal contracts."""
        return "sha256:" + hashlib.sha256(self.to_json().encode()).hexdigest()

    def describe(self) -> str:
        """One line for logs and errors."""
        return (
            f"{self.encoder}@{self.version} dim={self.dim} tile_px={self.tile_px} mpp={self.mpp:g}"
        )

    def check_matches(self, other: FeatureContract, what: str = "feature contract") -> None:
        """Raise DataError naming every field that differs between ``self`` and ``other``.

        ``what`` says which two things are compared, e.g. ``"generator vs fusion model"``.
        """
        if not isinstance(other, FeatureContract):
            raise DataError(f"{what}: expected a FeatureContract, got {type(other).__name__}")
        diffs = [
            f"{f.name} {getattr(self, f.name)!r} vs {getattr(other, f.name)!r}"
            for f in fields(self)
            if getattr(self, f.name) != getattr(other, f.name)
        ]
        if diffs:
            raise DataError(f"{what} mismatch: " + "; ".join(diffs))
