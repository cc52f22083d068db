"""Tissue detection on a low-resolution view of the slide.

H&E tissue is coloured (eosin pink, haematoxylin purple) and the glass around it is white or
grey, so the HSV saturation ``(max - min) / max`` of a pixel separates them well. The mask is:

1. a low-resolution RGB view at about ``mask_mpp`` um/px (16 um/px, the 1/64 downsample of a
   40x scan that tissue segmentation usually runs at): the coarsest pyramid level not coarser
   than that, reduced by an integer box factor. Without a known MPP the view is the coarsest
   level at least ``fallback_side`` px long. The view is capped at ``max_side`` px and read in
   strips, so slides without a pyramid never need a whole level in memory; transparent areas
   count as white;
2. saturation above Otsu's threshold on its histogram, floored at ``min_saturation`` so that a
   slide of bare glass (whose histogram is only noise) yields no tissue;
3. morphology (scipy.ndimage, square structuring elements), with sizes given in microns and
   converted at the view's resolution: closing joins nearby fragments, small holes are filled
   (large enclosed white areas, such as fat or lumens, stay background), opening and a minimum
   object size remove specks;
4. pen ink (blue, green, black: :func:`~pathgen_batch.slides.artefacts.ink_mask`) is left out
   of Otsu's histogram and removed from the mask after the morphology, and, with the polygons
   of a user's annotation (``exclude``, level-0 px), kept as :attr:`TissueMask.excluded`: the
   tile grid drops every tile that touches an excluded pixel.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from PIL import Image
from scipy import ndimage

from pathgen_batch.errors import ConfigError
from pathgen_batch.slides.artefacts import InkConfig, Polygon, ink_mask, rasterise
from pathgen_batch.slides.reader import Slide

_STRIP_PX = 1 << 22  # level pixels read per strip when building the low-resolution view


@dataclass(frozen=True)
class TissueConfig:
    """How the tissue mask is computed. Morphology sizes are physical (um, um^2); they are
    converted to pixels at the view's resolution (at ``mask_mpp`` when the MPP is unknown)."""

    mask_mpp: float = 16.0  # um/px of the view the mask is computed on
    fallback_side: int = 1024  # view size (longer side, px) when the slide's MPP is unknown
    max_side: int = 4096
    min_saturation: float = 0.06  # HSV saturation in 0..1; Otsu's threshold is never lower
    close_um: float = 16.0  # closing radius: joins fragments up to about twice this apart
    open_um: float = 8.0  # opening radius: removes strands thinner than about twice this
    min_object_um2: float = 1024.0  # smaller pieces are dropped (debris)
    max_hole_um2: float = 4096.0  # enclosed background up to this area counts as tissue
    ink: InkConfig = field(default_factory=InkConfig)  # pen marks (enabled=False: kept)

    def __post_init__(self) -> None:
        if not self.mask_mpp > 0:
            raise ConfigError(f"TissueConfig.mask_mpp: expected > 0 um/px, got {self.mask_mpp}")
        if self.fallback_side < 1 or self.max_side < self.fallback_side:
            raise ConfigError(
                f"TissueConfig: expected 1 <= fallback_side <= max_side, got "
                f"fallback_side={self.fallback_side}, max_side={self.max_side}"
            )
        if not 0.0 <= self.min_saturation < 1.0:
            raise ConfigError(
                f"TissueConfig.min_saturation: expected 0 <= value < 1, got {self.min_saturation}"
            )
        for name in ("close_um", "open_um", "min_object_um2", "max_hole_um2"):
            if getattr(self, name) < 0:
                raise ConfigError(f"TissueConfig.{name}: expected >= 0, got {getattr(self, name)}")


@dataclass(frozen=True, eq=False)  # holds arrays: compared by identity
class TissueMask:
    """Tissue mask of a slide. ``mask`` is (h, w) bool; mask pixel (i, j) covers level-0 pixels
    ``[j * downsample_xy[0], (j + 1) * downsample_xy[0])`` x ``[i * downsample_xy[1], ...)``."""

    mask: np.ndarray  # (h, w) bool
    downsample_xy: tuple[float, float]  # level-0 px per mask px along x and y
    level: int  # pyramid level the view was read from
    threshold: float  # saturation threshold used, 0..1
    mpp: float | None = None  # um per mask px (None when the slide's MPP is unknown)
    excluded: np.ndarray | None = None  # (h, w) bool: pen ink and annotated regions

    @property
    def downsample(self) -> float:
        """Level-0 pixels per mask pixel (mean of x and y)."""
        return 0.5 * (self.downsample_xy[0] + self.downsample_xy[1])

    @property
    def tissue_fraction(self) -> float:
        """Fraction of the slide's area that is tissue."""
        return float(self.mask.mean()) if self.mask.size else 0.0

    def fraction_in(self, x: np.ndarray, y: np.ndarray, size_l0: int) -> np.ndarray:
        """Tissue fraction of square level-0 boxes ``[x, x + size_l0) x [y, y + size_l0)``.

        x, y: (n,) level-0 px. Returns (n,) float32 in 0..1 (see :func:`_box_fraction`).
        """
        return _box_fraction(self.mask, self.downsample_xy, x, y, size_l0)

    @property
    def excluded_fraction(self) -> float:
        """Fraction of the slide's area excluded (pen ink, annotated regions)."""
        return float(self.excluded.mean()) if self.excluded is not None and self.mask.size else 0.0

    def excluded_in(self, x: np.ndarray, y: np.ndarray, size_l0: int) -> np.ndarray:
        """(n,) bool: whether each box of :meth:`fraction_in` touches an excluded pixel."""
        if self.excluded is None or not self.excluded.any():
            return np.zeros(np.shape(x), dtype=bool)
        return _box_fraction(self.excluded, self.downsample_xy, x, y, size_l0) > 0


def _box_fraction(
    mask: np.ndarray, downsample_xy: tuple[float, float], x: np.ndarray, y: np.ndarray, size: int
) -> np.ndarray:
    """Share of ``mask`` pixels set in level-0 boxes ``[x, x + size) x [y, y + size)``: (n,)
    float32, from an integral image, box edges rounded to the nearest mask pixel (at least
    one mask pixel per box)."""
    h, w = mask.shape
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    dx, dy = downsample_xy
    c0 = np.clip(np.rint(x / dx), 0, w - 1).astype(np.int64)  # (n,)
    r0 = np.clip(np.rint(y / dy), 0, h - 1).astype(np.int64)
    c1 = np.clip(np.rint((x + size) / dx), c0 + 1, w).astype(np.int64)
    r1 = np.clip(np.rint((y + size) / dy), r0 + 1, h).astype(np.int64)
    integral = np.zeros((h + 1, w + 1), dtype=np.int64)  # (h+1, w+1)
    np.cumsum(np.cumsum(mask, axis=0, dtype=np.int64), axis=1, out=integral[1:, 1:])
    inside = integral[r1, c1] - integral[r0, c1] - integral[r1, c0] + integral[r0, c0]
    area = (r1 - r0) * (c1 - c0)
    return (inside / area).astype(np.float32)


def otsu_threshold(hist: np.ndarray) -> int:
    """Otsu's threshold of a 256-bin histogram: the value t maximising the between-class
    variance of {v <= t} and {v > t}. When a range of t ties (empty bins between two modes),
    the middle of the range is returned."""
    h = np.asarray(hist, dtype=np.float64)
    if h.ndim != 1 or h.size < 2:
        raise ValueError(f"hist: expected a 1-d histogram with >= 2 bins, got shape {h.shape}")
    total = h.sum()
    if total <= 0:
        return 0
    v = np.arange(h.size, dtype=np.float64)
    w0 = np.cumsum(h)[:-1] / total  # (256 - 1,) weight of class {v <= t}
    m0 = np.cumsum(h * v)[:-1] / total  # (256 - 1,) first moment of that class
    mu = (h * v).sum() / total
    w1 = 1.0 - w0
    with np.errstate(divide="ignore", invalid="ignore"):
        between = (mu * w0 - m0) ** 2 / (w0 * w1)  # = w0 w1 (mu0 - mu1)^2
    between = np.where((w0 > 0) & (w1 > 0), between, -1.0)
    best = between.max()
    if best <= 0:
        return 0
    ties = np.flatnonzero(between >= best * (1 - 1e-12))  # the maximum and exact ties
    gaps = np.flatnonzero(np.diff(ties) != 1)
    run_end = ties[gaps[0]] if gaps.size else ties[-1]  # end of the first run of ties
    return int((ties[0] + run_end) // 2)


def saturation_u8(rgb: np.ndarray) -> np.ndarray:
    """HSV saturation (max - min) / max of (H, W, 3) uint8 RGB, as (H, W) uint8 in 0..255,
    rounded down. (float32 division of integers below 2^16 floors exactly: a non-integer
    quotient is at least 1/255 from the next integer, far above float32's rounding error.)"""
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]  # (H, W) each
    mx = np.maximum(np.maximum(r, g), b)
    mn = np.minimum(np.minimum(r, g), b)
    return ((mx - mn) * np.float32(255) / np.maximum(mx, 1)).astype(np.uint8)


def _shift_combine(mask: np.ndarray, radius: int, dilate: bool) -> np.ndarray:
    """Dilation (OR) or erosion (AND) by a (2r+1) square, separably, by shifted slices.
    Pixels outside the image are background for dilation and foreground for erosion, so
    neither operation moves the image edge."""
    out = mask.copy()
    for axis in (0, 1):
        src = out.copy()
        o = np.moveaxis(out, axis, 0)  # views: combining along axis 0 of these
        s_ = np.moveaxis(src, axis, 0)
        for d in range(1, min(radius, o.shape[0] - 1) + 1):
            if dilate:
                o[d:] |= s_[:-d]
                o[:-d] |= s_[d:]
            else:
                o[d:] &= s_[:-d]
                o[:-d] &= s_[d:]
    return out


def _dilate(mask: np.ndarray, radius: int) -> np.ndarray:
    return _shift_combine(mask, radius, dilate=True)


def _erode(mask: np.ndarray, radius: int) -> np.ndarray:
    return _shift_combine(mask, radius, dilate=False)


def _fill_holes(mask: np.ndarray, max_px: int) -> np.ndarray:
    """Background regions (4-connected) of at most ``max_px`` pixels that do not touch the
    image edge become foreground."""
    labels, n = ndimage.label(~mask)  # (H, W) int32
    if n == 0:
        return mask
    keep_bg = np.bincount(labels.ravel(), minlength=n + 1) > max_px  # (n + 1,)
    keep_bg[labels[0]] = keep_bg[labels[-1]] = True
    keep_bg[labels[:, 0]] = keep_bg[labels[:, -1]] = True
    keep_bg[0] = True  # label 0 is the foreground itself
    return mask | ~keep_bg[labels]


def mask_from_rgb(
    rgb: np.ndarray, cfg: TissueConfig = TissueConfig(), view_mpp: float | None = None
) -> tuple[np.ndarray, float]:
    """Tissue mask (H, W) bool of an (H, W, 3) uint8 RGB view at ``view_mpp`` um/px (default
    ``cfg.mask_mpp``), and the saturation threshold used (0..1). Pen ink is not tissue."""
    mask, t, _ = masks_from_rgb(rgb, cfg, view_mpp)
    return mask, t


def masks_from_rgb(
    rgb: np.ndarray, cfg: TissueConfig = TissueConfig(), view_mpp: float | None = None
) -> tuple[np.ndarray, float, np.ndarray]:
    """(tissue mask, saturation threshold, pen ink mask) of a view; see :func:`mask_from_rgb`."""
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"rgb: expected (H, W, 3) uint8, got {rgb.shape} {rgb.dtype}")
    um = view_mpp if view_mpp is not None else cfg.mask_mpp  # um per view px
    close_r, open_r = round(cfg.close_um / um), round(cfg.open_um / um)
    min_object, max_hole = cfg.min_object_um2 / um**2, cfg.max_hole_um2 / um**2  # px
    ink = ink_mask(rgb, um, cfg.ink)  # (H, W)
    sat = saturation_u8(rgb)  # (H, W)
    hist = np.bincount(sat[~ink].ravel() if ink.any() else sat.ravel(), minlength=256)
    t = max(otsu_threshold(hist), cfg.min_saturation * 255)
    mask = (sat > t) & ~ink
    if close_r > 0:
        mask = _erode(_dilate(mask, close_r), close_r)
    if max_hole >= 1:
        mask = _fill_holes(mask, int(max_hole))
    if open_r > 0:
        mask = _dilate(_erode(mask, open_r), open_r)
    if ink.any():
        mask &= ~ink
    if min_object > 1 and mask.any():
        labels, n = ndimage.label(mask)
        keep = np.bincount(labels.ravel(), minlength=n + 1) >= min_object  # (n + 1,)
        keep[0] = False
        mask = keep[labels]
    return mask, float(t) / 255.0, ink


def _view_level(slide: Slide, cfg: TissueConfig) -> tuple[int, int]:
    """(level, integer reduce factor) of the low-resolution view; see the module docstring."""
    tol = 1.01  # a level within 1% of the mask resolution counts as that resolution
    level, factor = 0, 1
    if slide.has_mpp:
        for lv in range(slide.level_count):  # levels go from fine to coarse
            if slide.level_mpp(lv) <= cfg.mask_mpp * tol:
                level = lv
        factor = max(1, math.floor(cfg.mask_mpp * tol / slide.level_mpp(level)))
    else:
        for lv in range(slide.level_count):
            if max(slide.level_dimensions[lv]) >= cfg.fallback_side:
                level = lv
    longest = max(slide.level_dimensions[level])
    factor = min(factor, max(1, longest // 64))  # tiny slides keep a view of >= 64 px
    if longest // factor > cfg.max_side:
        factor = math.ceil(longest / cfg.max_side)
    return level, factor


def low_res_view(slide: Slide, level: int, factor: int) -> np.ndarray:
    """RGB view (h, w, 3) uint8 of ``level`` reduced by an integer box ``factor``."""
    width, height = slide.level_dimensions[level]
    out_w, out_h = max(1, width // factor), max(1, height // factor)
    rows_per_strip = factor * max(1, _STRIP_PX // max(1, out_w * factor * factor))
    read_w = min(width, out_w * factor)
    strips = []
    row = 0
    while row < out_h * factor and row < height:
        rows = min(rows_per_strip, out_h * factor - row, height - row)
        rgb = slide.read_level(level, 0, row, read_w, rows)  # (rows, read_w, 3)
        if factor > 1:
            rgb = np.asarray(Image.fromarray(rgb).reduce(factor))
        strips.append(rgb)
        row += rows
    return np.concatenate(strips, axis=0)  # (h, w, 3)


def tissue_mask(
    slide: Slide, cfg: TissueConfig = TissueConfig(), exclude: Sequence[Polygon] = ()
) -> TissueMask:
    """Detect tissue on a low-resolution view of ``slide``; see the module docstring.
    ``exclude``: polygons (level-0 px, e.g. from
    :func:`~pathgen_batch.slides.artefacts.read_exclusions`) whose area is not to be tiled."""
    level, factor = _view_level(slide, cfg)
    rgb = low_res_view(slide, level, factor)  # (h, w, 3)
    w0, h0 = slide.dimensions
    h, w = rgb.shape[:2]
    view_mpp = slide.mpp * 0.5 * (w0 / w + h0 / h) if slide.has_mpp else None
    mask, threshold, ink = masks_from_rgb(rgb, cfg, view_mpp)
    ds = (w0 / w, h0 / h)
    excluded = ink | rasterise(exclude, (h, w), ds) if exclude else ink
    return TissueMask(mask & ~excluded, ds, level, threshold, view_mpp, excluded)
