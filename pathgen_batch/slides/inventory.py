"""Inventory of one slide (format, pyramid, MPP, tissue, tiles) and its overview picture."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from pathgen_batch.errors import PathgenError
from pathgen_batch.slides.grid import DEFAULT_TILE_SPEC, TileGrid, TileSpec, tile_grid
from pathgen_batch.slides.reader import Slide, open_slide
from pathgen_batch.slides.tissue import TissueMask, tissue_mask

_TINT = np.array([0, 200, 70], dtype=np.float32)  # tissue overlay colour (green)
_TINT_ALPHA = 0.35
_EXCLUDED = np.array([230, 30, 30], dtype=np.float32)  # pen ink and annotated regions (red)
_GRID_COLOUR = (20, 60, 220)


@dataclass(frozen=True)
class LevelInfo:
    width: int
    height: int
    downsample: float
    mpp: float | None


@dataclass(frozen=True)
class SlideInfo:
    """What ``pathgen-batch slides inspect`` reports about a slide."""

    path: str
    format: str  # OpenSlide's detected format, e.g. "aperio", "generic-tiff"
    vendor: str
    file_bytes: int
    dimensions: tuple[int, int]  # (w, h) at level 0
    levels: tuple[LevelInfo, ...]
    mpp: float
    mpp_source: str
    objective_power: float | None
    tissue_fraction: float
    mask_level: int
    tile_px: int
    target_mpp: float
    min_tissue: float
    tile_size_l0: int
    tile_level: int
    tile_read_px: int
    n_candidate_tiles: int
    n_tiles: int
    excluded_fraction: float = 0.0  # pen ink and annotated regions, share of the slide

    @property
    def level_count(self) -> int:
        return len(self.levels)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-serialisable data."""
        out = dataclasses.asdict(self)
        out["dimensions"] = list(self.dimensions)
        out["levels"] = [dataclasses.asdict(lv) for lv in self.levels]
        out["level_count"] = self.level_count
        return out


def render_overview(
    slide: Slide, mask: TissueMask, grid: TileGrid | None, max_px: int = 1024
) -> Image.Image:
    """Thumbnail with the tissue mask (green) and the excluded regions (red: pen ink,
    annotations) as tinted overlays and the kept tiles outlined."""
    thumb = slide.thumbnail(max_px).astype(np.float32)  # (H, W, 3)
    th, tw = thumb.shape[:2]

    def scaled(a: np.ndarray) -> np.ndarray:  # (h, w) bool -> (H, W, 1) bool
        m = Image.fromarray(a.astype(np.uint8) * 255).resize((tw, th), Image.Resampling.NEAREST)
        return (np.asarray(m) > 0)[..., None]

    blended = np.where(scaled(mask.mask), (1 - _TINT_ALPHA) * thumb + _TINT_ALPHA * _TINT, thumb)
    if mask.excluded is not None and mask.excluded.any():
        tint = (1 - _TINT_ALPHA) * blended + _TINT_ALPHA * _EXCLUDED
        blended = np.where(scaled(mask.excluded), tint, blended)
    img = Image.fromarray(np.clip(blended + 0.5, 0, 255).astype(np.uint8))
    if grid is not None and len(grid):
        w0, h0 = slide.dimensions
        sx, sy = tw / w0, th / h0
        draw = ImageDraw.Draw(img)
        for x, y in zip(grid.x.tolist(), grid.y.tolist(), strict=True):
            box = (x * sx, y * sy, (x + grid.size_l0) * sx - 1, (y + grid.size_l0) * sy - 1)
            draw.rectangle(box, outline=_GRID_COLOUR, width=1)
    return img


def inspect_slide(
    path: str | Path,
    spec: TileSpec = DEFAULT_TILE_SPEC,
    mpp_override: float | None = None,
    *,
    overview_path: str | Path | None = None,
    overview_px: int = 1024,
) -> SlideInfo:
    """Open ``path`` and report its inventory; optionally write the overview PNG.

    A slide with no tile over ``spec.min_tissue`` reports ``n_tiles == 0`` (no error); a slide
    without MPP raises MissingMPPError (the tile geometry needs it).
    """
    p = Path(path)
    with open_slide(p, mpp_override) as s:
        mpp = s.mpp
        mask = tissue_mask(s)
        grid = tile_grid(s, spec, mask, allow_empty=True)
        if overview_path is not None:
            out = Path(overview_path)
            try:
                render_overview(s, mask, grid, overview_px).save(out)
            except (OSError, ValueError) as e:
                raise PathgenError(f"{out}: cannot write the overview image ({e})") from e
        levels = tuple(
            LevelInfo(w, h, d, mpp * d)
            for (w, h), d in zip(s.level_dimensions, s.level_downsamples, strict=True)
        )
        return SlideInfo(
            path=str(p),
            format=s.format,
            vendor=s.vendor,
            file_bytes=s.path.stat().st_size,
            dimensions=s.dimensions,
            levels=levels,
            mpp=mpp,
            mpp_source=s.mpp_source,
            objective_power=s.objective_power,
            tissue_fraction=mask.tissue_fraction,
            mask_level=mask.level,
            tile_px=spec.tile_px,
            target_mpp=spec.mpp,
            min_tissue=spec.min_tissue,
            tile_size_l0=grid.size_l0,
            tile_level=grid.level,
            tile_read_px=grid.read_px,
            n_candidate_tiles=grid.n_candidates,
            n_tiles=len(grid),
            excluded_fraction=mask.excluded_fraction,
        )
