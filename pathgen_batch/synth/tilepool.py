"""Slides of any size drawn from a pool of tiles, for benchmarks and tests of large slides.

A :class:`TilePool` is ``K`` rendered tiles of ``tile`` px and a map with one entry per level-0
tile position saying which of them lies there (say tile 0 bare glass, the others H&E texture
inside a tissue outline). :func:`write_pooled_pyramidal_tiff` writes such a slide without
rendering or compressing it tile by tile: level 0 is written from the pool's tiles compressed
once each (once per edge shape: tiles on the right and bottom edges are cut and zero-padded,
as tifffile pads them), level 1 is assembled from the pool's tiles reduced once each, and the
levels below are reduced from level 1 by the streamed writer
(:func:`pathgen_batch.synth.writer.write_levels`). The file is byte-identical to writing the
same mosaic with :func:`~pathgen_batch.synth.writer.write_pyramidal_tiff_tiles`; it needs the
tile map, one strip of ``tile`` rows of level 1 and the levels' scratch files (raw pixels,
beside the target: 1/16 of level 0's and less at downsample 4).

The pixels repeat (``K`` distinct tiles), so such a slide is a load test (tiles to read,
decode and encode, tissue detection on a real outline), not new tissue: features of its tiles
take at most ``K`` distinct values.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Unpack

import imagecodecs
import numpy as np
from PIL import Image

from pathgen_batch.errors import ConfigError, DataError
from pathgen_batch.synth.writer import (
    PyramidOptions,
    resolve_options,
    write_levels,
)


@dataclass(frozen=True, eq=False)  # holds arrays: compared by identity
class TilePool:
    """``tiles[index[ty, tx]]`` is the level-0 tile at row ``ty``, column ``tx`` of the slide
    (cut at the slide's right and bottom edges)."""

    tiles: np.ndarray  # (K, tile, tile, 3) uint8
    index: np.ndarray  # (ceil(H / tile), ceil(W / tile)) integers in 0 .. K - 1

    def check(self, width: int, height: int, tile: int) -> None:
        """DataError unless the pool's tiles are ``tile`` px and its map fits the slide."""
        t, ix = self.tiles, self.index
        if not isinstance(t, np.ndarray) or t.dtype != np.uint8 or t.shape[1:] != (tile, tile, 3):
            got = f"{getattr(t, 'shape', type(t).__name__)} {getattr(t, 'dtype', '')}".strip()
            raise DataError(f"TilePool.tiles: expected (K, {tile}, {tile}, 3) uint8, got {got}")
        want = (-(-height // tile), -(-width // tile))
        if not isinstance(ix, np.ndarray) or ix.shape != want or ix.dtype.kind not in "iu":
            got = f"{getattr(ix, 'shape', type(ix).__name__)} {getattr(ix, 'dtype', '')}".strip()
            raise DataError(
                f"TilePool.index: expected {want} integers for a {width}x{height} px slide of "
                f"{tile} px tiles, got {got}"
            )
        if ix.size and not (int(ix.min()) >= 0 and int(ix.max()) < t.shape[0]):
            raise DataError(
                f"TilePool.index: entries must lie in 0..{t.shape[0] - 1} (the pool's tiles), "
                f"got {int(ix.min())}..{int(ix.max())}"
            )

    def rows(self, r0: int, n: int, width: int) -> np.ndarray:
        """Level-0 rows ``r0 .. r0 + n`` of the mosaic, (n, width, 3) uint8 (the streamed
        writer's ``strips``; for comparisons)."""
        tile = self.tiles.shape[1]
        out = np.empty((n, width, 3), np.uint8)
        for r in range(r0, r0 + n):
            ty, y = divmod(r, tile)
            row = self.tiles[self.index[ty], y]  # (nx, tile, 3)
            out[r - r0] = row.reshape(-1, 3)[:width]
        return out


def cut_tiles(source: np.ndarray, k: int, tile: int, seed: int = 0) -> np.ndarray:
    """``k`` tiles of ``tile`` px cut at random places of ``source`` (H, W, 3) uint8, each
    turned by a random multiple of 90 degrees: (k, tile, tile, 3) uint8."""
    h, w = source.shape[:2]
    if h < tile or w < tile:
        raise DataError(f"cut_tiles: a {w}x{h} px source is smaller than one {tile} px tile")
    rng = np.random.default_rng(seed)
    out = np.empty((k, tile, tile, 3), np.uint8)
    for i in range(k):
        y, x = int(rng.integers(0, h - tile + 1)), int(rng.integers(0, w - tile + 1))
        out[i] = np.rot90(source[y : y + tile, x : x + tile], int(rng.integers(0, 4)))
    return out


def _jpeg(tile_px: np.ndarray, quality: int) -> bytes:
    """One tile as tifffile's JPEG compression of an RGB tile writes it (YCbCr, 2x2)."""
    return bytes(
        imagecodecs.jpeg_encode(
            tile_px, level=quality, colorspace="RGB", outcolorspace="YCBCR", subsampling=(2, 2)
        )
    )


class _Mosaic:
    """The pool's tiles as the writer needs them, each compressed and reduced once per shape."""

    def __init__(self, pool: TilePool, width: int, height: int, o: PyramidOptions) -> None:
        self.pool, self.o = pool, o
        self.tile, self.d = o["tile"], o["downsample"]
        ny, nx = pool.index.shape
        self.hs = [min(self.tile, height - ty * self.tile) for ty in range(ny)]
        self.ws = [min(self.tile, width - tx * self.tile) for tx in range(nx)]
        self._enc: dict[tuple[int, int, int], bytes] = {}
        self._red: dict[tuple[int, int, int], np.ndarray] = {}

    def enc(self, k: int, h: int, w: int) -> bytes:
        key = (k, h, w)
        if key not in self._enc:
            full = np.zeros((self.tile, self.tile, 3), np.uint8)  # tifffile pads with zeros
            full[:h, :w] = self.pool.tiles[k, :h, :w]
            self._enc[key] = _jpeg(full, self.o["quality"])
        return self._enc[key]

    def red(self, k: int, h: int, w: int) -> np.ndarray:
        key = (k, h, w)
        if key not in self._red:
            cut = Image.fromarray(np.ascontiguousarray(self.pool.tiles[k, :h, :w]))
            self._red[key] = np.asarray(cut.reduce(self.d))
        return self._red[key]

    def level0(self) -> Iterator[bytes]:
        """Level 0's encoded tiles in row-major order."""
        for ty, h in enumerate(self.hs):
            row = self.pool.index[ty]
            for tx, w in enumerate(self.ws):
                yield self.enc(int(row[tx]), h, w)

    def level1(self) -> Iterator[np.ndarray]:
        """Level 1 in strips of ``tile`` rows: ``d`` bands of ``tile / d`` rows, each band
        the reduced tiles of one row of level 0."""
        bands: list[np.ndarray] = []
        for ty, h in enumerate(self.hs):
            row = self.pool.index[ty]
            bands.append(
                np.concatenate([self.red(int(row[tx]), h, w) for tx, w in enumerate(self.ws)], 1)
            )
            if len(bands) == self.d or ty == len(self.hs) - 1:
                yield np.concatenate(bands) if len(bands) > 1 else bands[0]
                bands = []

    def file_bytes(self) -> int:
        """About the file's size: level 0 exactly (the pool's compressed tiles where they lie),
        each level below as twice its share of level 0's pixels (reduced H&E is denser: level 1
        of the benchmark slide is 0.097 of level 0 at downsample 4, 1.55 times 1/16)."""
        ix, tile = self.pool.index, self.tile
        level0 = 0
        for rows, h in ((ix[:-1], tile), (ix[-1:], self.hs[-1])):
            for block, w in ((rows[:, :-1], tile), (rows[:, -1:], self.ws[-1])):
                counts = np.bincount(block.ravel(), minlength=self.pool.tiles.shape[0])
                level0 += sum(int(c) * len(self.enc(k, h, w)) for k, c in enumerate(counts) if c)
        below = sum(self.d ** (-2 * i) for i in range(1, self.o["levels"]))
        return int(level0 * (1 + 2 * below)) + 2**16


def pooled_file_bytes(
    width: int, height: int, pool: TilePool, **options: Unpack[PyramidOptions]
) -> int:
    """About the size in bytes of :func:`write_pooled_pyramidal_tiff`'s file for these
    arguments (a slight overestimate), computed from the pool's compressed tiles."""
    o = _checked(width, height, pool, options)
    return _Mosaic(pool, width, height, o).file_bytes()


def _checked(width: int, height: int, pool: TilePool, options: PyramidOptions) -> PyramidOptions:
    o = resolve_options(width, height, options)
    if o["tile"] % o["downsample"]:
        raise ConfigError(
            f"write_pooled_pyramidal_tiff: tile {o['tile']} px is not a multiple of downsample "
            f"{o['downsample']}"
        )
    pool.check(width, height, o["tile"])
    return o


def write_pooled_pyramidal_tiff(
    path: str | Path, width: int, height: int, pool: TilePool, **options: Unpack[PyramidOptions]
) -> list[tuple[int, int]]:
    """Write the ``width`` x ``height`` px mosaic of ``pool`` as a pyramidal Aperio-style TIFF
    (options: :class:`~pathgen_batch.synth.writer.PyramidOptions`; ``tile`` must be the pool's
    tile size and a multiple of ``downsample``). Returns the (width, height) of every level.

    ConfigError, before anything is written, when the file (:func:`pooled_file_bytes`) or the
    levels' scratch files would not fit on the target's disk.
    """
    o = _checked(width, height, pool, options)
    mosaic = _Mosaic(pool, width, height, o)
    need = mosaic.file_bytes()
    return write_levels(path, width, height, mosaic.level0(), mosaic.level1(), o, need)
