"""Opening whole-slide images with OpenSlide, behind typed errors.

This module (with the rest of :mod:`pathgen_batch.slides`) is the only door to OpenSlide.
Every failure a user can cause becomes a :class:`~pathgen_batch.errors.SlideError` naming the
file and what is wrong:

- no such file or a folder: :class:`SlideNotFoundError`;
- not a format OpenSlide detects: :class:`~pathgen_batch.errors.UnsupportedSlideError`;
- detected but cannot be opened, an empty file, or pixels that cannot be decoded:
  :class:`~pathgen_batch.errors.UnreadableSlideError`;
- MPP needed but unknown: :class:`~pathgen_batch.errors.MissingMPPError` (raised lazily, by
  :attr:`Slide.mpp`, so slides without MPP can still be inspected and thumbnailed).

Vendor files carry patient identifiers: a label and a macro image (the glass label), and free
text properties (Aperio's ``ImageDescription``, file names, scanner users, dates). Nothing here
reads an associated image, and what may leave a slide for an output or a report is
:meth:`Slide.public_properties`, an allow-list (MPP, dimensions, vendor, objective), never
:attr:`Slide.properties`.
"""

from __future__ import annotations

import logging
from pathlib import Path
from types import TracebackType

import numpy as np
import openslide
import tifffile
from PIL import Image

from pathgen_batch.errors import (
    MissingMPPError,
    SlideError,
    SlideNotFoundError,
    UnreadableSlideError,
    UnsupportedSlideError,
)
from pathgen_batch.slides.mpp import MPPResolution, resolve_mpp
from pathgen_batch.slides.tiffdirect import TiffDirect, TiffLevel

log = logging.getLogger(__name__)

_OVERRIDE_HINT = "give it explicitly: mpp_override=<um/px> in Python, --mpp <um/px> on the CLI"


def is_opaque(img: Image.Image) -> bool:
    """Whether every pixel of an RGBA image has alpha 255."""
    if img.width == 0 or img.height == 0:
        return True
    alpha = np.frombuffer(img.tobytes("raw", "A"), dtype=np.uint8)  # (H * W,)
    return bool(alpha.min() == 255)


def opaque_rgb(img: Image.Image) -> np.ndarray:
    """RGB pixels of an OpenSlide RGBA image, transparent areas composited onto white.

    Returns (H, W, 3) uint8, read-only. When every pixel is opaque (the common case) the
    channels are packed by PIL in one pass, without a compositing step.
    """
    w, h = img.size
    if is_opaque(img):
        return np.frombuffer(img.tobytes("raw", "RGB"), dtype=np.uint8).reshape(h, w, 3)
    rgba = np.asarray(img)  # (H, W, 4) uint8
    alpha = rgba[..., 3:4].astype(np.uint16)  # (H, W, 1)
    rgb = rgba[..., :3].astype(np.uint16)  # (H, W, 3)
    out = (rgb * alpha + 255 * (255 - alpha) + 127) // 255
    return out.astype(np.uint8)


class Slide:
    """An open whole-slide image. Use as a context manager; see :func:`open_slide`."""

    def __init__(
        self,
        path: Path,
        handle: openslide.OpenSlide,
        mpp: MPPResolution,
        fmt: str,
        direct: bool = True,
    ) -> None:
        self.path = path
        self._osr: openslide.OpenSlide | None = handle
        self._mpp = mpp
        self._direct: TiffDirect | None = None
        self.format: str = fmt  # OpenSlide's detected format, e.g. "aperio", "generic-tiff"
        props = dict(handle.properties)
        self.properties: dict[str, str] = props
        self.vendor: str = props.get(openslide.PROPERTY_NAME_VENDOR, self.format)
        self.dimensions: tuple[int, int] = tuple(handle.dimensions)  # type: ignore[assignment]
        self.level_count: int = int(handle.level_count)
        self.level_dimensions: tuple[tuple[int, int], ...] = tuple(
            (int(w), int(h)) for w, h in handle.level_dimensions
        )
        self.level_downsamples: tuple[float, ...] = tuple(
            float(d) for d in handle.level_downsamples
        )
        if direct:
            try:
                self._direct = TiffDirect.open(path, fmt, self.level_dimensions, props)
            except BaseException:
                handle.close()
                raise

    # -- lifetime -------------------------------------------------------------------------
    def close(self) -> None:
        if self._direct is not None:
            self._direct.close()
            self._direct = None
        if self._osr is not None:
            self._osr.close()
            self._osr = None

    def __enter__(self) -> Slide:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        w, h = self.dimensions
        return f"Slide({str(self.path)!r}, {self.vendor}, {w}x{h}, {self.level_count} levels)"

    @property
    def handle(self) -> openslide.OpenSlide:
        """The underlying OpenSlide handle (for callers that need its raw API)."""
        if self._osr is None:
            raise UnreadableSlideError(self.path, "slide is closed")
        return self._osr

    # -- resolution -----------------------------------------------------------------------
    @property
    def has_mpp(self) -> bool:
        return self._mpp.mpp is not None

    @property
    def mpp(self) -> float:
        """Microns per pixel at level 0; MissingMPPError when neither slide nor caller give it."""
        if self._mpp.mpp is None:
            why = "; ".join(self._mpp.notes)
            raise MissingMPPError(
                self.path,
                "the slide records no microns per pixel (looked for openslide.mpp-x/y, "
                "aperio.MPP, tiff.XResolution with ResolutionUnit centimeter/inch"
                + (f"; {why}" if why else "")
                + f"); {_OVERRIDE_HINT}",
            )
        return self._mpp.mpp

    @property
    def mpp_source(self) -> str:
        """Where :attr:`mpp` came from ("override", "aperio.MPP", ...; "none" when unknown)."""
        return self._mpp.source

    def level_mpp(self, level: int) -> float:
        """Microns per pixel of pyramid ``level``."""
        self._check_level(level)
        return self.mpp * self.level_downsamples[level]

    @property
    def objective_power(self) -> float | None:
        text = self.properties.get(openslide.PROPERTY_NAME_OBJECTIVE_POWER)
        try:
            return float(text) if text is not None else None
        except ValueError:
            return None

    def public_properties(self) -> dict[str, object]:
        """What outputs may copy from the slide (no free text, no associated image): vendor,
        level-0 width and height, MPP (None when unknown) and objective power."""
        return {
            "vendor": self.vendor,
            "width": self.dimensions[0],
            "height": self.dimensions[1],
            "mpp": self.mpp if self.has_mpp else None,
            "objective_power": self.objective_power,
        }

    # -- pixels ---------------------------------------------------------------------------
    def _check_level(self, level: int) -> None:
        if not 0 <= level < self.level_count:
            raise ValueError(f"level: expected 0..{self.level_count - 1}, got {level}")

    def read_region_pil(
        self, location: tuple[int, int], level: int, size: tuple[int, int]
    ) -> Image.Image:
        """OpenSlide's RGBA region (location in level-0 px, size in ``level`` px)."""
        self._check_level(level)
        if size[0] <= 0 or size[1] <= 0:
            raise ValueError(f"size: expected positive (width, height), got {size}")
        try:
            return self.handle.read_region(location, level, size)
        except openslide.OpenSlideError as e:
            raise UnreadableSlideError(
                self.path,
                f"pixels at level {level}, location {location}, size {size} cannot be read ({e})",
            ) from e

    def read_region(
        self, location: tuple[int, int], level: int, size: tuple[int, int]
    ) -> np.ndarray:
        """RGB pixels (H, W, 3) uint8 of a region (a writable copy); transparent areas become
        white. Location in level-0 px, size in ``level`` px, as OpenSlide's ``read_region``."""
        return np.array(opaque_rgb(self.read_region_pil(location, level, size)))

    def _direct_level(self, level: int) -> TiffLevel | None:
        return self._direct.levels.get(level) if self._direct is not None else None

    @property
    def direct_levels(self) -> tuple[int, ...]:
        """Levels whose JPEG tiles are decoded directly (same pixels as OpenSlide, faster)."""
        return tuple(sorted(self._direct.levels)) if self._direct is not None else ()

    def read_level(self, level: int, x: int, y: int, w: int, h: int) -> np.ndarray:
        """RGB pixels (h, w, 3) uint8 (possibly read-only) of a region in ``level`` px coordinates.

        Decodes TIFF JPEG tiles directly where possible (see :mod:`.tiffdirect`), else asks
        OpenSlide (with location ``round(x * downsample)``, exact for integer downsamples).
        """
        self._check_level(level)
        lvl = self._direct_level(level)
        if lvl is not None:
            out = lvl.read(x, y, w, h)
            if out is not None:
                return out
        ds = self.level_downsamples[level]
        return opaque_rgb(self.read_region_pil((round(x * ds), round(y * ds)), level, (w, h)))

    def thumbnail(self, max_px: int) -> np.ndarray:
        """The whole slide scaled to fit ``max_px`` on its longer side: (H, W, 3) uint8."""
        if isinstance(max_px, bool) or not isinstance(max_px, int) or max_px < 1:
            raise ValueError(f"max_px: expected a positive integer, got {max_px!r}")
        try:
            img = self.handle.get_thumbnail((max_px, max_px))
        except openslide.OpenSlideError as e:
            raise UnreadableSlideError(self.path, f"thumbnail cannot be read ({e})") from e
        return np.array(img.convert("RGB"))


_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")


class _Silence(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return False


def _tiff_damage(p: Path, size: int) -> str | None:
    """Why a TIFF file is damaged (truncated, broken structure), or None if it looks whole."""
    logger = logging.getLogger("tifffile")
    silence = _Silence()
    logger.addFilter(silence)  # tifffile logs broken IFD chains; the error message says it
    try:
        with tifffile.TiffFile(p) as tf:
            ends = [
                int(o) + int(c)
                for page in tf.pages
                if isinstance(page, tifffile.TiffPage)
                for o, c in zip(page.dataoffsets, page.databytecounts, strict=True)
            ]
            n_pages = len(tf.pages)
    except (OSError, ValueError, IndexError, tifffile.TiffFileError) as e:
        return f"TIFF structure is broken ({e})"
    finally:
        logger.removeFilter(silence)
    if ends and max(ends) > size:
        return f"truncated: image data runs to byte {max(ends):,} but the file has {size:,} bytes"
    if n_pages == 0:
        return "TIFF file holds no image"
    return None


def _undetected_error(p: Path, size: int) -> SlideError:
    """The error for a file OpenSlide does not recognise: damaged TIFF or another format."""
    with open(p, "rb") as f:
        head = f.read(8)
    if head[:4] in _TIFF_MAGIC:
        damage = _tiff_damage(p, size)
        if damage is not None:
            return UnreadableSlideError(p, f"a TIFF file OpenSlide cannot read: {damage}")
        return UnsupportedSlideError(
            p,
            "a TIFF file but not a slide OpenSlide reads (a generic slide TIFF needs tiled "
            "pages; vendor TIFFs need their metadata)",
        )
    return UnsupportedSlideError(
        p,
        f"not a slide format OpenSlide reads (file starts with {head!r}; expected e.g. "
        "Aperio .svs, Hamamatsu .ndpi, Leica .scn, MIRAX .mrxs, DICOM, pyramidal TIFF)",
    )


def open_slide(
    path: str | Path, mpp_override: float | None = None, *, direct: bool = True
) -> Slide:
    """Open a whole-slide image in any format OpenSlide reads. Use ``with open_slide(p) as s``.
    A folder of DICOM instances (one DICOM WSI series) opens as its slide.

    ``mpp_override`` (um/px at level 0) replaces whatever the slide records. ``direct=False``
    makes every pixel go through OpenSlide (no direct TIFF tile decoding).
    """
    p = Path(path)
    mpp_check = resolve_mpp({}, mpp_override)  # validates the override before any I/O
    if not p.exists():
        raise SlideNotFoundError(p, "no such file")
    if p.is_dir():
        instances = sorted(f for f in p.iterdir() if f.suffix.lower() == ".dcm" and f.is_file())
        if not instances:
            raise SlideNotFoundError(
                p, "a folder without DICOM instances (.dcm); give the slide file itself"
            )
        p = instances[0]  # OpenSlide finds the other instances of its series beside it
    if not p.is_file():
        raise SlideNotFoundError(p, "not a regular file; give the slide file itself")
    size = p.stat().st_size
    if size == 0:
        raise UnreadableSlideError(p, "file is empty (0 bytes)")
    try:
        fmt = openslide.OpenSlide.detect_format(str(p))
    except openslide.OpenSlideError as e:
        raise UnreadableSlideError(p, f"format detection failed ({e})") from e
    if fmt is None:
        raise _undetected_error(p, size)
    try:
        handle = openslide.OpenSlide(str(p))
    except openslide.OpenSlideUnsupportedFormatError as e:
        raise UnsupportedSlideError(p, f"OpenSlide does not support this file ({e})") from e
    except openslide.OpenSlideError as e:
        raise UnreadableSlideError(
            p, f"looks like {fmt} ({size} bytes) but cannot be opened ({e})"
        ) from e
    mpp = mpp_check if mpp_override is not None else resolve_mpp(handle.properties)
    for note in mpp.notes:
        log.info("%s: %s", p, note)
    return Slide(p, handle, mpp, fmt, direct)
