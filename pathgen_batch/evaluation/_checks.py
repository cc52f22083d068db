"""Input checks shared by the evaluation modules.

Every public evaluation function turns its array inputs into numpy arrays through these helpers,
so that a wrong shape, a NaN or a wrong dtype becomes a :class:`DataError` that names the input,
what was expected and what came.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from pathgen_batch.errors import ConfigError, DataError


def _as_array(name: str, x: Any) -> np.ndarray:
    try:
        arr = np.asarray(x)
    except (TypeError, ValueError) as e:
        raise DataError(f"{name}: could not be read as an array ({e})") from e
    return arr


def float_array(
    name: str,
    x: Any,
    ndim: int,
    *,
    allow_nan: bool = False,
    min_len: int = 1,
) -> np.ndarray:
    """``x`` as a float64 array of ``ndim`` dimensions; NaN/inf rejected unless ``allow_nan``."""
    arr = _as_array(name, x)
    if arr.ndim != ndim:
        raise DataError(f"{name}: expected a {ndim}-d array, got shape {arr.shape}")
    if arr.dtype == bool or not (
        np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)
    ):
        raise DataError(f"{name}: expected numbers, got dtype {arr.dtype}")
    arr = arr.astype(np.float64)
    if arr.shape[0] < min_len:
        raise DataError(f"{name}: expected at least {min_len} rows, got {arr.shape[0]}")
    if not allow_nan:
        bad = ~np.isfinite(arr)
        if bad.any():
            first = tuple(int(i) for i in np.argwhere(bad)[0])
            raise DataError(
                f"{name}: expected finite numbers, got {int(bad.sum())} NaN/inf value(s) "
                f"(first at index {first[0] if ndim == 1 else first})"
            )
    return arr


def bool_array(name: str, x: Any) -> np.ndarray:
    """``x`` as a 1-d bool array; accepts bools or the integers 0/1."""
    arr = _as_array(name, x)
    if arr.ndim != 1:
        raise DataError(f"{name}: expected a 1-d array, got shape {arr.shape}")
    if arr.dtype == bool:
        return arr
    if np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating):
        ok = np.isin(arr, (0, 1))
        if not ok.all():
            bad = arr[~ok][:3].tolist()
            raise DataError(f"{name}: expected booleans or 0/1, got values such as {bad}")
        return arr.astype(bool)
    raise DataError(f"{name}: expected booleans or 0/1, got dtype {arr.dtype}")


def int_array(name: str, x: Any, n_classes: int | None = None) -> np.ndarray:
    """``x`` as a 1-d int64 array of class indices, each in ``[0, n_classes)`` if given."""
    arr = _as_array(name, x)
    if arr.ndim != 1:
        raise DataError(f"{name}: expected a 1-d array, got shape {arr.shape}")
    if arr.dtype == bool:
        raise DataError(f"{name}: expected integer class indices, got booleans")
    if np.issubdtype(arr.dtype, np.floating):
        if not np.isfinite(arr).all() or not np.all(arr == np.round(arr)):
            raise DataError(f"{name}: expected integer class indices, got non-integer floats")
    elif not np.issubdtype(arr.dtype, np.integer):
        raise DataError(f"{name}: expected integer class indices, got dtype {arr.dtype}")
    out = arr.astype(np.int64)
    if n_classes is not None and out.size and (out.min() < 0 or out.max() >= n_classes):
        raise DataError(
            f"{name}: expected class indices in [0, {n_classes}), "
            f"got values from {int(out.min())} to {int(out.max())}"
        )
    return out


def same_length(**arrays: np.ndarray) -> int:
    """The common length of the named arrays; a DataError naming them all if they differ."""
    lengths = {k: int(v.shape[0]) for k, v in arrays.items()}
    if len(set(lengths.values())) > 1:
        desc = ", ".join(f"{k} has {n}" for k, n in lengths.items())
        raise DataError(f"mismatched lengths: {desc}")
    return next(iter(lengths.values()))


def probability_matrix(name: str, x: Any, *, atol: float = 1e-4) -> np.ndarray:
    """``x`` as an (N, K) float64 matrix of rows in [0, 1] that sum to one (within ``atol``)."""
    p = float_array(name, x, 2)
    if p.shape[1] < 2:
        raise DataError(f"{name}: expected at least 2 columns (classes), got {p.shape[1]}")
    if (p < -atol).any() or (p > 1 + atol).any():
        raise DataError(
            f"{name}: expected probabilities in [0, 1], got values from {p.min():.4g} "
            f"to {p.max():.4g}"
        )
    sums = p.sum(axis=1)
    bad = np.abs(sums - 1.0) > atol
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise DataError(
            f"{name}: expected each row to sum to 1, row {i} sums to {sums[i]:.6g} "
            f"({int(bad.sum())} such row(s))"
        )
    return np.clip(p, 0.0, 1.0)


def open_fraction(name: str, x: Any) -> float:
    """``x`` as a float in the open interval (0, 1) (a level, a power, a fraction)."""
    if isinstance(x, bool) or not isinstance(x, int | float | np.floating):
        raise ConfigError(f"{name}: expected a number in (0, 1), got {x!r}")
    v = float(x)
    if not 0.0 < v < 1.0:
        raise ConfigError(f"{name}: expected a number in (0, 1), got {v}")
    return v


def check_alpha(alpha: Any) -> float:
    """A miscoverage / significance level in the open interval (0, 1)."""
    return open_fraction("alpha", alpha)
