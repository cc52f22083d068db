"""Pyramidal tiled TIFF slides that OpenSlide reads as Aperio slides.

Every level is a tiled, JPEG-compressed RGB image; level ``i`` is level 0 reduced by
``downsample ** i`` (box filter). The first page carries an Aperio-style description
(``Aperio Image Library v1.0`` ... ``|MPP = <mpp>|AppMag = <mag>``), which makes OpenSlide's
Aperio driver report the vendor, ``openslide.mpp-x/y`` and the objective power; every level after
the first is marked reduced-resolution (``subfiletype=1``) so that OpenSlide lists all levels.
The TIFF resolution tags carry the pixel size too, for generic TIFF readers.

Files are written to a temporary name beside the target and renamed into place, so a reader
never sees a half-written slide.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import tifffile
from PIL import Image

from pathgen_batch.errors import ConfigError, DataError


def aperio_description(
    width: int, height: int, tile: int, quality: int, mpp: float, magnification: float
) -> str:
    """First-page ImageDescription in the Aperio style."""
    return (
        f"Aperio Image Library v1.0\n"
        f"{width}x{height} [0,0 {width}x{height}] ({tile}x{tile}) JPEG/RGB Q={quality}"
        f"|MPP = {mpp:g}|AppMag = {magnification:g}"
    )


def pyramid(rgb: np.ndarray, levels: int, downsample: int) -> list[np.ndarray]:
    """(H, W, 3) uint8 -> ``levels`` arrays, level i of size ceil(H / d^i) x ceil(W / d^i)."""
    out = [rgb]
    for _ in range(1, levels):
        img = Image.fromarray(out[-1]).reduce(downsample)
        out.append(np.asarray(img))
    return out


def check_pyramid_args(
    height: int, width: int, levels: int, downsample: int, tile: int, quality: int
) -> None:
    """Raise ConfigError unless the pyramid parameters fit an image of this size."""
    if levels < 1:
        raise ConfigError(f"slide levels: expected >= 1, got {levels}")
    if downsample < 2:
        raise ConfigError(f"slide downsample: expected an integer >= 2, got {downsample}")
    if tile < 16 or tile % 16:
        raise ConfigError(f"slide tile size: expected a positive multiple of 16, got {tile}")
    if not 1 <= quality <= 100:
        raise ConfigError(f"JPEG quality: expected 1..100, got {quality}")
    if min(height, width) < tile:
        raise ConfigError(f"slide size {width}x{height} px is smaller than one {tile} px tile")
    smallest = min(height, width) // downsample ** (levels - 1)
    if smallest < 1:
        raise ConfigError(
            f"slide size {width}x{height} px is too small for {levels} levels at downsample "
            f"{downsample} (the last level would be empty)"
        )


def write_pyramidal_tiff(
    path: str | Path,
    rgb: np.ndarray,
    mpp: float = 0.5,
    magnification: float = 20.0,
    levels: int = 3,
    tile: int = 256,
    quality: int = 80,
    downsample: int = 4,
    threads: int | None = None,
) -> list[tuple[int, int]]:
    """Write ``rgb`` (H, W, 3) uint8 as a pyramidal Aperio-style TIFF at ``path``.

    mpp: microns per pixel of level 0; magnification: objective power (AppMag); levels: number
    of pyramid levels, each ``downsample`` times smaller than the one before; tile: tile side in
    pixels (multiple of 16); quality: JPEG quality 1..100; threads: threads compressing tiles
    (tifffile's default when None).

    Returns the (width, height) of every level, level 0 first, as OpenSlide reports them.
    """
    if not isinstance(rgb, np.ndarray) or rgb.ndim != 3 or rgb.shape[2] != 3:
        got = getattr(rgb, "shape", type(rgb).__name__)
        raise DataError(f"write_pyramidal_tiff: expected an (H, W, 3) array, got {got}")
    if rgb.dtype != np.uint8:
        raise DataError(f"write_pyramidal_tiff: expected uint8 pixels, got {rgb.dtype}")
    if not (mpp > 0 and np.isfinite(mpp)):
        raise ConfigError(f"write_pyramidal_tiff: mpp must be a positive number, got {mpp}")
    if not (magnification > 0 and np.isfinite(magnification)):
        raise ConfigError(
            f"write_pyramidal_tiff: magnification must be a positive number, got {magnification}"
        )
    h, w = rgb.shape[:2]
    check_pyramid_args(h, w, levels, downsample, tile, quality)
    target = Path(path)
    tmp = target.with_name(f".{target.name}.part")
    desc = aperio_description(w, h, tile, quality, mpp, magnification)
    dims: list[tuple[int, int]] = []
    try:
        with tifffile.TiffWriter(tmp, bigtiff=rgb.nbytes > 2**31) as tw:
            for i, level in enumerate(pyramid(np.ascontiguousarray(rgb), levels, downsample)):
                px_per_cm = 1e4 / (mpp * level_scale(w, level.shape[1]))
                tw.write(
                    level,
                    photometric="rgb",
                    tile=(tile, tile),
                    compression="jpeg",
                    compressionargs={"level": quality},
                    subfiletype=0 if i == 0 else 1,
                    description=desc if i == 0 else None,
                    resolution=(px_per_cm, px_per_cm),
                    resolutionunit="CENTIMETER",
                    metadata=None,
                    maxworkers=threads,
                )
                dims.append((int(level.shape[1]), int(level.shape[0])))
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    return dims


def level_scale(width0: int, width: int) -> float:
    """Downsample factor of a level of the given width relative to level 0."""
    return width0 / width
