"""Direct decoding of JPEG tiles from TIFF-based slides (Aperio, generic pyramidal TIFF).

For these formats an OpenSlide pyramid level is exactly one tiled TIFF page, and OpenSlide's
``read_region`` decodes its JPEG tiles and composites them through a drawing surface. Decoding
the same tiles with tifffile/imagecodecs (libjpeg-turbo) gives the same pixels several times
faster. :class:`TiffLevel` does that for regions inside the level; anything it is not sure
about (another compression, sparse tiles, a page that does not match OpenSlide's level, a
region crossing the level's edge) returns None and the caller falls back to OpenSlide.
"""

from __future__ import annotations

import logging
import os
import weakref
from pathlib import Path

import numpy as np
import tifffile

from pathgen_batch.errors import UnreadableSlideError

log = logging.getLogger(__name__)

DIRECT_FORMATS = frozenset({"aperio", "generic-tiff"})
_JPEG = 7
_PHOTOMETRIC_OK = frozenset({2, 6})  # RGB, YCbCr


class TiffLevel:
    """Decoder of one pyramid level stored as a tiled, JPEG-compressed RGB TIFF page."""

    def __init__(self, path: Path, fd: int, page: tifffile.TiffPage, level: int) -> None:
        self.path = path
        self.level = level
        self._fd = fd
        self._page = page
        self._decode = page.decode
        self._tables = page.jpegtables
        self.width = int(page.imagewidth)
        self.height = int(page.imagelength)
        self.tile_w = int(page.tilewidth)
        self.tile_h = int(page.tilelength)
        self._tiles_x = -(-self.width // self.tile_w)
        self._offsets = page.dataoffsets
        self._counts = page.databytecounts

    def _tile(self, tx: int, ty: int) -> np.ndarray | None:
        """Decoded tile (tile_h, tile_w, 3) uint8, or None when the tile is not stored."""
        index = ty * self._tiles_x + tx
        count = int(self._counts[index])
        if count == 0:
            return None
        data = os.pread(self._fd, count, int(self._offsets[index]))
        if len(data) != count:
            raise UnreadableSlideError(
                self.path,
                f"pixels of JPEG tile {index} at level {self.level} cannot be read: the tile "
                f"ends past the end of the file (truncated? {len(data)} of {count} bytes)",
            )
        try:
            segment = self._decode(data, index, jpegtables=self._tables)[0]
            if segment is None:
                raise ValueError("decoder returned no pixels")
        except (ValueError, RuntimeError, NotImplementedError, tifffile.TiffFileError) as e:
            raise UnreadableSlideError(
                self.path, f"pixels of JPEG tile {index} at level {self.level} cannot be read ({e})"
            ) from e
        return segment.reshape(segment.shape[-3:])  # (tile_h, tile_w, 3)

    def read(self, x: int, y: int, w: int, h: int) -> np.ndarray | None:
        """Pixels (h, w, 3) uint8 of the level region at (x, y); None when not inside the level
        or when a tile it needs is not stored (the caller then asks OpenSlide)."""
        if x < 0 or y < 0 or w < 1 or h < 1 or x + w > self.width or y + h > self.height:
            return None
        tw, th = self.tile_w, self.tile_h
        tx0, tx1 = x // tw, (x + w - 1) // tw
        ty0, ty1 = y // th, (y + h - 1) // th
        if tx0 == tx1 and ty0 == ty1 and x % tw == 0 and y % th == 0 and w == tw and h == th:
            return self._tile(tx0, ty0)  # the common aligned case: one tile, no copy
        out = np.empty((h, w, 3), dtype=np.uint8)  # (h, w, 3)
        for ty in range(ty0, ty1 + 1):
            for tx in range(tx0, tx1 + 1):
                tile = self._tile(tx, ty)
                if tile is None:
                    return None
                # intersection of the tile with the region, in level px
                ax, bx = max(x, tx * tw), min(x + w, (tx + 1) * tw)
                ay, by = max(y, ty * th), min(y + h, (ty + 1) * th)
                out[ay - y : by - y, ax - x : bx - x] = tile[
                    ay - ty * th : by - ty * th, ax - tx * tw : bx - tx * tw
                ]
        return out


class TiffDirect:
    """Per-slide set of :class:`TiffLevel` decoders, matched to OpenSlide's levels."""

    def __init__(self, path: Path, levels: dict[int, TiffLevel], tf: tifffile.TiffFile, fd: int):
        self.path = path
        self.levels = levels
        self._release = weakref.finalize(self, _release, tf, fd)  # also runs if never closed

    def close(self) -> None:
        self._release()

    @classmethod
    def open(
        cls,
        path: Path,
        fmt: str,
        level_dimensions: tuple[tuple[int, int], ...],
        properties: dict[str, str],
    ) -> TiffDirect | None:
        """Decoders for the levels that qualify, or None when none does or the format is not
        one where OpenSlide levels are plain TIFF pages."""
        if fmt not in DIRECT_FORMATS:
            return None
        try:
            tf = tifffile.TiffFile(path)
        except (OSError, ValueError, tifffile.TiffFileError) as e:
            log.debug("%s: no direct TIFF decoding (%s)", path, e)
            return None
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError as e:
            tf.close()
            log.debug("%s: no direct TIFF decoding (%s)", path, e)
            return None
        try:
            pages = [p for p in tf.pages if isinstance(p, tifffile.TiffPage) and p.is_tiled]
            levels: dict[int, TiffLevel] = {}
            for lv, (w, h) in enumerate(level_dimensions):
                tw = properties.get(f"openslide.level[{lv}].tile-width")
                th = properties.get(f"openslide.level[{lv}].tile-height")
                match = [
                    p
                    for p in pages
                    if (p.imagewidth, p.imagelength) == (w, h)
                    and (str(p.tilewidth), str(p.tilelength)) == (tw, th)
                ]
                if len(match) == 1 and _qualifies(match[0]):
                    levels[lv] = TiffLevel(path, fd, match[0], lv)
        except (OSError, ValueError, IndexError, KeyError, tifffile.TiffFileError) as e:
            log.debug("%s: no direct TIFF decoding (%s)", path, e)
            levels = {}
        if not levels:
            _release(tf, fd)
            return None
        return cls(path, levels, tf, fd)


def _release(tf: tifffile.TiffFile, fd: int) -> None:
    tf.close()
    os.close(fd)


def _qualifies(page: tifffile.TiffPage) -> bool:
    return (
        int(page.compression) == _JPEG
        and int(page.photometric) in _PHOTOMETRIC_OK
        and page.samplesperpixel == 3
        and page.bitspersample == 8
        and int(page.planarconfig) == 1
        and not page.extrasamples
        and page.imagedepth == 1
        and len(page.dataoffsets) == len(page.databytecounts) > 0
    )
