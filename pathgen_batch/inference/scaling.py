"""Tile-feature standardisation, fit on the training patients and stored with the model.

Per feature dimension: the mean and standard deviation over every tile of every training bag
(so a slide with many tiles weighs more than one with few, as each tile is one input token).
Scoring applies the stored values; they are never refit on the data being scored.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from pathgen_batch.errors import DataError


@dataclass(frozen=True)
class FeatureScaler:
    """z = (x - mean) / std per feature dimension; a constant dimension keeps std 1."""

    mean: tuple[float, ...]
    std: tuple[float, ...]

    def __post_init__(self) -> None:
        if len(self.mean) == 0 or len(self.mean) != len(self.std):
            raise DataError(
                f"feature scaler: expected mean and std of one non-zero length, got "
                f"{len(self.mean)} and {len(self.std)}"
            )
        if not all(math.isfinite(v) for v in self.mean) or not all(
            math.isfinite(v) and v > 0 for v in self.std
        ):
            raise DataError("feature scaler: expected finite means and positive finite stds")

    @classmethod
    def fit(cls, bags: Sequence[np.ndarray]) -> FeatureScaler:
        """Fit on training bags, each (N_i, D); needs at least 2 tiles in all."""
        if len(bags) == 0:
            raise DataError("feature scaler: expected at least one training bag, got none")
        tiles = np.concatenate([np.asarray(b, dtype=np.float64) for b in bags], axis=0)  # (T, D)
        if tiles.ndim != 2 or tiles.shape[0] < 2:
            raise DataError(f"feature scaler: need >= 2 tiles of shape (D,), got {tiles.shape}")
        if not np.isfinite(tiles).all():
            raise DataError("feature scaler: training features hold NaN or inf")
        mean = tiles.mean(axis=0)  # (D,)
        std = tiles.std(axis=0, ddof=1)  # (D,)
        std = np.where(std > 1e-12, std, 1.0)
        return cls(tuple(float(v) for v in mean), tuple(float(v) for v in std))

    @property
    def dim(self) -> int:
        return len(self.mean)

    def transform(self, bag: np.ndarray, name: str = "bag") -> np.ndarray:
        """(N, D) raw features -> (N, D) float32 standardised features."""
        x = np.asarray(bag)
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise DataError(f"{name}: expected features of shape (N, {self.dim}), got {x.shape}")
        z = (x.astype(np.float64) - np.asarray(self.mean)) / np.asarray(self.std)  # (N, D)
        return z.astype(np.float32)

    def transform_all(self, bags: Sequence[np.ndarray]) -> list[np.ndarray]:
        return [self.transform(b, f"bags[{i}]") for i, b in enumerate(bags)]

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "zscore", "mean": list(self.mean), "std": list(self.std)}

    @classmethod
    def from_dict(cls, d: Any) -> FeatureScaler:
        """Strict inverse of :meth:`to_dict`."""
        if not isinstance(d, dict) or set(d) != {"kind", "mean", "std"} or d["kind"] != "zscore":
            keys = sorted(d) if isinstance(d, dict) else type(d).__name__
            raise DataError(f"feature scaler: expected keys kind='zscore', mean, std; got {keys}")
        try:
            return cls(tuple(float(v) for v in d["mean"]), tuple(float(v) for v in d["std"]))
        except (TypeError, ValueError) as e:
            raise DataError(f"feature scaler: mean and std must be lists of numbers ({e})") from e
