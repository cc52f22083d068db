"""Padding variable-size tile bags into one masked batch."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from pathgen_batch.errors import DataError


def subsample_indices(
    n: int, max_tiles: int | None = None, rng: np.random.Generator | None = None
) -> np.ndarray:
    """Indices (sorted, int64) of the tiles kept from a bag of ``n``.

    All of them when ``max_tiles`` is None or ``n <= max_tiles``; otherwise ``max_tiles`` drawn
    without replacement by ``rng``, or the first ``max_tiles`` when ``rng`` is None.
    """
    if max_tiles is not None and (isinstance(max_tiles, bool) or max_tiles < 1):
        raise DataError(f"max_tiles: expected a positive integer or None, got {max_tiles!r}")
    if max_tiles is None or n <= max_tiles:
        return np.arange(n, dtype=np.int64)
    if rng is None:
        return np.arange(max_tiles, dtype=np.int64)
    return np.sort(rng.choice(n, size=max_tiles, replace=False)).astype(np.int64)


def pad_bags(
    bags: Sequence[np.ndarray],
    max_tiles: int | None = None,
    rng: np.random.Generator | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """List of (N_i, D) bags -> feats (B, N_max, D) float32 zero-padded, mask (B, N_max) bool.

    ``mask[b, j]`` is True where position j holds a real tile of bag b. Bags above
    ``max_tiles`` are subsampled (see :func:`subsample_indices`); N_max is the largest kept size.
    Every bag must be non-empty and share D.
    """
    if len(bags) == 0:
        raise DataError("pad_bags: expected at least one bag, got none")
    dims = set()
    for i, b in enumerate(bags):
        if not isinstance(b, np.ndarray) or b.ndim != 2:
            shape = getattr(b, "shape", type(b).__name__)
            raise DataError(f"pad_bags: bag {i} must be a 2-d (N, D) array, got {shape}")
        if b.shape[0] == 0:
            raise DataError(f"pad_bags: bag {i} is empty; a bag needs at least one tile")
        dims.add(b.shape[1])
    if len(dims) != 1:
        raise DataError(f"pad_bags: bags have different feature dims {sorted(dims)}")
    d = dims.pop()
    kept = [b[subsample_indices(b.shape[0], max_tiles, rng)] for b in bags]  # each (n_i, D)
    n_max = max(k.shape[0] for k in kept)
    feats = np.zeros((len(bags), n_max, d), dtype=np.float32)  # (B, N_max, D)
    mask = np.zeros((len(bags), n_max), dtype=bool)  # (B, N_max)
    for i, k in enumerate(kept):
        feats[i, : k.shape[0]] = k
        mask[i, : k.shape[0]] = True
    return feats, mask


def padded(
    bags: Sequence[np.ndarray],
    idx: np.ndarray,
    device: torch.device,
    max_tiles: int | None = None,
    rng: np.random.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Bags at ``idx`` -> feats (B, N, D), mask (B, N) on ``device`` (tiles drawn by ``rng``)."""
    feats, mask = pad_bags([bags[i] for i in idx], max_tiles=max_tiles, rng=rng)
    return torch.from_numpy(feats).to(device), torch.from_numpy(mask).to(device)
