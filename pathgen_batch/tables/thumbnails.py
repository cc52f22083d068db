"""The ``thumbnails`` table: a small PNG of each slide, its level-0 extent and its tissue mask
(and excluded regions), so that reports and exports draw heatmaps from the tables alone."""

from __future__ import annotations

import io

import numpy as np
import pyarrow as pa
from PIL import Image

from pathgen_batch.errors import DataError
from pathgen_batch.slides import TileQuality
from pathgen_batch.tables.rows import Lineage, _opt_float
from pathgen_batch.tables.schemas import THUMBNAILS


def png_bytes(image: np.ndarray) -> bytes:
    """(H, W, 3) uint8 -> an RGB PNG; (H, W) bool -> a 1-bit PNG."""
    a = np.asarray(image)
    if a.ndim == 2 and a.dtype == bool:
        img = Image.fromarray(a).convert("1")
    elif a.ndim == 3 and a.shape[2] == 3 and a.dtype == np.uint8:
        img = Image.fromarray(a, "RGB")
    else:
        raise DataError(f"png: expected (H, W, 3) uint8 or (H, W) bool, got {a.shape} {a.dtype}")
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=False)
    return buf.getvalue()


def png_array(data: bytes, where: str) -> np.ndarray:
    """A PNG -> (H, W, 3) uint8 (RGB) or (H, W) bool (1-bit)."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            if img.mode == "1":
                return np.asarray(img, dtype=bool)
            return np.asarray(img.convert("RGB"), dtype=np.uint8)
    except (OSError, ValueError) as e:
        raise DataError(f"{where}: not a readable PNG ({e})") from e


def thumbnail_table(
    slide_id: str,
    image: np.ndarray,
    dims_l0: tuple[int, int],
    slide_mpp: float | None,
    mask: np.ndarray,
    excluded: np.ndarray | None,
    lineage: Lineage,
    quality: TileQuality | None = None,
) -> pa.Table:
    """The ``thumbnails`` row of one slide: image (H, W, 3) uint8 of the whole slide, dims_l0
    (W0, H0) level-0 px, mask (h, w) bool tissue on the mask's grid, excluded (h, w) bool or
    None, quality: the kept tiles' flags (None: not measured)."""
    img = np.asarray(image)
    m = np.asarray(mask)
    if img.ndim != 3 or img.shape[2] != 3 or m.ndim != 2 or m.dtype != bool or not m.size:
        raise DataError(
            f"slide {slide_id}: thumbnail must be (H, W, 3) and mask (h, w) bool, got "
            f"{img.shape} and {m.shape} {m.dtype}"
        )
    if excluded is not None and np.shape(excluded) != m.shape:
        raise DataError(
            f"slide {slide_id}: excluded regions {np.shape(excluded)} vs mask {m.shape}"
        )
    w0, h0 = int(dims_l0[0]), int(dims_l0[1])
    if w0 < 1 or h0 < 1:
        raise DataError(f"slide {slide_id}: level-0 extent must be positive, got {dims_l0}")
    row = {
        "slide_id": slide_id,
        "width_l0": w0,
        "height_l0": h0,
        "slide_mpp": _opt_float(slide_mpp),
        "image_png": png_bytes(img.astype(np.uint8, copy=False)),
        "image_width": int(img.shape[1]),
        "image_height": int(img.shape[0]),
        "mask_png": png_bytes(m),
        "mask_width": int(m.shape[1]),
        "mask_height": int(m.shape[0]),
        "tissue_fraction": float(m.mean()),
        "excluded_png": None if excluded is None else png_bytes(np.asarray(excluded, dtype=bool)),
        "excluded_fraction": 0.0 if excluded is None else float(np.mean(excluded)),
        **_quality_columns(quality),
        **lineage.to_dict(),
    }
    return pa.Table.from_pylist([row], schema=THUMBNAILS)


def _quality_columns(q: TileQuality | None) -> dict[str, int | float | None]:
    if q is None:
        return {"n_tiles_blank": None, "n_tiles_out_of_focus": None, "focus_median": None}
    return {
        "n_tiles_blank": int(np.count_nonzero(q.blank)),
        "n_tiles_out_of_focus": int(np.count_nonzero(q.out_of_focus)),
        "focus_median": float(np.median(q.focus)) if q.focus.size else None,
    }
