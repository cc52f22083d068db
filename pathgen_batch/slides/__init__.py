"""Whole-slide images: opening (OpenSlide), MPP, tissue mask (pen marks and annotated regions
excluded), tile grid, batched tile reads (optionally flagged blank or out of focus).

This package is the only code in the project that imports OpenSlide::

    from pathgen_batch.slides import open_slide, read_exclusions, read_tiles, tile_grid, ...

    with open_slide("slide.svs") as s:
        mask = tissue_mask(s, exclude=read_exclusions(Path("marks.geojson").read_text()))
        grid = tile_grid(s, TileSpec(tile_px=256, mpp=0.5, min_tissue=0.5), mask)
        for batch in read_tiles(s, grid, batch_size=64):
            batch.images  # (B, 256, 256, 3) uint8; batch.x, batch.y level-0 px
"""

from pathgen_batch.slides.artefacts import (
    InkConfig,
    QualityConfig,
    TileQuality,
    ink_mask,
    read_exclusions,
    tile_quality,
)
from pathgen_batch.slides.grid import MPP_TOLERANCE, TileGrid, TileSpec, select_level, tile_grid
from pathgen_batch.slides.inventory import LevelInfo, SlideInfo, inspect_slide, render_overview
from pathgen_batch.slides.mpp import PLAUSIBLE_MPP, MPPResolution, resolve_mpp
from pathgen_batch.slides.reader import Slide, SlideNotFoundError, open_slide
from pathgen_batch.slides.tiles import TileBatch, read_tiles
from pathgen_batch.slides.tissue import (
    TissueConfig,
    TissueMask,
    mask_from_rgb,
    otsu_threshold,
    tissue_mask,
)

__all__ = [
    "MPP_TOLERANCE",
    "PLAUSIBLE_MPP",
    "InkConfig",
    "LevelInfo",
    "MPPResolution",
    "QualityConfig",
    "Slide",
    "SlideInfo",
    "SlideNotFoundError",
    "TileBatch",
    "TileGrid",
    "TileQuality",
    "TileSpec",
    "TissueConfig",
    "TissueMask",
    "ink_mask",
    "inspect_slide",
    "mask_from_rgb",
    "open_slide",
    "otsu_threshold",
    "read_exclusions",
    "read_tiles",
    "render_overview",
    "resolve_mpp",
    "select_level",
    "tile_grid",
    "tile_quality",
    "tissue_mask",
]
