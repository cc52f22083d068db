"""``pathgen-batch slides``: look at whole-slide images before scoring them."""

from __future__ import annotations

import json
from pathlib import Path

import click

from pathgen_batch.slides import SlideInfo, TileSpec, inspect_slide


@click.group()
def slides() -> None:
    """Read whole-slide images: format, pyramid, MPP, tissue and tiles."""


def _format_info(info: SlideInfo) -> str:
    w, h = info.dimensions
    lines = [
        f"path:        {info.path}",
        f"format:      {info.format} (vendor {info.vendor}), {info.file_bytes:,} bytes",
        f"dimensions:  {w} x {h} px at level 0",
        f"mpp:         {info.mpp:.4g} um/px (from {info.mpp_source})"
        + (f", objective {info.objective_power:g}x" if info.objective_power else ""),
        f"levels:      {info.level_count}",
    ]
    for i, lv in enumerate(info.levels):
        mpp = f"{lv.mpp:.4g} um/px" if lv.mpp is not None else "?"
        lines.append(
            f"  level {i}:   {lv.width} x {lv.height} px, downsample {lv.downsample:.4g}, {mpp}"
        )
    lines += [
        f"tissue:      {info.tissue_fraction:.1%} of the slide (mask from level {info.mask_level})",
        f"tiles:       {info.n_tiles} of {info.n_candidate_tiles} kept "
        f"(>= {info.min_tissue:.0%} tissue); {info.tile_px} px at {info.target_mpp:g} um/px = "
        f"{info.tile_size_l0} level-0 px, read from level {info.tile_level} at "
        f"{info.tile_read_px} px",
    ]
    return "\n".join(lines)


@slides.command("inspect")
@click.argument("path", type=click.Path(dir_okay=True, path_type=Path))
@click.option("--mpp", type=float, default=None, help="Level-0 um/px; overrides the slide's own.")
@click.option(
    "--tile-px", type=int, default=TileSpec.tile_px, show_default=True, help="Tile side in pixels."
)
@click.option(
    "--target-mpp",
    type=float,
    default=TileSpec.mpp,
    show_default=True,
    help="Tile resolution in um/px.",
)
@click.option(
    "--min-tissue",
    type=float,
    default=TileSpec.min_tissue,
    show_default=True,
    help="Minimum tissue fraction of a kept tile.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the inventory as JSON.")
@click.option(
    "--thumbnail",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Write a PNG thumbnail with the tissue mask tinted and the kept tiles outlined.",
)
def inspect_cmd(
    path: Path,
    mpp: float | None,
    tile_px: int,
    target_mpp: float,
    min_tissue: float,
    as_json: bool,
    thumbnail: Path | None,
) -> None:
    """Inventory of the slide at PATH: format, levels, MPP, tissue, tiles.

    Errors (unsupported or unreadable file, unknown MPP, bad options) are one line and exit 2.
    """
    spec = TileSpec(tile_px=tile_px, mpp=target_mpp, min_tissue=min_tissue)
    info = inspect_slide(path, spec, mpp_override=mpp, overview_path=thumbnail)
    if as_json:
        click.echo(json.dumps(info.to_dict(), indent=2))
    else:
        click.echo(_format_info(info))
        if thumbnail is not None:
            click.echo(f"thumbnail:   {thumbnail}")
