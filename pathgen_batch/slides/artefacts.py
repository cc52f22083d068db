"""Artefacts that are not tissue: pen marks on the low-resolution view, blank and out-of-focus
tiles, and the regions a user excludes with a GeoJSON annotation.

**Pen marks.** H&E has hues from about 260 deg (haematoxylin purple) through 360 deg to 20 deg
(eosin pink), and is never dark grey. Pathologists' markers are blue (hue about 200-240 deg),
green (about 80-170 deg) or black (very dark): :func:`ink_mask` marks view pixels whose hue
lies in the blue or green band at a clear saturation, or whose value (max of R, G, B) is very
low, keeps only connected pieces of at least ``min_area_um2`` (strokes, not single dark or
bluish pixels of tissue) and grows them by ``dilate_um`` (the anti-aliased edge of a stroke).

**Tile quality.** :func:`tile_quality` gives, per tile, the share of tissue-coloured pixels
(``blank`` below ``blank_share``) and a focus measure: the variance of a 4-neighbour Laplacian
of the grey tile reduced 2x2 (sharp nuclei edges give hundreds; a blurred scan tens). Cheap:
one pass over a quarter of the pixels.

**Annotations.** :func:`read_exclusions` reads GeoJSON (a FeatureCollection, Feature or bare
geometry) of Polygons and MultiPolygons in level-0 pixel coordinates (holes honoured) with the
standard json module; :func:`rasterise` draws them onto the tissue mask's grid.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

from pathgen_batch.errors import ConfigError, DataError

Ring = list[tuple[float, float]]
Polygon = list[Ring]  # exterior ring, then holes


@dataclass(frozen=True)
class InkConfig:
    """Which view pixels are pen ink (hues in degrees, saturation and value in 0..1)."""

    enabled: bool = True
    blue_hue: tuple[float, float] = (180.0, 245.0)
    green_hue: tuple[float, float] = (70.0, 180.0)
    min_saturation: float = 0.25  # blue and green ink are at least this saturated
    max_black_value: float = 0.18  # black ink: max(R, G, B) / 255 below this
    min_area_um2: float = 4096.0  # smaller ink-coloured pieces are tissue or dust
    dilate_um: float = 32.0

    def __post_init__(self) -> None:
        for name in ("blue_hue", "green_hue"):
            lo, hi = getattr(self, name)
            if not 0 <= lo < hi <= 360:
                raise ConfigError(
                    f"InkConfig.{name}: expected 0 <= low < high <= 360, got {lo, hi}"
                )
        for name in ("min_saturation", "max_black_value"):
            if not 0 <= getattr(self, name) <= 1:
                raise ConfigError(f"InkConfig.{name}: expected 0..1, got {getattr(self, name)}")
        if self.min_area_um2 < 0 or self.dilate_um < 0:
            raise ConfigError("InkConfig: min_area_um2 and dilate_um must be >= 0")


def hsv(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Hue in degrees [0, 360), saturation and value in 0..1 of (H, W, 3) uint8 RGB; each
    (H, W) float32 (hue 0 where the pixel is grey)."""
    x = rgb.astype(np.float32) / 255.0  # (H, W, 3)
    r, g, b = x[..., 0], x[..., 1], x[..., 2]
    mx, mn = x.max(axis=-1), x.min(axis=-1)
    d = mx - mn
    safe = np.where(d > 0, d, 1.0)
    hue = np.where(
        mx == r, (60.0 * (g - b) / safe) % 360.0,
        np.where(mx == g, 60.0 * (b - r) / safe + 120.0, 60.0 * (r - g) / safe + 240.0),
    )  # fmt: skip
    hue = np.where(d > 0, hue, 0.0).astype(np.float32)
    sat = np.where(mx > 0, d / np.where(mx > 0, mx, 1.0), 0.0).astype(np.float32)
    return hue, sat, mx.astype(np.float32)


def ink_mask(rgb: np.ndarray, view_mpp: float, cfg: InkConfig = InkConfig()) -> np.ndarray:
    """Pen ink (H, W) bool of an (H, W, 3) uint8 view at ``view_mpp`` um/px; see the module
    docstring. All False when ``cfg.enabled`` is off."""
    if not cfg.enabled or rgb.size == 0:
        return np.zeros(rgb.shape[:2], dtype=bool)
    hue, sat, val = hsv(rgb)
    coloured = sat >= cfg.min_saturation
    blue = coloured & (hue >= cfg.blue_hue[0]) & (hue < cfg.blue_hue[1])
    green = coloured & (hue >= cfg.green_hue[0]) & (hue < cfg.green_hue[1])
    ink = blue | green | (val < cfg.max_black_value)
    min_px = cfg.min_area_um2 / view_mpp**2
    if ink.any() and min_px > 1:
        labels, n = ndimage.label(ink, structure=np.ones((3, 3), dtype=bool))
        keep = np.bincount(labels.ravel(), minlength=n + 1) >= min_px  # (n + 1,)
        keep[0] = False
        ink = keep[labels]
    r = round(cfg.dilate_um / view_mpp)
    if r > 0 and ink.any():
        ink = ndimage.binary_dilation(ink, structure=np.ones((2 * r + 1, 2 * r + 1), dtype=bool))
    return ink


# -- tiles ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class QualityConfig:
    """When a tile counts as blank or out of focus (see :func:`tile_quality`)."""

    tissue_saturation: float = 0.1  # a pixel is tissue-coloured above this HSV saturation
    blank_share: float = 0.1  # blank: fewer tissue-coloured pixels than this share
    min_focus: float = 40.0  # out of focus: Laplacian variance below this (0..255 grey levels)


@dataclass(frozen=True, eq=False)  # holds arrays
class TileQuality:
    tissue_share: np.ndarray  # (B,) float32, share of tissue-coloured pixels
    focus: np.ndarray  # (B,) float32, Laplacian variance of the grey tile reduced 2x2
    blank: np.ndarray  # (B,) bool
    out_of_focus: np.ndarray  # (B,) bool (never set on a blank tile)

    FIELDS = ("tissue_share", "focus", "blank", "out_of_focus")


def tile_quality(images: np.ndarray, cfg: QualityConfig = QualityConfig()) -> TileQuality:
    """Blank and focus flags of tiles (B, H, W, 3) uint8; see the module docstring."""
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
        raise ValueError(f"images: expected (B, H, W, 3) uint8, got {images.shape} {images.dtype}")
    b, h, w = images.shape[:3]
    h2, w2 = h // 2, w // 2
    small = (
        images[:, : 2 * h2, : 2 * w2]
        .reshape(b, h2, 2, w2, 2, 3)
        .mean(axis=(2, 4), dtype=np.float32)
    )  # (B, h2, w2, 3)
    mx, mn = small.max(axis=-1), small.min(axis=-1)  # (B, h2, w2)
    sat = (mx - mn) / np.maximum(mx, 1.0)
    share = (sat > cfg.tissue_saturation).mean(axis=(1, 2)).astype(np.float32)  # (B,)
    grey = small.mean(axis=-1)  # (B, h2, w2)
    lap = (
        4 * grey[:, 1:-1, 1:-1]
        - grey[:, :-2, 1:-1] - grey[:, 2:, 1:-1] - grey[:, 1:-1, :-2] - grey[:, 1:-1, 2:]
    )  # fmt: skip
    focus = (
        lap.reshape(b, -1).var(axis=1).astype(np.float32) if lap.size else np.zeros(b, np.float32)
    )
    blank = share < cfg.blank_share
    return TileQuality(share, focus, blank, ~blank & (focus < cfg.min_focus))


# -- annotations ---------------------------------------------------------------------------
def _ring(coords: Any, where: str) -> Ring:
    if not isinstance(coords, list) or len(coords) < 3:
        raise DataError(f"{where}: a polygon ring needs at least 3 [x, y] positions")
    out: Ring = []
    for p in coords:
        if (
            not isinstance(p, list)
            or len(p) < 2
            or not all(isinstance(v, int | float) and math.isfinite(v) for v in p[:2])
        ):
            raise DataError(f"{where}: expected [x, y] numbers (level-0 px), got {p!r}")
        out.append((float(p[0]), float(p[1])))
    return out


def _geometries(obj: Any, where: str) -> list[dict[str, Any]]:
    if not isinstance(obj, dict) or "type" not in obj:
        raise DataError(f"{where}: expected a GeoJSON object with a 'type'")
    kind = obj["type"]
    if kind == "FeatureCollection":
        feats = obj.get("features")
        if not isinstance(feats, list):
            raise DataError(f"{where}: a FeatureCollection needs a 'features' list")
        return [g for i, f in enumerate(feats) for g in _geometries(f, f"{where} feature {i}")]
    if kind == "Feature":
        geom = obj.get("geometry")
        return [] if geom is None else _geometries(geom, where)
    if kind == "GeometryCollection":
        return [g for sub in obj.get("geometries", []) for g in _geometries(sub, where)]
    return [obj]


def read_exclusions(text: str | bytes, where: str = "annotation") -> list[Polygon]:
    """Polygons (exterior ring, then holes; level-0 px) of a GeoJSON text. Points and lines
    have no area and are refused, as is anything that is not GeoJSON."""
    try:
        obj = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"{where}: not JSON ({e})") from None
    polys: list[Polygon] = []
    for geom in _geometries(obj, where):
        kind, coords = geom.get("type"), geom.get("coordinates")
        if kind == "Polygon":
            rings = coords
            if not isinstance(rings, list) or not rings:
                raise DataError(f"{where}: a Polygon needs a list of rings")
            polys.append([_ring(r, where) for r in rings])
        elif kind == "MultiPolygon":
            if not isinstance(coords, list):
                raise DataError(f"{where}: a MultiPolygon needs a list of polygons")
            for poly in coords:
                if not isinstance(poly, list) or not poly:
                    raise DataError(f"{where}: a MultiPolygon needs a list of polygons")
                polys.append([_ring(r, where) for r in poly])
        else:
            raise DataError(
                f"{where}: geometry type {kind!r} has no area; expected Polygon or MultiPolygon"
            )
    return polys


def rasterise(
    polygons: Sequence[Polygon], shape: tuple[int, int], downsample_xy: tuple[float, float]
) -> np.ndarray:
    """(h, w) bool: mask pixels whose area a polygon covers (any part: a drawn outline counts),
    for a mask of ``shape`` whose pixel (i, j) covers level-0 ``[j * dx, (j + 1) * dx)`` x
    ``[i * dy, (i + 1) * dy)``."""
    h, w = shape
    img = Image.new("1", (w, h), 0)
    draw = ImageDraw.Draw(img)
    dx, dy = downsample_xy
    for poly in polygons:
        for k, ring in enumerate(poly):
            pts = [(x / dx, y / dy) for x, y in ring]
            draw.polygon(pts, fill=1 if k == 0 else 0, outline=1 if k == 0 else None)
    return np.asarray(img, dtype=bool).copy()
