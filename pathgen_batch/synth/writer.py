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

import math
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypedDict, Unpack, cast

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


# about what rendering one synthetic slide in memory holds at its peak, per level-0 pixel
# (measured: a 32,768 px square slide needed about 24 GB)
RENDER_BYTES_PER_PX = 24


def memory_bytes() -> int:
    """Physical memory of this machine in bytes (0 when unknown)."""
    try:
        return int(os.sysconf("SC_PHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return 0


def check_fits_in_memory(
    height: int, width: int, copies: int = 1, bytes_per_px: int = RENDER_BYTES_PER_PX
) -> None:
    """ConfigError when ``copies`` whole ``width`` x ``height`` slides held in memory at once
    (about ``bytes_per_px`` per pixel each) would not fit in 80% of this machine's memory."""
    have = 0.8 * memory_bytes()
    need = height * width * bytes_per_px * copies
    if have and need > have:
        side = int(math.sqrt(have / bytes_per_px / copies))
        at_once = f", {copies} slides at once (--workers)" if copies > 1 else ""
        raise ConfigError(
            f"a {width}x{height} px slide needs about {need / copies / 2**30:.1f} GiB to render "
            f"in memory{at_once}: more than 80% of this machine's {have / 0.8 / 2**30:.0f} GiB; "
            f"use at most about {max(256, side - side % 256)} px per side"
            + (" or fewer workers" if copies > 1 else "")
        )


class _Reducer:
    """Level ``i + 1`` from the rows of level ``i`` as they stream past: rows are reduced by an
    integer box ``factor`` in strips (a multiple of ``factor`` rows; the last strip may be
    shorter, as in PIL's ``reduce``) and appended, raw (H, W, 3) uint8, to a file."""

    def __init__(self, path: Path, factor: int) -> None:
        self.path, self.factor = path, factor
        self._f = open(path, "wb")  # noqa: SIM115 (closed by finish)
        self._pending: list[np.ndarray] = []
        self._rows = 0
        self.width = 0

    def feed(self, rows: np.ndarray) -> None:  # (r, W, 3)
        self._pending.append(rows)
        self._rows += rows.shape[0]
        if self._rows >= self.factor:
            self._flush(final=False)

    def _flush(self, final: bool) -> None:
        if not self._pending:
            return
        strip = np.concatenate(self._pending) if len(self._pending) > 1 else self._pending[0]
        n = strip.shape[0] if final else strip.shape[0] - strip.shape[0] % self.factor
        rest = strip[n:]
        if n:
            out = np.asarray(Image.fromarray(np.ascontiguousarray(strip[:n])).reduce(self.factor))
            self.width = out.shape[1]
            self._f.write(out.tobytes())
        self._pending = [rest] if rest.shape[0] else []
        self._rows = rest.shape[0]

    def finish(self) -> None:
        self._flush(final=True)
        self._f.close()


def _file_rows(path: Path, height: int, width: int, rows: int) -> Iterator[np.ndarray]:
    """Strips of ``rows`` rows of a raw (height, width, 3) uint8 file, top to bottom."""
    with open(path, "rb") as f:
        for r0 in range(0, height, rows):
            n = min(rows, height - r0)
            buf = f.read(n * width * 3)
            yield np.frombuffer(buf, np.uint8).reshape(n, width, 3)


def _tiles_of(
    strips: Iterator[np.ndarray], width: int, tile: int, reducer: _Reducer | None
) -> Iterator[np.ndarray]:
    """The tiles of each ``tile``-row strip in row-major order (edge tiles smaller), each
    strip fed to ``reducer`` (the next level) as it passes."""
    for strip in strips:  # (<= tile, width, 3)
        if reducer is not None:
            reducer.feed(strip)
        for x0 in range(0, width, tile):
            yield strip[:, x0 : x0 + tile]


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


Strips = Callable[[int, int], np.ndarray]  # (row, n rows) -> (n, W, 3) uint8 of level 0


class PyramidOptions(TypedDict, total=False):
    """Keyword options of the TIFF writers (defaults in :data:`PYRAMID_DEFAULTS`).

    mpp: microns per pixel of level 0; magnification: objective power (AppMag); levels: number
    of pyramid levels, each ``downsample`` times smaller than the one before; tile: tile side in
    pixels (multiple of 16); quality: JPEG quality 1..100; threads: threads compressing tiles
    (tifffile's default when None).
    """

    mpp: float
    magnification: float
    levels: int
    tile: int
    quality: int
    downsample: int
    threads: int | None


PYRAMID_DEFAULTS: PyramidOptions = {
    "mpp": 0.5,
    "magnification": 20.0,
    "levels": 3,
    "tile": 256,
    "quality": 80,
    "downsample": 4,
    "threads": None,
}


def resolve_options(width: int, height: int, options: PyramidOptions) -> PyramidOptions:
    """``options`` over :data:`PYRAMID_DEFAULTS`, checked for a ``width`` x ``height`` image
    (ConfigError naming the option otherwise)."""
    o: PyramidOptions = {**PYRAMID_DEFAULTS, **options}
    mpp, mag = o["mpp"], o["magnification"]
    if not (mpp > 0 and np.isfinite(mpp)):
        raise ConfigError(f"write_pyramidal_tiff: mpp must be a positive number, got {mpp}")
    if not (mag > 0 and np.isfinite(mag)):
        raise ConfigError(
            f"write_pyramidal_tiff: magnification must be a positive number, got {mag}"
        )
    check_pyramid_args(height, width, o["levels"], o["downsample"], o["tile"], o["quality"])
    return o


def write_pyramidal_tiff(
    path: str | Path, rgb: np.ndarray, **options: Unpack[PyramidOptions]
) -> list[tuple[int, int]]:
    """Write ``rgb`` (H, W, 3) uint8 as a pyramidal Aperio-style TIFF at ``path``
    (options: :class:`PyramidOptions`).

    Returns the (width, height) of every level, level 0 first, as OpenSlide reports them.
    """
    if not isinstance(rgb, np.ndarray) or rgb.ndim != 3 or rgb.shape[2] != 3:
        got = getattr(rgb, "shape", type(rgb).__name__)
        raise DataError(f"write_pyramidal_tiff: expected an (H, W, 3) array, got {got}")
    if rgb.dtype != np.uint8:
        raise DataError(f"write_pyramidal_tiff: expected uint8 pixels, got {rgb.dtype}")
    h, w = rgb.shape[:2]
    arr = np.ascontiguousarray(rgb)
    return write_pyramidal_tiff_tiles(path, w, h, lambda r0, n: arr[r0 : r0 + n], **options)


def write_pyramidal_tiff_tiles(
    path: str | Path, width: int, height: int, strips: Strips, **options: Unpack[PyramidOptions]
) -> list[tuple[int, int]]:
    """Write a pyramidal Aperio-style TIFF of ``width`` x ``height`` px without ever holding
    more than one strip of ``tile`` rows of it in memory: ``strips(row, n)`` returns level-0
    rows ``row .. row + n`` as (n, width, 3) uint8. Each level below is reduced from the one
    above as its tiles stream into the file (by strips, into a raw scratch file beside the
    target, deleted afterwards), so a 100,000 px square slide needs about
    ``tile * width * 3`` bytes of pixels at a time plus tifffile's compression buffers.
    Options as :class:`PyramidOptions`; the same pixels for the same image as
    :func:`write_pyramidal_tiff`.
    """
    o = resolve_options(width, height, options)
    tile = o["tile"]

    def level0() -> Iterator[np.ndarray]:
        for r0 in range(0, height, tile):
            n = min(tile, height - r0)
            strip = strips(r0, n)
            if strip.shape != (n, width, 3) or strip.dtype != np.uint8:
                raise DataError(
                    f"write_pyramidal_tiff_tiles: rows {r0}..{r0 + n} came as {strip.shape} "
                    f"{strip.dtype}, expected ({n}, {width}, 3) uint8"
                )
            yield strip

    return write_levels(path, width, height, level0(), None, o)


def scratch_bytes(width: int, height: int, levels: int, downsample: int) -> int:
    """Raw bytes of levels 1 .. ``levels - 1`` below a ``width`` x ``height`` level: the
    streamed writer's scratch files, all kept until it finishes."""
    total = 0
    for _ in range(1, levels):
        width, height = -(-width // downsample), -(-height // downsample)
        total += width * height * 3
    return total


def check_disk(target: Path, need: int, what: str) -> None:
    """ConfigError when the folder of ``target`` has less than ``need`` bytes free."""
    free = shutil.disk_usage(target.parent).free
    if need > free:
        raise ConfigError(
            f"{target}: {what} needs about {need / 2**30:.1f} GiB on disk there, "
            f"only {free / 2**30:.1f} GiB free"
        )


def write_levels(
    path: str | Path,
    width: int,
    height: int,
    level0: Iterator[np.ndarray] | Iterator[bytes],
    level1: Iterator[np.ndarray] | None,
    o: PyramidOptions,
    file_bytes: int = 0,
) -> list[tuple[int, int]]:
    """Write the levels of a pyramidal TIFF (``o``: :func:`resolve_options`'s) at ``path``.

    ``level0`` yields either the level-0 strips of ``tile`` rows (the last may be shorter; the
    levels below are then reduced from them, by scratch files), or the level-0 tiles already
    encoded in row-major order, each a full ``tile`` square JPEG as tifffile would encode it
    (YCbCr, 2x2 subsampling, ``quality``); then ``level1`` yields level 1 in strips of ``tile``
    rows when there is more than one level, and the levels below it are reduced from it.
    ConfigError, before anything is written, when the scratch files and ``file_bytes`` (the
    file's expected size, when known) would not fit on the target's disk.
    """
    levels, tile, downsample = o["levels"], o["tile"], o["downsample"]
    mpp, quality = o["mpp"], o["quality"]
    target = Path(path)
    tmp = target.with_name(f".{target.name}.part")
    scratch = [target.with_name(f".{target.name}.level{i}.raw") for i in range(1, levels)]
    desc = aperio_description(width, height, tile, quality, mpp, o["magnification"])
    dims: list[tuple[int, int]] = []
    encoded = level1 is not None
    w1, h1 = (width, height) if not encoded else (-(-width // downsample), -(-height // downsample))
    scratch_need = scratch_bytes(w1, h1, levels - encoded, downsample)
    what = "the file and its levels' scratch" if file_bytes else "the levels' scratch"
    check_disk(target, scratch_need + file_bytes, f"a {width}x{height} px slide: {what}")
    try:
        big = height * width * 3 > 2**31
        with tifffile.TiffWriter(tmp, bigtiff=big) as tw:
            rows = None if encoded else cast(Iterator[np.ndarray], level0)
            w, h = width, height
            for i in range(levels):
                reducer = None
                if i + 1 < levels and not (encoded and i == 0):
                    reducer = _Reducer(scratch[i], downsample)
                px_per_cm = 1e4 / (mpp * level_scale(width, w))
                data = level0 if rows is None else _tiles_of(rows, w, tile, reducer)
                tw.write(
                    data,
                    shape=(h, w, 3),
                    dtype=np.uint8,
                    photometric="rgb",
                    tile=(tile, tile),
                    compression="jpeg",
                    compressionargs={"level": quality},
                    subfiletype=0 if i == 0 else 1,
                    description=desc if i == 0 else None,
                    resolution=(px_per_cm, px_per_cm),
                    resolutionunit="CENTIMETER",
                    metadata=None,
                    maxworkers=o["threads"],
                )
                dims.append((w, h))
                w, h = -(-w // downsample), -(-h // downsample)
                if reducer is not None:
                    reducer.finish()
                    rows = _file_rows(scratch[i], h, w, tile)
                elif level1 is not None and i == 0:
                    rows = level1
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
        for f in scratch:
            f.unlink(missing_ok=True)
    return dims


def level_scale(width0: int, width: int) -> float:
    """Downsample factor of a level of the given width relative to level 0."""
    return width0 / width
