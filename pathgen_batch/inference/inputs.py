"""Checks of what scoring takes in: raw tile bags and batch sizes."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Self

import numpy as np
import torch
from torch import nn

from pathgen_batch.errors import ConfigError, DataError

DEFAULT_BATCH = 16


def check_bags(bags: Sequence[np.ndarray], dim: int) -> list[np.ndarray]:
    """Raw bags, each (N_i, D) with N_i >= 1 and finite values, as float32 arrays."""
    if isinstance(bags, np.ndarray) or not isinstance(bags, Sequence) or len(bags) == 0:
        raise DataError("bags: expected a non-empty list of (N_i, D) feature arrays")
    out = []
    for i, b in enumerate(bags):
        a = np.asarray(b, dtype=np.float32)
        if a.ndim != 2 or a.shape[1] != dim:
            raise DataError(f"bags[{i}]: expected shape (N, {dim}), got {a.shape}")
        if a.shape[0] == 0:
            raise DataError(f"bags[{i}]: has zero tiles; every bag needs at least one")
        if not np.isfinite(a).all():
            raise DataError(f"bags[{i}]: holds NaN or inf")
        out.append(a)
    return out


def check_batch_size(batch_size: int) -> None:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size: expected an integer >= 1, got {batch_size!r}")


class OnDevice:
    """``device`` and ``to`` of a scoring-time model whose network is its ``model``."""

    model: nn.Module

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def to(self, device: str | torch.device) -> Self:
        self.model.to(torch.device(device))
        return self
