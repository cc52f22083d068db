"""One slide of a run for other viewers: GeoJSON tiles (QuPath) and heatmap overlay PNGs.

Both read the output tables only (``predictions``, ``tile_attention``, ``thumbnails``), so they
work the same for folder and S3 outputs and never open the slide.

- :func:`slide_geojson`: a GeoJSON ``FeatureCollection`` (RFC 7946) with one ``Polygon``
  feature per tile, in level-0 pixel coordinates (x right, y down, as QuPath's image space),
  each ring closed and wound counter-clockwise in (x, y). ``properties`` carry what QuPath
  reads: ``objectType`` (``tile`` by default), ``name``, ``measurements`` (numbers only: the
  attention of each gene family and the slide's prediction) and ``metadata`` (strings: slide,
  run, model version, predicted grade, risk group).
- :func:`overlay_image`: the attention heatmap at a pyramid level L (level-0 size divided by
  2 ** L), over the stored thumbnail or alone as a transparent RGBA overlay.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pandas as pd
import pyarrow.compute as pc
from PIL import Image

from pathgen_batch.errors import DataError
from pathgen_batch.report.data import pick_run, read_thumbnails
from pathgen_batch.report.heatmap import attention_map, blend, overlay_rgba, tile_extent
from pathgen_batch.storage import check_slide_id
from pathgen_batch.tables import read_table
from pathgen_batch.tables.thumbnails import png_array

ObjectType = Literal["tile", "detection", "annotation"]
OBJECT_TYPES: tuple[str, ...] = ("tile", "detection", "annotation")
MEAN_FAMILY = "mean"  # overlay of the mean attention over families
MAX_OVERLAY_PX = 200_000_000  # width x height of the largest overlay written


@dataclass(frozen=True, eq=False)  # holds frames: compared by identity
class SlideView:
    """What the tables hold about one scored slide of one run."""

    run_id: str
    slide_id: str
    prediction: dict[str, Any]  # its predictions row
    tiles: pd.DataFrame  # one row per tile: x, y, size_l0, then one column per family
    families: list[str]
    thumbnail: dict[str, Any] | None  # its thumbnails row (None: scored without one)

    @property
    def dims_l0(self) -> tuple[int, int]:
        """(W0, H0): the slide's level-0 extent (the tiles' extent without a thumbnail)."""
        if self.thumbnail is not None:
            return int(self.thumbnail["width_l0"]), int(self.thumbnail["height_l0"])
        return tile_extent(
            self.tiles["x"].to_numpy(), self.tiles["y"].to_numpy(), int(self.tiles["size_l0"].max())
        )


def _slide_run(output: str, slide_id: str, run_id: str | None) -> str:
    if run_id is not None:
        return pick_run(output, run_id)
    pick_run(output, None)  # a clear error when the output holds no complete run
    found = read_table(
        output, "predictions", columns=["scored_at"], filter=pc.field("slide_id") == slide_id
    ).to_pandas()
    if found.empty:
        raise DataError(f"slide {slide_id!r}: not scored in any complete run of {output}")
    return str(found.sort_values(["scored_at", "run_id"]).iloc[-1]["run_id"])


def load_slide(output: str, slide_id: str, run_id: str | None = None) -> SlideView:
    """Slide ``slide_id`` in run ``run_id`` (default: the latest complete run that scored it)."""
    sid = check_slide_id(slide_id)
    rid = _slide_run(output, sid, run_id)
    flt = pc.field("slide_id") == sid
    preds = read_table(output, "predictions", [rid], filter=flt).to_pylist()
    if not preds:
        raise DataError(f"slide {sid!r}: not scored in run {rid} of {output}")
    att = read_table(
        output, "tile_attention", [rid], ["x", "y", "size_l0", "family", "attention"], flt
    ).to_pandas()
    if att.empty:
        raise DataError(f"slide {sid!r}: run {rid} holds no tile attention for it")
    tiles = att.pivot_table(
        index=["x", "y", "size_l0"], columns="family", values="attention", aggfunc="first"
    )
    families = [str(f) for f in tiles.columns]
    tiles = tiles.reset_index().sort_values(["y", "x"], kind="stable").reset_index(drop=True)
    tiles.columns = [str(c) for c in tiles.columns]
    thumbs = read_thumbnails(output, rid, [sid])
    return SlideView(rid, sid, preds[0], tiles, families, thumbs.get(sid))


def _finite(v: Any) -> float | None:
    return None if v is None or not math.isfinite(float(v)) else float(v)


def slide_measurements(view: SlideView) -> dict[str, float]:
    """The slide's prediction as QuPath measurements (numbers only)."""
    p = view.prediction
    out: dict[str, float] = {}
    for name, key in (("risk", "risk"), ("risk low", "risk_lo"), ("risk high", "risk_hi")):
        v = _finite(p.get(key))
        if v is not None:
            out[f"slide {name}"] = v
    for cls, prob in zip(p["grade_classes"], p["grade_probs"], strict=True):
        out[f"slide P(grade {cls})"] = float(prob)
    return out


def slide_geojson(view: SlideView, object_type: ObjectType = "tile") -> dict[str, Any]:
    """The tiles of ``view`` as a GeoJSON FeatureCollection (see the module docstring)."""
    if object_type not in OBJECT_TYPES:
        raise DataError(f"object type: expected one of {list(OBJECT_TYPES)}, got {object_type!r}")
    p = view.prediction
    meta = {
        "slide_id": view.slide_id,
        "run_id": view.run_id,
        "fusion_model": f"{p['fusion_model']}:{p['fusion_version']}",
        "grade_pred": str(p["grade_pred"]),
        "risk_group": str(p.get("risk_group") or "none"),
        "median_survival_group": str(p["median_survival_group"]),
    }
    slide = slide_measurements(view)
    t = view.tiles
    att = t[view.families].to_numpy(dtype=np.float64)  # (N, F)
    features = []
    for i, (x, y, s) in enumerate(t[["x", "y", "size_l0"]].itertuples(index=False)):
        x0, y0, x1, y1 = int(x), int(y), int(x) + int(s), int(y) + int(s)
        ring = [[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]  # counter-clockwise in (x, y)
        measurements = {f"attention {f}": float(att[i, j]) for j, f in enumerate(view.families)}
        features.append(
            {
                "type": "Feature",
                "id": f"{view.slide_id}-{x0}-{y0}",
                "geometry": {"type": "Polygon", "coordinates": [ring]},
                "properties": {
                    "objectType": object_type,
                    "name": f"tile {x0},{y0}",
                    "measurements": {**measurements, **slide},
                    "metadata": meta,
                },
            }
        )
    return {"type": "FeatureCollection", "features": features}


def _family_weights(view: SlideView, family: str) -> np.ndarray:
    if family == MEAN_FAMILY:
        return view.tiles[view.families].to_numpy(dtype=np.float64).mean(axis=1)
    if family not in view.families:
        raise DataError(
            f"family {family!r}: slide {view.slide_id} has attention for {view.families} "
            f"(or '{MEAN_FAMILY}')"
        )
    return view.tiles[family].to_numpy(dtype=np.float64)


def overlay_image(
    view: SlideView,
    level: int,
    family: str = MEAN_FAMILY,
    *,
    background: bool = True,
    alpha: float = 0.6,
    cmap: str = "inferno",
) -> np.ndarray:
    """The heatmap of ``family`` at pyramid level ``level`` (level-0 size / 2 ** level).

    background: blended over the stored thumbnail (scaled to that size), (H, W, 3) uint8;
    otherwise the heatmap alone, (H, W, 4) uint8 RGBA, transparent where there is no tile.
    """
    if isinstance(level, bool) or not isinstance(level, int) or not 0 <= level <= 20:
        raise DataError(f"level: expected an integer in 0..20, got {level!r}")
    w0, h0 = view.dims_l0
    ds = 2**level
    w, h = max(1, math.ceil(w0 / ds)), max(1, math.ceil(h0 / ds))
    if w * h > MAX_OVERLAY_PX:
        raise DataError(f"level {level}: the overlay would be {w} x {h} px; choose a higher level")
    t = view.tiles
    amap = attention_map(
        t["x"].to_numpy(),
        t["y"].to_numpy(),
        int(t["size_l0"].max()),
        _family_weights(view, family),
        (w0, h0),
        (h, w),
    )  # (H, W)
    if not background:
        return overlay_rgba(amap, alpha=alpha, cmap=cmap)
    if view.thumbnail is None:
        raise DataError(
            f"slide {view.slide_id}: run {view.run_id} stored no thumbnail for it; write the "
            "overlay without a background"
        )
    thumb = png_array(view.thumbnail["image_png"], f"thumbnail of {view.slide_id}")
    base = np.asarray(Image.fromarray(thumb).resize((w, h), Image.Resampling.BILINEAR))
    return blend(base, amap, alpha=alpha, cmap=cmap)
