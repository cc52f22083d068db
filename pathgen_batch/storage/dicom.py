"""DICOM WSI series in an archive: which instances make one slide.

A DICOM whole-slide image is a series of instances (one per pyramid level, plus label and
overview images) that share a StudyInstanceUID and a SeriesInstanceUID. An archive may keep
one series per folder (or S3 prefix) or several in one: :func:`split_series` reads the first
:data:`HEAD_BYTES` of each instance of a folder (its header up to the UIDs; no pixels) and
groups them by (study, series). One series: the folder is the slide. Several: each series is
a slide whose location is its first instance (OpenSlide opens an instance and reads the other
instances of its series from the same folder); an instance whose header cannot be read is a
slide of its own, which fails when it is staged (never silently dropped).
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass

HEAD_BYTES = 64 * 1024  # a WSI instance's UIDs come within its first few kB
Series = tuple[str, str]  # (StudyInstanceUID, SeriesInstanceUID)


def series_of(head: bytes) -> Series | None:
    """(study, series) UIDs from the start of a DICOM file; None when it is not one."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        ds = pydicom.dcmread(
            io.BytesIO(head),
            stop_before_pixels=True,
            specific_tags=["StudyInstanceUID", "SeriesInstanceUID"],
            defer_size=256,
        )
    except (InvalidDicomError, EOFError, OSError, ValueError, KeyError, TypeError):
        return None
    study, series = ds.get("StudyInstanceUID"), ds.get("SeriesInstanceUID")
    return (str(study or ""), str(series)) if series else None


def series_tag(series: Series) -> str:
    """A short stable tag of a series for slide ids (8 hex digits of its UIDs' hash)."""
    return hashlib.sha256("/".join(series).encode()).hexdigest()[:8]


@dataclass(frozen=True)
class SeriesGroup:
    location: str  # the folder key (one series) or the first instance's key
    keys: tuple[str, ...]  # the instances, the location's own first when it is one
    series: Series | None  # None: the folder's only series, or an unreadable instance


def split_series(
    folder: str, keys: Sequence[str], head: Callable[[str], bytes]
) -> list[SeriesGroup]:
    """The slides among the ``.dcm`` instances ``keys`` of one folder (see the module
    docstring); ``head(key)`` reads the first :data:`HEAD_BYTES` of an instance."""
    if len(keys) < 2:
        return [SeriesGroup(folder, tuple(keys), None)]
    by_series: dict[Series, list[str]] = {}
    unreadable: list[str] = []
    for k in sorted(keys):
        s = series_of(head(k))
        if s is None:
            unreadable.append(k)
        else:
            by_series.setdefault(s, []).append(k)
    if len(by_series) == 1 and not unreadable:
        return [SeriesGroup(folder, tuple(keys), None)]
    out = [SeriesGroup(ks[0], tuple(ks), s) for s, ks in by_series.items()]
    out += [SeriesGroup(k, (k,), None) for k in unreadable]
    return sorted(out, key=lambda g: g.location)


def same_series(
    instance: str, candidates: Sequence[tuple[str, int]], head: Callable[[str], bytes]
) -> list[tuple[str, int]] | None:
    """The (uri, bytes) of ``candidates`` in the series of ``instance`` (which comes first);
    None when ``instance`` is not a readable DICOM instance."""
    mine = series_of(head(instance))
    if mine is None:
        return None
    sizes = dict(candidates)
    rest = [(u, n) for u, n in candidates if u != instance and series_of(head(u)) == mine]
    return [(instance, sizes[instance]), *rest] if instance in sizes else None
