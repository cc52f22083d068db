"""Reading the tiles of a grid in batches.

Adjacent kept tiles in a grid row form a run; when the read level tiles the grid exactly
(an integer downsample with ``size_l0 == read_px * downsample``), a whole run is read as one
region (:meth:`Slide.read_level`: JPEG tiles of TIFF-based slides decoded directly, else one
OpenSlide ``read_region``) and sliced, which gives the same pixels as one aligned
``read_region`` call per tile. Resizing
happens only when the read level's resolution differs from the target: an integer reduction is
a box average of the whole run (no pixel mixes across tile edges), anything else is done per
tile (box filter when shrinking, bicubic when enlarging).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from PIL import Image

from pathgen_batch.slides.artefacts import QualityConfig, TileQuality, tile_quality
from pathgen_batch.slides.grid import TileGrid
from pathgen_batch.slides.reader import Slide, opaque_rgb


@dataclass(frozen=True, eq=False)  # holds arrays: compared by identity
class TileBatch:
    """A batch of tiles: level-0 coordinates, grid positions and pixels."""

    x: np.ndarray  # (B,) int64 level-0 px
    y: np.ndarray  # (B,) int64 level-0 px
    index: np.ndarray  # (B,) int64 position of each tile in the grid
    images: np.ndarray  # (B, tile_px, tile_px, 3) uint8 RGB
    quality: TileQuality | None = None  # blank / out-of-focus flags, when asked for

    def __len__(self) -> int:
        return int(self.x.shape[0])


def _runs(x: np.ndarray, y: np.ndarray, step: int, max_run: int) -> list[tuple[int, int]]:
    """Split tiles (in grid order) into [start, stop) runs of adjacent tiles in one row."""
    n = x.shape[0]
    if n == 0:
        return []
    breaks = (np.diff(x) != step) | (np.diff(y) != 0)  # (n - 1,)
    starts = np.concatenate([[0], np.flatnonzero(breaks) + 1, [n]])
    out: list[tuple[int, int]] = []
    for a, b in itertools.pairwise(starts.tolist()):
        for s in range(a, b, max_run):
            out.append((s, min(s + max_run, b)))
    return out


def _resize(img: Image.Image, px: int) -> Image.Image:
    """Resize a square tile to px x px: box average when shrinking, bicubic when enlarging."""
    shrink = img.width > px
    return img.resize((px, px), Image.Resampling.BOX if shrink else Image.Resampling.BICUBIC)


def read_tiles(
    slide: Slide,
    grid: TileGrid,
    batch_size: int = 64,
    *,
    max_run: int = 32,
    quality: QualityConfig | None = None,
) -> Iterator[TileBatch]:
    """Yield the grid's tiles in grid order, ``batch_size`` at a time (the last may be short).

    ``max_run`` caps how many adjacent tiles one read covers (memory: about
    ``max_run * read_px**2 * 4`` bytes). With ``quality``, each batch carries its tiles'
    blank and out-of-focus flags (:func:`~pathgen_batch.slides.artefacts.tile_quality`).
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size: expected a positive integer, got {batch_size!r}")
    if max_run < 1:
        raise ValueError(f"max_run: expected a positive integer, got {max_run!r}")
    px, rpx, level = grid.tile_px, grid.read_px, grid.level
    ds = slide.level_downsamples[level]
    ids = round(ds)
    exact = abs(ds - ids) < 1e-9 and grid.size_l0 == rpx * ids  # grid = level pixel grid
    factor = rpx // px if rpx > px and rpx % px == 0 else 0  # integer reduction of whole runs
    run_cap = max_run if exact and (rpx == px or factor) else 1
    n = len(grid)
    for b0 in range(0, n, batch_size):
        b1 = min(n, b0 + batch_size)
        xs, ys = grid.x[b0:b1], grid.y[b0:b1]
        images = np.empty((b1 - b0, px, px, 3), dtype=np.uint8)  # (B, px, px, 3)
        for s, e in _runs(xs, ys, grid.size_l0, run_cap):
            k = e - s
            if exact:
                arr = slide.read_level(level, int(xs[s]) // ids, int(ys[s]) // ids, k * rpx, rpx)
            else:  # k == 1
                arr = opaque_rgb(slide.read_region_pil((int(xs[s]), int(ys[s])), level, (rpx, rpx)))
            if factor:  # (rpx, k * rpx, 3) -> (px, k * px, 3), box average
                arr = np.asarray(Image.fromarray(arr).reduce(factor))
            elif rpx != px:  # k == 1: one tile, arbitrary resize
                arr = np.asarray(_resize(Image.fromarray(arr), px))
            images[s:e] = arr.reshape(px, k, px, 3).transpose(1, 0, 2, 3)
        yield TileBatch(
            x=xs.copy(),
            y=ys.copy(),
            index=np.arange(b0, b1, dtype=np.int64),
            images=images,
            quality=None if quality is None else tile_quality(images, quality),
        )
