"""The feature contract: what a bag of tile features means.

Tile features are only comparable when they come from the same encoder (name and version or
weights digest), have the same dimension, and were cut at the same tile size and resolution.
Every model records the contract of the features it was trained on, every feature file carries
the contract of its features, and combining two different contracts is refused with an error
that names the field that differs.

An encoder whose features depend on more than its weights (a foundation model's architecture
arguments, input size, normalisation constants and output rule) also records that ``recipe``, as
canonical JSON; the recipe is left out of the serialised form when empty, so contracts of the
encoders that have none keep their digests.
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
    recipe: canonical JSON (sorted keys, no spaces) of how tiles become vectors beyond the
        weights, e.g. ``{"architecture": "vit_large_patch16_224", "args": {...}, "input_px": 224,
        "mean": [...], "std": [...], "output": "cls"}``; ``""`` when the name and version say it
        all.
    """

    encoder: str
    version: str
    dim: int
    tile_px: int
    mpp: float
    recipe: str = ""

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
        if not isinstance(self.recipe, str):
            raise ConfigError(f"FeatureContract.recipe: expected a string, got {self.recipe!r}")
        if self.recipe and canonical_recipe(self.recipe) != self.recipe:
            raise ConfigError(
                "FeatureContract.recipe: expected canonical JSON of a mapping, "
                f"got {self.recipe[:80]!r}"
            )

    def to_dict(self) -> dict[str, Any]:
        out = config.to_dict(self)
        if not self.recipe:
            del out["recipe"]
        return out

    def recipe_dict(self) -> dict[str, Any]:
        """The recipe as data (``{}`` when there is none)."""
        return json.loads(self.recipe) if self.recipe else {}

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
            if f.name != "recipe" and getattr(self, f.name) != getattr(other, f.name)
        ]
        if self.recipe != other.recipe:
            a, b = self.recipe_dict(), other.recipe_dict()
            keys = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
            diffs.append("recipe " + ", ".join(f"{k} {a.get(k)!r} vs {b.get(k)!r}" for k in keys))
        if diffs:
            raise DataError(f"{what} mismatch: " + "; ".join(diffs))


def canonical_recipe(recipe: str | dict[str, Any]) -> str:
    """Canonical JSON of a recipe mapping (or of a JSON text of one); ConfigError otherwise."""
    data: Any = recipe
    if isinstance(recipe, str):
        try:
            data = json.loads(recipe)
        except json.JSONDecodeError as e:
            raise ConfigError(f"FeatureContract.recipe: not valid JSON ({e})") from e
    if not isinstance(data, dict):
        raise ConfigError(f"FeatureContract.recipe: expected a mapping, got {type(data).__name__}")
    return json.dumps(data, sort_keys=True, separators=(",", ":"))
