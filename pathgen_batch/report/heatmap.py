"""Co-attention heatmaps drawn over a slide's thumbnail.

Tiles are given in level-0 pixels (top-left corner ``x, y`` and side ``size_l0``); a thumbnail
of H x W pixels of a slide of level-0 size W0 x H0 maps level-0 ``(x, y)`` to thumbnail
``(x * W / W0, y * H / H0)``. Every tile's box is filled with its attention weight and the map
is alpha-blended over the thumbnail where it is non-zero, so pixels without attention keep the
thumbnail's colours.

The picture is the slide's row of the ``thumbnails`` table (written when the slide was tiled),
so heatmaps need only the tables, whether the archive is a folder or on S3; slides are never
opened or downloaded. A slide without a thumbnail (re-scored from stored features, or scored
before thumbnails were stored) is drawn on a blank canvas of its extent (the union of its
tiles).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from matplotlib import colormaps
from PIL import Image

from pathgen_batch.errors import DataError
from pathgen_batch.tables.thumbnails import png_array

CANVAS_GREY = 236  # blank-canvas colour (0..255) when the slide itself is not drawn


@dataclass(frozen=True, eq=False)  # holds an array: compared by identity
class Canvas:
    """The picture heatmaps are drawn on: (H, W, 3) uint8 and the level-0 size it shows."""

    image: np.ndarray  # (H, W, 3) uint8
    dims_l0: tuple[int, int]  # (W0, H0) level-0 px
    source: str  # "thumbnail" or why a blank canvas is used

    @property
    def is_thumbnail(self) -> bool:
        return self.source == "thumbnail"


def _fit(dims_l0: tuple[int, int], max_px: int) -> tuple[int, int]:
    w0, h0 = dims_l0
    scale = max_px / max(w0, h0)
    return max(1, round(w0 * scale)), max(1, round(h0 * scale))


def blank_canvas(dims_l0: tuple[int, int], max_px: int, why: str) -> Canvas:
    """A grey canvas of the slide's aspect ratio, ``max_px`` on its longer side."""
    w, h = _fit(dims_l0, max_px)
    return Canvas(np.full((h, w, 3), CANVAS_GREY, dtype=np.uint8), dims_l0, why)


def tile_extent(x: np.ndarray, y: np.ndarray, size_l0: int) -> tuple[int, int]:
    """(W0, H0): the smallest level-0 box holding every tile; x, y (N,) level-0 px."""
    if np.size(x) == 0:
        raise DataError("tile extent: no tiles")
    return int(np.max(x)) + int(size_l0), int(np.max(y)) + int(size_l0)


def thumbnail_canvas(
    thumbnail: Mapping[str, Any] | None, max_px: int, fallback_dims: tuple[int, int]
) -> Canvas:
    """The slide's stored thumbnail (a ``thumbnails`` row) scaled to ``max_px`` on its longer
    side, or a blank canvas of ``fallback_dims`` (level-0 W0, H0) when there is none."""
    if thumbnail is None:
        return blank_canvas(fallback_dims, max_px, "no stored thumbnail: drawn on a blank canvas")
    dims = (int(thumbnail["width_l0"]), int(thumbnail["height_l0"]))
    rgb = png_array(thumbnail["image_png"], f"thumbnail of {thumbnail['slide_id']}")
    if rgb.ndim != 3:
        raise DataError(f"thumbnail of {thumbnail['slide_id']}: expected an RGB image")
    w, h = _fit(dims, max_px)
    if (rgb.shape[1], rgb.shape[0]) != (w, h):
        rgb = np.asarray(Image.fromarray(rgb).resize((w, h), Image.Resampling.LANCZOS))
    return Canvas(rgb, dims, "thumbnail")


def attention_map(
    x: np.ndarray,
    y: np.ndarray,
    size_l0: int,
    attention: np.ndarray,
    dims_l0: tuple[int, int],
    shape: tuple[int, int],
) -> np.ndarray:
    """Attention painted at thumbnail scale: (H, W) float64, each tile's box holding its weight.

    x, y, attention: (N,); size_l0: tile side in level-0 px; dims_l0: (W0, H0); shape: (H, W)
    of the thumbnail. Box edges are rounded to the nearest thumbnail pixel (at least one pixel
    per tile); where boxes overlap the larger weight is kept.
    """
    xs = np.asarray(x, dtype=np.float64)
    ys = np.asarray(y, dtype=np.float64)
    att = np.asarray(attention, dtype=np.float64)
    if xs.shape != ys.shape or att.shape != xs.shape or xs.ndim != 1:
        raise DataError(
            f"attention map: x, y, attention must be (N,) alike, got {xs.shape}, {ys.shape}, "
            f"{att.shape}"
        )
    h, w = shape
    w0, h0 = dims_l0
    if w0 <= 0 or h0 <= 0 or h <= 0 or w <= 0:
        raise DataError(f"attention map: expected positive sizes, got dims {dims_l0}, {shape}")
    sx, sy = w / w0, h / h0  # thumbnail px per level-0 px
    c0 = np.clip(np.rint(xs * sx), 0, w - 1).astype(np.int64)  # (N,)
    r0 = np.clip(np.rint(ys * sy), 0, h - 1).astype(np.int64)
    c1 = np.clip(np.rint((xs + size_l0) * sx), c0 + 1, w).astype(np.int64)
    r1 = np.clip(np.rint((ys + size_l0) * sy), r0 + 1, h).astype(np.int64)
    out = np.zeros((h, w), dtype=np.float64)  # (H, W)
    for i in np.argsort(att, kind="stable"):  # larger weights painted last
        out[r0[i] : r1[i], c0[i] : c1[i]] = att[i]
    return out


def colour_map(
    amap: np.ndarray, *, alpha: float = 0.6, cmap: str = "inferno"
) -> tuple[np.ndarray, np.ndarray]:
    """``amap`` (H, W) >= 0 coloured by ``cmap`` (scaled to its maximum): colours (H, W, 3) in
    0..255 and opacity (H, W) ``alpha * (0.35 + 0.65 * a / max)`` where ``a > 0``, else 0."""
    if not 0.0 < alpha <= 1.0:
        raise DataError(f"heatmap: alpha must be in (0, 1], got {alpha}")
    top = float(amap.max()) if amap.size else 0.0
    norm = np.clip(amap / top, 0.0, 1.0) if top > 0 else np.zeros_like(amap)  # (H, W)
    colour = colormaps[cmap](norm)[..., :3] * 255.0  # (H, W, 3)
    opacity = np.where(norm > 0, alpha * (0.35 + 0.65 * norm), 0.0)  # (H, W)
    return colour, opacity


def blend(
    image: np.ndarray, amap: np.ndarray, *, alpha: float = 0.6, cmap: str = "inferno"
) -> np.ndarray:
    """The heatmap of ``amap`` (see :func:`colour_map`) blended over ``image`` (H, W, 3) uint8;
    pixels with ``a == 0`` are left untouched. Returns (H, W, 3) uint8."""
    img = np.asarray(image)
    if img.ndim != 3 or img.shape[2] != 3 or img.shape[:2] != amap.shape:
        raise DataError(
            f"blend: expected image (H, W, 3) matching map {amap.shape}, got {img.shape}"
        )
    colour, opacity = colour_map(amap, alpha=alpha, cmap=cmap)
    a = opacity[..., None]  # (H, W, 1)
    out = img.astype(np.float64) * (1.0 - a) + colour * a
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def overlay_rgba(amap: np.ndarray, *, alpha: float = 0.6, cmap: str = "inferno") -> np.ndarray:
    """The heatmap of ``amap`` (H, W) alone, as (H, W, 4) uint8 RGBA (transparent where
    ``a == 0``), to lay over the slide in a viewer."""
    colour, opacity = colour_map(amap, alpha=alpha, cmap=cmap)
    out = np.concatenate([colour, 255.0 * opacity[..., None]], axis=2)  # (H, W, 4)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)
