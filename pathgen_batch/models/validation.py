"""Input checks shared by the models: tensors, shapes, dtypes and masked tile bags.

Every check raises :class:`~pathgen_batch.errors.DataError` naming the input, what was expected
and what came, before any arithmetic could turn a bad input into NaNs.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from pathgen_batch.errors import DataError

Dim = int | None  # an expected size, or None for "any"


def check_tensor(name: str, x: object) -> torch.Tensor:
    """Return ``x`` if it is a tensor, else raise naming ``name``."""
    if not isinstance(x, torch.Tensor):
        raise DataError(f"{name}: expected a torch.Tensor, got {type(x).__name__}")
    return x


def check_shape(name: str, x: object, expected: Sequence[Dim], labels: str) -> torch.Tensor:
    """Check that ``x`` is a tensor of shape ``expected`` (None = any size).

    ``labels`` names the dimensions for the message, e.g. ``"(B, N, D)"``.
    """
    t = check_tensor(name, x)
    ok = t.dim() == len(expected) and all(
        e is None or s == e for s, e in zip(t.shape, expected, strict=True)
    )
    if not ok:
        want = "(" + ", ".join("?" if e is None else str(e) for e in expected) + ")"
        raise DataError(f"{name}: expected shape {labels} = {want}, got {tuple(t.shape)}")
    return t


def check_floating(name: str, x: torch.Tensor) -> torch.Tensor:
    if not x.is_floating_point():
        raise DataError(f"{name}: expected a floating-point tensor, got {x.dtype}")
    return x


def check_integer(name: str, x: torch.Tensor) -> torch.Tensor:
    if x.is_floating_point() or x.is_complex() or x.dtype == torch.bool:
        raise DataError(f"{name}: expected an integer tensor, got {x.dtype}")
    return x


def check_bag(
    feats: object, mask: object, feature_dim: int, batch: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Check a padded tile bag and its mask; every bag must hold at least one real tile.

    feats: (B, N, D) floating features; mask: (B, N) bool, True = real tile, False = padding.
    Returns the features with padding set to 0 (so that NaN or inf in padding cannot leak
    through a zero attention weight) and the mask. Non-finite features in a real tile are an
    error.
    """
    f = check_floating(
        "feats", check_shape("feats", feats, (batch, None, feature_dim), "(B, N, D)")
    )
    B, N = f.shape[0], f.shape[1]
    m = check_shape("mask", mask, (B, N), "(B, N)")
    if m.dtype != torch.bool:
        raise DataError(f"mask: expected a bool tensor (True = real tile), got {m.dtype}")
    if m.device != f.device:
        raise DataError(f"mask: on {m.device} but feats on {f.device}")
    empty = (~m.any(dim=1)).nonzero().flatten().tolist()  # bag indices without a real tile
    if empty:
        raise DataError(
            f"mask: bag(s) at batch index {empty[:10]} have no real tile; "
            "every bag needs at least one (mask True)"
        )
    f = f.masked_fill(~m[..., None], 0.0)  # (B, N, D), padding zeroed
    bad = (~torch.isfinite(f).all(dim=2).all(dim=1)).nonzero().flatten().tolist()
    if bad:
        raise DataError(f"feats: bag(s) at batch index {bad[:10]} have NaN or inf in a real tile")
    return f, m
