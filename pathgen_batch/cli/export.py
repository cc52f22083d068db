"""``pathgen-batch export``: one slide of a run for other viewers (QuPath GeoJSON, overlay PNG)."""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from typing import Any

import click
from PIL import Image

from pathgen_batch import storage

_SETTINGS = {"help_option_names": ["-h", "--help"]}


@click.group(context_settings=_SETTINGS)
def export() -> None:
    """Export one scored slide from the output tables (a folder or s3://bucket/prefix).

    \b
      pathgen-batch export geojson OUTPUT_ROOT --slide ID --out tiles.geojson
      pathgen-batch export overlay OUTPUT_ROOT --slide ID --level 4 --out heatmap.png

    Only the tables are read: the slide is neither opened nor downloaded.
    """


def _common(fn: Callable[..., Any]) -> Callable[..., Any]:
    fn = click.option("--out", required=True, help="File or s3:// URI to write.")(fn)
    fn = click.option("--run", "run_id", default=None, help="Run id [latest that scored it].")(fn)
    fn = click.option("--slide", "slide_id", required=True, help="Slide id.")(fn)
    return click.argument("output_root", envvar="PATHGEN_OUTPUT")(fn)


@export.command("geojson", context_settings=_SETTINGS)
@_common
@click.option(
    "--object-type",
    type=click.Choice(["tile", "detection", "annotation"]),
    default="tile",
    show_default=True,
    help="QuPath object type of each tile.",
)
def geojson_cmd(
    output_root: str, slide_id: str, run_id: str | None, out: str, object_type: str
) -> None:
    """Tiles as GeoJSON polygons (level-0 px) with attention per family and the slide's
    prediction as measurements; QuPath: File > Import objects from file, or drag the file
    onto the open slide."""
    from pathgen_batch.report.export import load_slide, slide_geojson

    view = load_slide(storage.normalise(output_root), slide_id, run_id)
    doc = slide_geojson(view, object_type)  # type: ignore[arg-type]
    storage.write_bytes(out, (json.dumps(doc, allow_nan=False) + "\n").encode())
    click.echo(
        f"wrote {len(doc['features'])} tiles of {view.slide_id} (run {view.run_id}) to {out}",
        err=True,
    )


@export.command("overlay", context_settings=_SETTINGS)
@_common
@click.option(
    "--level",
    type=click.IntRange(0, 20),
    required=True,
    help="Pyramid level: the PNG is the level-0 size divided by 2**LEVEL.",
)
@click.option(
    "--family",
    default="mean",
    show_default=True,
    help="Gene family whose attention is drawn ('mean': the mean over families).",
)
@click.option(
    "--background/--no-background",
    default=True,
    show_default=True,
    help="Over the stored thumbnail (RGB), or alone as a transparent RGBA overlay.",
)
def overlay_cmd(
    output_root: str,
    slide_id: str,
    run_id: str | None,
    out: str,
    level: int,
    family: str,
    background: bool,
) -> None:
    """The attention heatmap of one slide as a PNG at pyramid level LEVEL."""
    from pathgen_batch.report.export import load_slide, overlay_image

    view = load_slide(storage.normalise(output_root), slide_id, run_id)
    rgb = overlay_image(view, level, family, background=background)
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    storage.write_bytes(out, buf.getvalue())
    click.echo(
        f"wrote a {rgb.shape[1]} x {rgb.shape[0]} px overlay of {view.slide_id} to {out}", err=True
    )
