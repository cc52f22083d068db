"""Slide archives: listing the slides of an S3 prefix, a local folder or a manifest table, and
staging one slide to local scratch for OpenSlide (which reads only local files).

Slide extensions are filtered and every slide gets a slide id that is safe as a file name.
Object keys are untrusted: a staged copy gets a hashed name, so ``..``, absolute paths, spaces
or non-ASCII never reach the file system.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from pathgen_batch.errors import ConfigError, DataError
from pathgen_batch.storage.base import DEFAULT_RETRY, RetryPolicy, Staged, StorageError
from pathgen_batch.storage.files import read_bytes, stage_file
from pathgen_batch.storage.local import walk_files
from pathgen_batch.storage.locations import (
    SLIDE_EXTENSIONS,
    check_slide_id,
    is_s3,
    local_path,
    slide_id_for,
    split_s3,
)
from pathgen_batch.storage.s3 import S3Store

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


def _has_extension(name: str, extensions: frozenset[str]) -> bool:
    lower = name.lower()
    return any(lower.endswith(e) for e in extensions)


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


def list_archive(
    uri: str,
    extensions: Sequence[str] = tuple(sorted(SLIDE_EXTENSIONS)),
    retry: RetryPolicy = DEFAULT_RETRY,
    page_size: int = 1000,
) -> list[SlideSource]:
    """The slides of an archive: an S3 prefix, a local folder, or a manifest table (.csv or
    .parquet). Sorted by location; slide ids unique (a clash is a DataError)."""
    exts = frozenset(e.lower() if e.startswith(".") else f".{e.lower()}" for e in extensions)
    if uri.lower().endswith(MANIFEST_SUFFIXES):
        return read_manifest(uri, retry)
    if is_s3(uri):
        bucket, _ = split_s3(uri)
        sources = [
            SlideSource(uri=f"s3://{bucket}/{key}", slide_id=slide_id_for(key), size=n)
            for key, n in S3Store(retry).list_objects(uri, page_size)
            if _has_extension(key, exts) and not key.endswith("/")
        ]
    else:
        root = local_path(uri)
        if not root.exists():
            raise StorageError(f"{root}: archive folder not found")
        if not root.is_dir():
            raise ConfigError(
                f"{root}: expected a folder of slides or a manifest (.csv/.parquet), got a file"
            )
        sources = [
            SlideSource(uri=str(p.resolve()), slide_id=slide_id_for(p.name), size=n)
            for p, n in walk_files(root)
            if _has_extension(p.name, exts)
        ]
    return _unique(sorted(sources, key=lambda s: s.uri), uri)


def stage(
    source: SlideSource, scratch_dir: str | Path, retry: RetryPolicy = DEFAULT_RETRY
) -> contextlib.AbstractContextManager[Staged]:
    """The slide as a local file for the duration of the ``with`` block.

    S3 objects are downloaded into ``scratch_dir`` under a hashed name (size checked against
    the listing or the object, retried per ``retry``) and deleted afterwards; local files are
    used in place (their size checked against the listing).
    """
    return stage_file(source.uri, scratch_dir, source.size, retry)
