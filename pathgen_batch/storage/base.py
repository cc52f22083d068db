"""The storage interface: what every artefact of the project needs from a folder or a bucket.

A :class:`Store` is chosen once from a location (:func:`pathgen_batch.storage.store_for`); the
callers never ask which kind it is. Every write is whole: a reader sees the old content, none,
or all of the new one (:meth:`Store.write_bytes`, :meth:`Store.upload_file`), and
:meth:`Store.create_exclusive` has exactly one winner among concurrent writers.
"""

from __future__ import annotations

import contextlib
import hashlib
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path

import pyarrow.fs as pafs

from pathgen_batch.errors import ConfigError, PathgenError


class StorageError(PathgenError):
    """Object storage is unreachable, an object is missing, or a transfer failed after retries."""


@dataclass(frozen=True)
class RetryPolicy:
    """``attempts`` tries in all, waiting ``backoff_s * 2**k`` (at most ``max_backoff_s``)
    before try k + 2."""

    attempts: int = 4
    backoff_s: float = 0.5
    max_backoff_s: float = 8.0

    def __post_init__(self) -> None:
        if isinstance(self.attempts, bool) or not isinstance(self.attempts, int):
            raise ConfigError(f"RetryPolicy.attempts: expected an integer, got {self.attempts!r}")
        if self.attempts < 1:
            raise ConfigError(f"RetryPolicy.attempts: expected >= 1, got {self.attempts}")
        if not self.backoff_s >= 0 or not self.max_backoff_s >= 0:
            raise ConfigError(
                f"RetryPolicy: backoff_s and max_backoff_s must be >= 0, got "
                f"{self.backoff_s}, {self.max_backoff_s}"
            )

    def delay(self, k: int) -> float:
        """Seconds to wait after failed try ``k`` (0-based)."""
        return float(min(self.max_backoff_s, self.backoff_s * 2.0**k))


DEFAULT_RETRY = RetryPolicy()


@dataclass(frozen=True)
class Staged:
    """A file on local disk. ``owned``: the file is a downloaded copy (deleted after use)."""

    path: Path
    size: int
    owned: bool
    seconds: float


class Store(ABC):
    """Files under one kind of location (a local folder tree, or S3 buckets)."""

    def __init__(self, retry: RetryPolicy = DEFAULT_RETRY) -> None:
        self.retry = retry

    @abstractmethod
    def exists(self, uri: str) -> bool:
        """True when ``uri`` is a file."""

    @abstractmethod
    def size(self, uri: str) -> int:
        """A file's size in bytes; StorageError when it does not exist."""

    @abstractmethod
    def read_bytes(self, uri: str) -> bytes:
        """A whole file; StorageError when it does not exist or cannot be read."""

    def read_head(self, uri: str, n: int) -> bytes:
        """The first ``n`` bytes of a file (all of it when shorter)."""
        return self.read_bytes(uri)[:n]

    @abstractmethod
    def write_bytes(self, uri: str, data: bytes) -> None:
        """Write a whole file: readers see the old content, or none, or all of the new one."""

    @abstractmethod
    def upload_file(self, src: Path, uri: str) -> None:
        """Copy local file ``src`` to ``uri``, as whole as :meth:`write_bytes`."""

    @abstractmethod
    def create_exclusive(self, uri: str, data: bytes) -> bool:
        """Write ``uri`` only if it does not exist; True when this call created it."""

    @abstractmethod
    def list_files(self, prefix: str) -> list[tuple[str, int]]:
        """(uri, size) of every file under folder ``prefix``, sorted; [] when there is none.
        Temporary files of unfinished local writes (hidden names) are not listed."""

    @abstractmethod
    def delete(self, uri: str) -> None:
        """Remove one file (no error when it is absent)."""

    @abstractmethod
    def delete_prefix(self, prefix: str) -> int:
        """Remove every file under ``prefix`` (and, locally, the emptied folders); the count."""

    @abstractmethod
    def check_access(self, uri: str, write: bool) -> None:
        """Fail early, with one StorageError, when ``uri`` cannot be listed (or written)."""

    @abstractmethod
    def stage(
        self, uri: str, scratch_dir: str | Path, size: int | None = None
    ) -> contextlib.AbstractContextManager[Staged]:
        """The file as a local file for the duration of the ``with`` block (``size``: the
        expected byte count, when known). Remote files are downloaded into ``scratch_dir``
        under a hashed name and deleted afterwards; local files are used in place."""

    @abstractmethod
    def arrow_filesystem(self, uri: str) -> tuple[pafs.FileSystem, str]:
        """A pyarrow file system and the path inside it, for pyarrow/pandas readers."""

    def sha256(self, uri: str) -> str:
        """Hex SHA-256 of a file's bytes, streamed (StorageError when it is not a file)."""
        if not self.exists(uri):
            raise StorageError(f"reading {uri}: no such file")
        fs, path = self.arrow_filesystem(uri)
        h = hashlib.sha256()
        with fs.open_input_stream(path) as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        return h.hexdigest()
