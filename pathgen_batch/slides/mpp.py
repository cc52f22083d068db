"""Microns per pixel (MPP) of a slide's level 0, from its properties or an override.

Sources, in order of trust:

1. ``openslide.mpp-x`` / ``openslide.mpp-y``: OpenSlide's own reading of the vendor metadata;
2. ``aperio.MPP``: the Aperio description field (``|MPP = 0.25|``);
3. ``tiff.XResolution`` / ``tiff.YResolution`` with ``tiff.ResolutionUnit`` ``centimeter`` or
   ``inch`` (pixels per unit; ``none`` carries no physical size).

A value outside :data:`PLAUSIBLE_MPP` is not a scanner's resolution (72 dpi, the default of
image editors, reads as 352.8 um/px) and is ignored, with a note that ends up in the
:class:`~pathgen_batch.errors.MissingMPPError` message. An explicit override always wins.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from pathgen_batch.errors import ConfigError

PLAUSIBLE_MPP = (0.01, 100.0)  # um/px; whole-slide scanners work at about 0.1 - 10
_UM_PER_UNIT = {"centimeter": 1e4, "inch": 25_400.0}


@dataclass(frozen=True)
class MPPResolution:
    """Outcome of resolving the MPP: the value (None when unknown), where it came from, notes."""

    mpp: float | None
    source: str  # "override", "openslide.mpp-x/y", "aperio.MPP", "tiff.XResolution (inch)", "none"
    notes: tuple[str, ...] = ()


def _number(text: str | None) -> float | None:
    if text is None:
        return None
    try:
        v = float(text.strip())
    except ValueError:
        return None
    return v if math.isfinite(v) and v > 0 else None


def _pair(x: float | None, y: float | None) -> float | None:
    """One isotropic MPP from x and y (mean when both are known)."""
    if x is None and y is None:
        return None
    if x is None or y is None:
        return x if x is not None else y
    return 0.5 * (x + y)


def check_override(mpp_override: float | None) -> float | None:
    """Validate a user-given MPP: a positive, finite number of microns per pixel, or None."""
    if mpp_override is None:
        return None
    if isinstance(mpp_override, bool) or not isinstance(mpp_override, int | float):
        raise ConfigError(
            f"mpp_override: expected a number of microns per pixel, got {mpp_override!r}"
        )
    v = float(mpp_override)
    if not math.isfinite(v) or v <= 0:
        raise ConfigError(f"mpp_override: expected a positive number of um/px, got {mpp_override}")
    return v


def resolve_mpp(properties: Mapping[str, str], mpp_override: float | None = None) -> MPPResolution:
    """Resolve level-0 MPP from OpenSlide ``properties``; ``mpp_override`` wins when given."""
    override = check_override(mpp_override)
    if override is not None:
        return MPPResolution(override, "override")

    candidates: list[tuple[str, float | None]] = [
        (
            "openslide.mpp-x/y",
            _pair(
                _number(properties.get("openslide.mpp-x")),
                _number(properties.get("openslide.mpp-y")),
            ),
        ),
        ("aperio.MPP", _number(properties.get("aperio.MPP"))),
    ]
    unit = (properties.get("tiff.ResolutionUnit") or "").strip().lower()
    if unit in _UM_PER_UNIT:
        xres = _number(properties.get("tiff.XResolution"))  # pixels per unit
        yres = _number(properties.get("tiff.YResolution"))
        per_unit = _UM_PER_UNIT[unit]
        tiff_mpp = _pair(
            per_unit / xres if xres is not None else None,
            per_unit / yres if yres is not None else None,
        )
        candidates.append((f"tiff.XResolution ({unit})", tiff_mpp))

    notes: list[str] = []
    lo, hi = PLAUSIBLE_MPP
    for source, value in candidates:
        if value is None:
            continue
        if lo <= value <= hi:
            return MPPResolution(value, source, tuple(notes))
        notes.append(f"{source} gives {value:.4g} um/px, outside the plausible {lo}-{hi} um/px")
    return MPPResolution(None, "none", tuple(notes))
