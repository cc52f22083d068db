"""The local implementation of :class:`~pathgen_batch.storage.base.Store`: a folder tree.

Whole writes go to a hidden temporary sibling and are renamed into place (``os.replace``);
exclusive creation hard-links a complete temporary file (``os.link`` fails when the name
exists, so the first writer wins). Hidden names are never listed.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pyarrow.fs as pafs

from pathgen_batch.storage.base import Staged, StorageError, Store
from pathgen_batch.storage.locations import local_path


def _tmp_sibling(p: Path) -> Path:
    return p.with_name(f".{p.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")


@contextlib.contextmanager
def _reading(uri: str) -> Iterator[Path]:
    """The path of ``uri`` to read; a missing file or a folder in its place becomes a
    StorageError that names the URI."""
    try:
        yield local_path(uri)
    except FileNotFoundError:
        raise StorageError(f"reading {uri}: no such file") from None
    except IsADirectoryError:
        raise StorageError(f"reading {uri}: a folder, not a file") from None


def walk_files(root: Path) -> Iterator[tuple[Path, int]]:
    """(path, size) of every visible file under ``root``, in sorted order."""
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for f in sorted(filenames):
            if f.startswith("."):
                continue
            p = Path(dirpath) / f
            if p.is_file():
                yield p, p.stat().st_size


class LocalStore(Store):
    """Files on the local file system (paths, or ``file://`` URIs)."""

    def _written(
        self, uri: str, fill: Callable[[Path], object], publish: Callable[[Path, Path], None]
    ) -> None:
        p = local_path(uri)
        p.parent.mkdir(parents=True, exist_ok=True)
        tmp = _tmp_sibling(p)
        try:
            fill(tmp)
            publish(tmp, p)
        finally:
            tmp.unlink(missing_ok=True)

    def exists(self, uri: str) -> bool:
        return local_path(uri).is_file()

    def size(self, uri: str) -> int:
        p = local_path(uri)
        if not p.is_file():
            raise StorageError(f"{uri}: file not found")
        return p.stat().st_size

    def read_bytes(self, uri: str) -> bytes:
        with _reading(uri) as p:
            return p.read_bytes()

    def read_head(self, uri: str, n: int) -> bytes:
        with _reading(uri) as p, p.open("rb") as f:
            return f.read(n)

    def write_bytes(self, uri: str, data: bytes) -> None:
        self._written(uri, lambda tmp: tmp.write_bytes(data), os.replace)

    def upload_file(self, src: Path, uri: str) -> None:
        self._written(uri, lambda tmp: shutil.copyfile(src, tmp), os.replace)

    def create_exclusive(self, uri: str, data: bytes) -> bool:
        created: list[bool] = []

        def link(tmp: Path, p: Path) -> None:
            try:
                os.link(tmp, p)
            except FileExistsError:
                created.append(False)
            else:
                created.append(True)

        self._written(uri, lambda tmp: tmp.write_bytes(data), link)
        return created[0]

    def list_files(self, prefix: str) -> list[tuple[str, int]]:
        root = local_path(prefix)
        if not root.is_dir():
            return []
        return [(str(p), n) for p, n in walk_files(root)]

    def delete(self, uri: str) -> None:
        local_path(uri).unlink(missing_ok=True)

    def delete_prefix(self, prefix: str) -> int:
        files = self.list_files(prefix)
        for u, _ in files:
            Path(u).unlink(missing_ok=True)
        root = local_path(prefix)
        if root.is_dir():
            for dirpath, _dirs, _files in sorted(os.walk(root), key=lambda t: -len(t[0])):
                with contextlib.suppress(OSError):
                    Path(dirpath).rmdir()
        return len(files)

    def check_access(self, uri: str, write: bool) -> None:
        p = local_path(uri)
        if write:
            try:
                p.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise StorageError(f"{p}: cannot create the output folder ({e})") from e
            if not os.access(p, os.W_OK):
                raise StorageError(f"{p}: the output folder is not writable")

    @contextlib.contextmanager
    def stage(self, uri: str, scratch_dir: str | Path, size: int | None = None) -> Iterator[Staged]:
        t0 = time.perf_counter()
        p = local_path(uri)
        if not p.is_file():
            raise StorageError(f"{uri}: file not found")
        got = p.stat().st_size
        if size is not None and got != size:
            raise StorageError(f"{uri}: the file has {got:,} bytes, the listing said {size:,}")
        yield Staged(p, got, owned=False, seconds=time.perf_counter() - t0)

    def arrow_filesystem(self, uri: str) -> tuple[pafs.FileSystem, str]:
        return pafs.LocalFileSystem(), str(local_path(uri).resolve())
