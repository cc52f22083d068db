"""Whole files at any location: the store is chosen once from the URI (:func:`store_for`), and
these functions are the short form ``store_for(uri, retry).<method>(uri, ...)``."""

from __future__ import annotations

import contextlib
from pathlib import Path

import pyarrow.fs as pafs

from pathgen_batch.storage.base import DEFAULT_RETRY, RetryPolicy, Staged, Store
from pathgen_batch.storage.local import LocalStore
from pathgen_batch.storage.locations import is_s3, local_path, split_s3
from pathgen_batch.storage.s3 import S3Store


def store_for(uri: str | Path, retry: RetryPolicy = DEFAULT_RETRY) -> Store:
    """The store of a location: S3 for ``s3://bucket/key``, else the local file system
    (a path or ``file://``; any other scheme is a ConfigError)."""
    text = str(uri)
    if is_s3(text):
        split_s3(text)
        return S3Store(retry)
    local_path(text)
    return LocalStore(retry)


def exists(uri: str | Path, retry: RetryPolicy = DEFAULT_RETRY) -> bool:
    return store_for(uri, retry).exists(str(uri))


def read_bytes(uri: str | Path, retry: RetryPolicy = DEFAULT_RETRY) -> bytes:
    return store_for(uri, retry).read_bytes(str(uri))


def write_bytes(uri: str | Path, data: bytes, retry: RetryPolicy = DEFAULT_RETRY) -> None:
    store_for(uri, retry).write_bytes(str(uri), data)


def upload_file(src: str | Path, uri: str | Path, retry: RetryPolicy = DEFAULT_RETRY) -> None:
    store_for(uri, retry).upload_file(Path(src), str(uri))


def create_exclusive(uri: str | Path, data: bytes, retry: RetryPolicy = DEFAULT_RETRY) -> bool:
    return store_for(uri, retry).create_exclusive(str(uri), data)


def list_files(prefix: str | Path, retry: RetryPolicy = DEFAULT_RETRY) -> list[tuple[str, int]]:
    return store_for(prefix, retry).list_files(str(prefix))


def delete(uri: str | Path, retry: RetryPolicy = DEFAULT_RETRY) -> None:
    store_for(uri, retry).delete(str(uri))


def delete_prefix(prefix: str | Path, retry: RetryPolicy = DEFAULT_RETRY) -> int:
    return store_for(prefix, retry).delete_prefix(str(prefix))


def check_access(uri: str | Path, write: bool, retry: RetryPolicy = DEFAULT_RETRY) -> None:
    store_for(uri, retry).check_access(str(uri), write)


def stage_file(
    uri: str | Path,
    scratch_dir: str | Path,
    size: int | None = None,
    retry: RetryPolicy = DEFAULT_RETRY,
) -> contextlib.AbstractContextManager[Staged]:
    return store_for(uri, retry).stage(str(uri), scratch_dir, size)


def arrow_filesystem(uri: str | Path) -> tuple[pafs.FileSystem, str]:
    return store_for(uri).arrow_filesystem(str(uri))


def sha256(uri: str | Path, retry: RetryPolicy = DEFAULT_RETRY) -> str:
    """Hex SHA-256 of a file's bytes."""
    return store_for(uri, retry).sha256(str(uri))
