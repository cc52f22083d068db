"""The tile grid: square tiles at a target physical resolution, kept by tissue fraction (and
dropped when they touch a region the mask excludes: pen ink, a user's annotation).

A tile of ``tile_px`` pixels at ``mpp`` um/px covers ``size_l0 = round(tile_px * mpp / mpp0)``
level-0 pixels (mpp0: the slide's level-0 resolution). Tiles sit on a non-overlapping grid
anchored at (0, 0), only whole tiles inside the slide; a tile's identity is its level-0
(x, y) together with ``size_l0``.

Pixels are read from the coarsest pyramid level that is not coarser than the target (within
``MPP_TOLERANCE``), so nothing is upsampled when a finer level exists; ``read_px`` level pixels
are read per tile and resized to ``tile_px`` only when they differ.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from pathgen_batch.errors import ConfigError, NoTissueError
from pathgen_batch.slides.reader import Slide
from pathgen_batch.slides.tissue import TissueMask, tissue_mask

MPP_TOLERANCE = 0.01  # a level within 1% of the target MPP counts as the target resolution


@dataclass(frozen=True)
class TileSpec:
    """Tiles of ``tile_px`` pixels at ``mpp`` um/px, kept when ``>= min_tissue`` is tissue."""

    tile_px: int = 256
    mpp: float = 0.5
    min_tissue: float = 0.5

    def __post_init__(self) -> None:
        if isinstance(self.tile_px, bool) or not isinstance(self.tile_px, int) or self.tile_px < 1:
            raise ConfigError(
                f"TileSpec.tile_px: expected a positive integer, got {self.tile_px!r}"
            )
        if not isinstance(self.mpp, int | float) or not math.isfinite(self.mpp) or self.mpp <= 0:
            raise ConfigError(
                f"TileSpec.mpp: expected a positive number of um/px, got {self.mpp!r}"
            )
        if not isinstance(self.min_tissue, int | float) or not 0.0 <= self.min_tissue <= 1.0:
            raise ConfigError(
                f"TileSpec.min_tissue: expected a fraction in [0, 1], got {self.min_tissue!r}"
            )


DEFAULT_TILE_SPEC = TileSpec()


@dataclass(frozen=True, eq=False)  # holds arrays: compared by identity
class TileGrid:
    """Kept tiles of one slide, in row-major order (by y, then x)."""

    x: np.ndarray  # (n,) int64, level-0 px of the tile's left edge
    y: np.ndarray  # (n,) int64, level-0 px of the tile's top edge
    tissue: np.ndarray  # (n,) float32, tissue fraction of each tile
    size_l0: int  # tile side in level-0 px
    level: int  # pyramid level the pixels are read from
    read_px: int  # tile side in pixels of ``level``; resized to tile_px when different
    spec: TileSpec = field(default_factory=TileSpec)
    n_candidates: int = 0  # whole tiles in the slide before tissue filtering

    def __len__(self) -> int:
        return int(self.x.shape[0])

    @property
    def tile_px(self) -> int:
        return self.spec.tile_px

    @property
    def needs_resize(self) -> bool:
        return self.read_px != self.spec.tile_px


def select_level(slide: Slide, target_mpp: float) -> int:
    """Coarsest level whose MPP is not coarser than ``target_mpp`` (level 0 if all are)."""
    best = 0
    for lv in range(slide.level_count):
        fine_enough = slide.level_mpp(lv) <= target_mpp * (1 + MPP_TOLERANCE)
        if fine_enough and slide.level_mpp(lv) >= slide.level_mpp(best):
            best = lv
    return best


def grid_geometry(slide: Slide, spec: TileSpec) -> tuple[int, int, int]:
    """(size_l0, level, read_px) of ``spec``'s tiles on ``slide``; needs the slide's MPP."""
    mpp0 = slide.mpp
    size_l0 = round(spec.tile_px * spec.mpp / mpp0)
    if size_l0 < 1:
        raise ConfigError(
            f"{slide.path}: a {spec.tile_px} px tile at {spec.mpp} um/px is smaller than one "
            f"pixel of this slide ({mpp0:.4g} um/px at level 0); use a larger tile or target MPP"
        )
    level = select_level(slide, spec.mpp)
    if abs(slide.level_mpp(level) / spec.mpp - 1) <= MPP_TOLERANCE:
        read_px = spec.tile_px
    else:
        read_px = max(1, round(size_l0 / slide.level_downsamples[level]))
    return size_l0, level, read_px


def tile_grid(
    slide: Slide,
    spec: TileSpec = DEFAULT_TILE_SPEC,
    mask: TissueMask | None = None,
    *,
    allow_empty: bool = False,
) -> TileGrid:
    """Tiles of ``slide`` at ``spec`` holding at least ``spec.min_tissue`` tissue.

    ``mask`` defaults to :func:`tissue_mask` of the slide. Raises NoTissueError when no tile is
    kept, unless ``allow_empty`` (then the grid has length 0).
    """
    if not isinstance(spec, TileSpec):
        raise TypeError(f"spec: expected a TileSpec, got {type(spec).__name__}")
    size_l0, level, read_px = grid_geometry(slide, spec)
    if mask is None:
        mask = tissue_mask(slide)
    w0, h0 = slide.dimensions
    nx, ny = w0 // size_l0, h0 // size_l0
    gy, gx = np.meshgrid(
        np.arange(ny, dtype=np.int64) * size_l0,
        np.arange(nx, dtype=np.int64) * size_l0,
        indexing="ij",
    )  # (ny, nx) each, row-major
    x, y = gx.ravel(), gy.ravel()  # (ny * nx,)
    tissue = mask.fraction_in(x, y, size_l0) if x.size else np.zeros(0, dtype=np.float32)
    keep = (tissue >= spec.min_tissue) & ~mask.excluded_in(x, y, size_l0)
    grid = TileGrid(
        x=x[keep],
        y=y[keep],
        tissue=tissue[keep],
        size_l0=size_l0,
        level=level,
        read_px=read_px,
        spec=spec,
        n_candidates=int(x.size),
    )
    if len(grid) == 0 and not allow_empty:
        if x.size == 0:
            why = (
                f"the slide ({w0}x{h0} px) is smaller than one tile ({size_l0} level-0 px = "
                f"{spec.tile_px} px at {spec.mpp} um/px)"
            )
        else:
            why = (
                f"none of its {x.size} tiles ({spec.tile_px} px at {spec.mpp} um/px) holds "
                f">= {spec.min_tissue:.0%} tissue (the slide is {mask.tissue_fraction:.1%} "
                "tissue); lower min_tissue (CLI: --min-tissue) or check the slide"
            )
        raise NoTissueError(slide.path, why)
    return grid
