"""Slide archives: listing the slides of an S3 prefix, a local folder or a manifest table, and
staging one slide to local scratch for OpenSlide (which reads only local files).

Slide extensions are filtered, the files of a multi-file slide (a DICOM series, MIRAX,
VMS/VMU) make one slide, every file that is not listed is reported with the reason, and every
slide gets a slide id that is safe as a file name.
Object keys are untrusted: a staged copy gets a hashed name, so ``..``, absolute paths, spaces
or non-ASCII never reach the file system.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from pathgen_batch.errors import ConfigError, DataError
from pathgen_batch.storage.base import DEFAULT_RETRY, RetryPolicy, Staged, StorageError
from pathgen_batch.storage.dicom import HEAD_BYTES, series_tag
from pathgen_batch.storage.files import read_bytes, stage_file, store_for
from pathgen_batch.storage.local import walk_files
from pathgen_batch.storage.locations import (
    SLIDE_EXTENSIONS,
    basename,
    check_slide_id,
    folder_slide_id,
    is_s3,
    local_path,
    slide_id_for,
    split_s3,
)
from pathgen_batch.storage.s3 import S3Store
from pathgen_batch.storage.slide_files import (
    DICOM,
    FILE,
    group_files,
    slide_kind,
    stage_slide_files,
)

MANIFEST_SUFFIXES = (".csv", ".parquet")
MANIFEST_COLUMNS = ("uri", "slide_id", "patient_id", "mpp")


@dataclass(frozen=True)
class SlideSource:
    """One slide of an archive: where it is and what is known about it before reading it."""

    uri: str
    slide_id: str
    size: int | None = None  # bytes, when the listing says
    patient_id: str | None = None
    mpp: float | None = None  # um/px override from a manifest


def _unique(sources: list[SlideSource], where: str) -> list[SlideSource]:
    seen: dict[str, str] = {}
    for s in sources:
        if s.slide_id in seen:
            raise DataError(
                f"{where}: two slides get the slide id {s.slide_id!r} ({seen[s.slide_id]} and "
                f"{s.uri}); give unique ids in a manifest table (columns uri, slide_id)"
            )
        seen[s.slide_id] = s.uri
    return sources


def _optional(value: Any) -> Any:
    if value is None:
        return None
    if isinstance(value, float) and value != value:  # NaN from a CSV's empty cell
        return None
    if isinstance(value, str) and not value.strip():
        return None
    return value


def _manifest_table(uri: str, data: bytes) -> pa.Table:
    try:
        if uri.lower().endswith(".csv"):
            text_columns = {"uri": pa.string(), "slide_id": pa.string(), "patient_id": pa.string()}
            return pacsv.read_csv(
                io.BytesIO(data),
                convert_options=pacsv.ConvertOptions(column_types=text_columns),
            )
        return pq.read_table(io.BytesIO(data))
    except (pa.ArrowInvalid, OSError) as e:
        raise DataError(f"{uri}: not a readable manifest table ({e})") from e


def _manifest_row(row: dict[str, Any], where: str) -> SlideSource:
    u = _optional(row.get("uri"))
    if not isinstance(u, str):
        raise DataError(f"{where}: uri is empty")
    if not is_s3(u) and not local_path(u).is_absolute():
        raise DataError(f"{where}: uri must be s3://... or an absolute path, got {u!r}")
    sid = _optional(row.get("slide_id"))
    sid = check_slide_id(str(sid), f"{where}: slide_id") if sid is not None else None
    mpp = _optional(row.get("mpp"))
    if mpp is not None:
        try:
            mpp = float(mpp)
        except (TypeError, ValueError):
            raise DataError(f"{where}: mpp must be a number, got {mpp!r}") from None
        if not 0 < mpp < 100:
            raise DataError(f"{where}: mpp must be a positive um/px value, got {mpp}")
    pid = _optional(row.get("patient_id"))
    return SlideSource(
        uri=u,
        slide_id=sid or slide_id_for(u),
        patient_id=None if pid is None else str(pid),
        mpp=mpp,
    )


def read_manifest(uri: str, retry: RetryPolicy = DEFAULT_RETRY) -> list[SlideSource]:
    """Slides listed in a CSV or Parquet table: ``uri`` (s3:// or absolute path), optional
    ``slide_id``, ``patient_id`` and ``mpp`` (um/px override)."""
    table = _manifest_table(uri, read_bytes(uri, retry))
    if "uri" not in table.column_names:
        raise DataError(
            f"{uri}: a manifest needs a 'uri' column (optional: slide_id, patient_id, mpp), "
            f"got columns {table.column_names}"
        )
    extra = sorted(set(table.column_names) - set(MANIFEST_COLUMNS))
    if extra:
        raise DataError(
            f"{uri}: unknown manifest column(s) {extra}; allowed: {sorted(MANIFEST_COLUMNS)}"
        )
    out = [_manifest_row(row, f"{uri} row {i + 1}") for i, row in enumerate(table.to_pylist())]
    if not out:
        raise DataError(f"{uri}: the manifest lists no slides")
    return _unique(out, uri)


@dataclass(frozen=True)
class SkippedFile:
    """A file of an archive that is not listed as a slide, and why."""

    uri: str
    reason: str  # "not a slide extension", or "companion file of <slide key>"


@dataclass(frozen=True)
class ArchiveListing:
    """What listing an archive found: its slides and the files it skipped."""

    uri: str
    slides: list[SlideSource]
    skipped: list[SkippedFile] = field(default_factory=list)
    kinds: dict[str, int] = field(default_factory=dict)  # slides per format kind

    def summary(self) -> str:
        """One line: slides by kind and the skipped files by reason."""
        kinds = ", ".join(f"{n} {k}" for k, n in sorted(self.kinds.items()))
        line = f"{self.uri}: {len(self.slides)} slide(s)" + (f" ({kinds})" if kinds else "")
        companions = sum(s.reason.startswith("companion") for s in self.skipped)
        others = [s for s in self.skipped if not s.reason.startswith("companion")]
        parts = []
        if companions:
            parts.append(f"{companions} companion file(s) counted with their slides")
        if others:
            exts = sorted({_suffix(s.uri) for s in others})
            parts.append(f"{len(others)} file(s) that are not slides ({' '.join(exts)})")
        return line + ("; skipped " + " and ".join(parts) if parts else "")


def _suffix(uri: str) -> str:
    name = basename(uri)
    return name[name.rfind(".") :].lower() if "." in name.strip(".") else "(no extension)"


def _archive_files(
    uri: str, retry: RetryPolicy, page_size: int
) -> tuple[str, list[tuple[str, int]]]:
    """(root URI ending in '/', [(key relative to it, bytes)]) of every file under ``uri``."""
    if is_s3(uri):
        bucket, key = split_s3(uri.rstrip("/"))
        prefix = f"{key}/" if key else ""
        files = [
            (k[len(prefix) :], n)
            for k, n in S3Store(retry).list_objects(uri, page_size)
            if not k.endswith("/")
        ]
        return f"s3://{bucket}/{prefix}", files
    root = local_path(uri)
    if not root.exists():
        raise StorageError(f"{root}: archive folder not found")
    if not root.is_dir():
        raise ConfigError(
            f"{root}: expected a folder of slides or a manifest (.csv/.parquet), got a file"
        )
    root = root.resolve()
    return str(root) + "/", [(p.relative_to(root).as_posix(), n) for p, n in walk_files(root)]


def scan_archive(
    uri: str,
    extensions: Sequence[str] = tuple(sorted(SLIDE_EXTENSIONS)),
    retry: RetryPolicy = DEFAULT_RETRY,
    page_size: int = 1000,
) -> ArchiveListing:
    """The slides of an archive (an S3 prefix, a local folder, or a manifest table .csv or
    .parquet) and the files it skipped. Multi-file slides (a DICOM series, MIRAX, VMS/VMU:
    :mod:`.slide_files`) are one slide each, their size the sum of their files. Sorted by
    location; slide ids unique (a clash is a DataError)."""
    exts = frozenset(e.lower() if e.startswith(".") else f".{e.lower()}" for e in extensions)
    if uri.lower().endswith(MANIFEST_SUFFIXES):
        slides = read_manifest(uri, retry)
        return ArchiveListing(uri, slides, [], _kinds(s.uri for s in slides))
    root, files = _archive_files(uri, retry, page_size)
    store = store_for(root, retry)

    def head(key: str) -> bytes:
        try:
            return store.read_head(root + key, HEAD_BYTES)
        except StorageError:  # unreadable: a slide of its own, which fails when staged
            return b""

    groups, skipped = group_files(files, exts, lambda key: read_bytes(root + key, retry), head)
    sources = []
    for g in groups:
        if g.kind == DICOM and g.series is not None:  # one of several series in a folder
            folder = g.location.rsplit("/", 1)[0] if "/" in g.location else root.rstrip("/")
            sid = f"{folder_slide_id(folder)}-{series_tag(g.series)}"
        elif g.kind == DICOM and (g.location.endswith("/") or not g.location):
            where = g.location.rstrip("/") or root.rstrip("/")
            sid = folder_slide_id(where)
        else:
            sid = slide_id_for(g.location)
        sources.append(SlideSource(uri=root + g.location, slide_id=sid, size=g.size))
    sources = _unique(sorted(sources, key=lambda s: s.uri), uri)
    kinds: dict[str, int] = {}
    for g in groups:
        kinds[g.kind] = kinds.get(g.kind, 0) + 1
    return ArchiveListing(uri, sources, [SkippedFile(root + k, why) for k, why in skipped], kinds)


def _kinds(uris: Iterable[str]) -> dict[str, int]:
    out: dict[str, int] = {}
    for u in uris:
        k = slide_kind(u)
        out[k] = out.get(k, 0) + 1
    return out


def list_archive(
    uri: str,
    extensions: Sequence[str] = tuple(sorted(SLIDE_EXTENSIONS)),
    retry: RetryPolicy = DEFAULT_RETRY,
    page_size: int = 1000,
) -> list[SlideSource]:
    """The slides of :func:`scan_archive` (without the report of skipped files)."""
    return scan_archive(uri, extensions, retry, page_size).slides


def stage(
    source: SlideSource, scratch_dir: str | Path, retry: RetryPolicy = DEFAULT_RETRY
) -> contextlib.AbstractContextManager[Staged]:
    """The slide as a local file for the duration of the ``with`` block.

    S3 objects are downloaded into ``scratch_dir`` under a hashed name (size checked against
    the listing or the object, retried per ``retry``) and deleted afterwards; local files are
    used in place (their size checked against the listing). A multi-file slide (a DICOM
    series folder, MIRAX, VMS/VMU) is staged whole: every file, size-checked, in one hashed
    scratch folder; the staged path is the file OpenSlide opens.
    """
    kind = slide_kind(source.uri)
    if kind == FILE:
        return stage_file(source.uri, scratch_dir, source.size, retry)
    store = store_for(source.uri, retry)
    return stage_slide_files(source.uri, kind, store, scratch_dir, source.size)
