"""Per-gene expression scaling, fit on a training fold only and stored with the model.

The generator works in standardised space (z-scores per gene): the diffusion's noise is N(0, 1),
so data on the same scale keeps every gene's signal-to-noise schedule comparable. The scaler is
fit on the training patients of a fold, never on the whole cohort, and is saved next to the model
as JSON so scoring maps synthetic values back to the original expression units.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from pathgen_batch.errors import DataError


def check_expression(x: np.ndarray, name: str = "expression", n_genes: int | None = None) -> None:
    """Raise DataError when ``x`` is not a finite (N, G) matrix (with G == n_genes if given)."""
    if x.ndim != 2:
        raise DataError(f"{name}: expected a 2-D (patients, genes) matrix, got shape {x.shape}")
    if n_genes is not None and x.shape[1] != n_genes:
        raise DataError(f"{name}: expected {n_genes} genes (panel), got {x.shape[1]}")
    bad = ~np.isfinite(x)
    if bad.any():
        rows, cols = np.nonzero(bad)
        raise DataError(
            f"{name}: {int(bad.sum())} missing or non-finite value(s), first at row "
            f"{int(rows[0])}, gene column {int(cols[0])}"
        )


@dataclass(frozen=True)
class ExpressionScaler:
    """z = (x - mean) / std per gene. ``std`` of a constant gene is stored as 1."""

    mean: tuple[float, ...]
    std: tuple[float, ...]

    @classmethod
    def fit(cls, x: np.ndarray) -> ExpressionScaler:
        """Fit on a (N, G) training matrix; needs N >= 2."""
        x = np.asarray(x, dtype=np.float64)
        check_expression(x, "training expression")
        if x.shape[0] < 2:
            raise DataError(f"training expression: need at least 2 patients, got {x.shape[0]}")
        mean = x.mean(axis=0)
        std = x.std(axis=0, ddof=1)
        std = np.where(std > 1e-12, std, 1.0)
        return cls(tuple(float(v) for v in mean), tuple(float(v) for v in std))

    @property
    def n_genes(self) -> int:
        return len(self.mean)

    def transform(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=np.float64)
        check_expression(x, "expression", self.n_genes)
        return ((x - np.asarray(self.mean)) / np.asarray(self.std)).astype(np.float32)

    def inverse_transform(self, z: np.ndarray) -> np.ndarray:
        """Map scaled values (..., G) back to expression units."""
        z = np.asarray(z, dtype=np.float64)
        if z.shape[-1] != self.n_genes:
            raise DataError(f"scaled expression: expected {self.n_genes} genes, got {z.shape[-1]}")
        return (z * np.asarray(self.std) + np.asarray(self.mean)).astype(np.float32)

    def inverse_scale(self, spread: np.ndarray) -> np.ndarray:
        """Map a per-gene spread (std) from scaled space to expression units."""
        spread = np.asarray(spread, dtype=np.float64)
        return (spread * np.asarray(self.std)).astype(np.float32)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "zscore", "mean": list(self.mean), "std": list(self.std)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ExpressionScaler:
        if d.get("kind") != "zscore" or set(d) != {"kind", "mean", "std"}:
            raise DataError(f"scaler: expected keys kind='zscore', mean, std; got {sorted(d)}")
        if len(d["mean"]) != len(d["std"]):
            raise DataError("scaler: mean and std lengths differ")
        return cls(tuple(float(v) for v in d["mean"]), tuple(float(v) for v in d["std"]))
