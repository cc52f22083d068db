"""The z-score scaler: per-column standardisation fit on the training patients, stored with the
model and applied unchanged at scoring time (never refit on the data being scored).

One class serves both inputs of the models:

- expression (P, G): fit on the training patients' transcriptomes (:meth:`ZScoreScaler.fit`).
  The generator works in z-scores per gene: the diffusion's noise is N(0, 1), so data on the
  same scale keeps every gene's signal-to-noise schedule comparable; scoring maps synthetic
  values back to expression units (:meth:`~ZScoreScaler.inverse_transform`).
- tile features, bags of (N_i, D): fit over every tile of every training bag
  (:meth:`ZScoreScaler.fit_bags`), so a slide with many tiles weighs more than one with few,
  as each tile is one input token.

std is the unbiased one (ddof 1); a constant column keeps std 1.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from pathgen_batch.errors import DataError


def check_matrix(x: Any, name: str, width: int | None = None) -> np.ndarray:
    """``x`` as a finite (N, width) float64 matrix, or a DataError naming ``name``."""
    a = np.asarray(x, dtype=np.float64)
    if a.ndim != 2 or (width is not None and a.shape[1] != width):
        want = "(N, K)" if width is None else f"(N, {width})"
        raise DataError(f"{name}: expected shape {want}, got {a.shape}")
    bad = ~np.isfinite(a)
    if bad.any():
        rows, cols = np.nonzero(bad)
        raise DataError(
            f"{name}: {int(bad.sum())} missing or non-finite value(s), first at row "
            f"{int(rows[0])}, column {int(cols[0])}"
        )
    return a


@dataclass(frozen=True)
class ZScoreScaler:
    """z = (x - mean) / std per column."""

    mean: tuple[float, ...]
    std: tuple[float, ...]

    def __post_init__(self) -> None:
        if len(self.mean) == 0 or len(self.mean) != len(self.std):
            raise DataError(
                f"scaler: expected mean and std of one non-zero length, got "
                f"{len(self.mean)} and {len(self.std)}"
            )
        if not all(math.isfinite(v) for v in self.mean) or not all(
            math.isfinite(v) and v > 0 for v in self.std
        ):
            raise DataError("scaler: expected finite means and positive finite stds")

    @classmethod
    def fit(cls, x: Any, name: str = "training values") -> ZScoreScaler:
        """Fit on a (N, K) training matrix; needs N >= 2."""
        a = check_matrix(x, name)
        if a.shape[0] < 2:
            raise DataError(f"{name}: need at least 2 rows to fit a scaler, got {a.shape[0]}")
        std = a.std(axis=0, ddof=1)  # (K,)
        std = np.where(std > 1e-12, std, 1.0)
        return cls(tuple(float(v) for v in a.mean(axis=0)), tuple(float(v) for v in std))

    @classmethod
    def fit_bags(cls, bags: Sequence[np.ndarray]) -> ZScoreScaler:
        """Fit on every tile of the training bags, each (N_i, D)."""
        if len(bags) == 0:
            raise DataError("training features: expected at least one bag, got none")
        tiles = np.concatenate([np.asarray(b, dtype=np.float64) for b in bags], axis=0)  # (T, D)
        return cls.fit(tiles, "training features")

    @property
    def dim(self) -> int:
        """K, the number of columns (genes or feature dimensions)."""
        return len(self.mean)

    def transform(self, x: Any, name: str = "values") -> np.ndarray:
        """(N, K) raw values -> (N, K) float32 z-scores."""
        a = check_matrix(x, name, self.dim)
        return ((a - np.asarray(self.mean)) / np.asarray(self.std)).astype(np.float32)

    def transform_all(self, bags: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Each bag (N_i, D) -> (N_i, D) float32."""
        return [self.transform(b, f"bags[{i}]") for i, b in enumerate(bags)]

    def inverse_transform(self, z: Any) -> np.ndarray:
        """Map z-scores (..., K) back to raw units."""
        a = np.asarray(z, dtype=np.float64)
        if a.shape[-1:] != (self.dim,):
            raise DataError(f"scaled values: expected {self.dim} columns, got shape {a.shape}")
        return (a * np.asarray(self.std) + np.asarray(self.mean)).astype(np.float32)

    def inverse_scale(self, spread: Any) -> np.ndarray:
        """Map a per-column spread (std, (..., K)) from z-scores to raw units."""
        return (np.asarray(spread, dtype=np.float64) * np.asarray(self.std)).astype(np.float32)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "zscore", "mean": list(self.mean), "std": list(self.std)}

    @classmethod
    def from_dict(cls, d: Any) -> ZScoreScaler:
        """Strict inverse of :meth:`to_dict`."""
        if not isinstance(d, dict) or set(d) != {"kind", "mean", "std"} or d["kind"] != "zscore":
            keys = sorted(d) if isinstance(d, dict) else type(d).__name__
            raise DataError(f"scaler: expected keys kind='zscore', mean, std; got {keys}")
        try:
            return cls(tuple(float(v) for v in d["mean"]), tuple(float(v) for v in d["std"]))
        except (TypeError, ValueError) as e:
            raise DataError(f"scaler: mean and std must be lists of numbers ({e})") from e
