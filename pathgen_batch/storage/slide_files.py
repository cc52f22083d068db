"""Slides stored as several files: which files of an archive make one slide, and staging all
of them together.

OpenSlide opens these formats from one file and finds the others by name beside it:

- **DICOM WSI**: the ``.dcm`` instances of one series, grouped by study and series UID
  (:mod:`.dicom`): a folder (or S3 prefix) that holds one series is one slide, whose location
  is the folder with a trailing ``/``; a folder that holds several gives one slide per series,
  located at its first instance. OpenSlide opens any instance and reads the others of its
  series from its folder.
- **MIRAX**: ``X.mrxs`` and the folder ``X/`` beside it (``Slidedat.ini``, ``Index.dat``,
  ``Data*.dat``).
- **Hamamatsu VMS/VMU**: ``X.vms`` or ``X.vmu``, an INI file that names its image files
  (``ImageFile``, ``ImageFile(x,y)``), ``MapFile``, ``OptimisationFile`` and ``MacroImage`` in
  the same folder.

A slide's listed size is the sum over all its files; staging lists them again, checks every
size, and downloads them under one hashed scratch folder (companion names are checked, or
replaced, so nothing of an untrusted key reaches the file system), or uses local files in place.
"""

from __future__ import annotations

import contextlib
import hashlib
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from pathgen_batch.storage.base import Staged, StorageError, Store
from pathgen_batch.storage.dicom import HEAD_BYTES, Series, same_series, split_series
from pathgen_batch.storage.locations import basename, is_s3, is_safe_name, local_path
from pathgen_batch.storage.s3 import S3Store

FILE, DICOM, MIRAX, VMS = "file", "dicom", "mirax", "vms"
_VMS_EXTS = (".vms", ".vmu")
_VMS_KEYS = ("ImageFile", "MapFile", "OptimisationFile", "MacroImage")
_MAX_VMS_BYTES = 1 << 20  # a VMS/VMU index file is a few kB of text


def slide_kind(uri: str) -> str:
    """The multi-file format a slide location names (:data:`FILE` for a single file); a local
    folder, or a location ending in ``/``, is a DICOM series."""
    lower = uri.lower()
    if uri.endswith("/") or (not is_s3(uri) and local_path(uri).is_dir()):
        return DICOM
    if lower.endswith(".dcm"):  # an instance: the slide is its series
        return DICOM
    if lower.endswith(".mrxs"):
        return MIRAX
    if lower.endswith(_VMS_EXTS):
        return VMS
    return FILE


def vms_companions(text: bytes, where: str) -> list[str]:
    """File names a VMS/VMU index names (image files, map, optimisation, macro), in order."""
    if len(text) > _MAX_VMS_BYTES:
        raise StorageError(f"{where}: {len(text):,} bytes is too large for a VMS/VMU index file")
    names: list[str] = []
    for line in text.decode("utf-8", "replace").splitlines():
        key, eq, value = line.partition("=")
        key, value = key.strip(), value.strip()
        if not eq or not value:
            continue
        named = key in _VMS_KEYS or (key.startswith("ImageFile(") and key.endswith(")"))
        if named and value not in names:
            names.append(value)
    return names


@dataclass(frozen=True)
class SlideFiles:
    """The files of one slide inside an archive, by '/'-separated keys relative to its root.
    ``location`` is the slide's key (a folder key ending in '/' for a DICOM series);
    ``files`` are (key, bytes), the main file first."""

    location: str
    kind: str
    files: tuple[tuple[str, int], ...]
    series: Series | None = None  # a DICOM series that shares its folder with others

    @property
    def size(self) -> int:
        return sum(n for _, n in self.files)


def _parent(key: str) -> str:
    return key.rsplit("/", 1)[0] + "/" if "/" in key else ""


def group_files(
    files: Sequence[tuple[str, int]],
    extensions: frozenset[str],
    read: Callable[[str], bytes],
    head: Callable[[str], bytes] | None = None,
) -> tuple[list[SlideFiles], list[tuple[str, str]]]:
    """The slides among an archive's files, and the (key, reason) of every file that is not
    one. ``files``: (key, bytes) relative to the archive root; ``read(key)`` reads a VMS/VMU
    index, ``head(key)`` the start of a DICOM instance (None: one series per folder).
    Companion files are claimed by their slide (MIRAX folders, VMS/VMU image files, DICOM
    instances); a file that no slide claims and whose extension is not in ``extensions`` is
    skipped."""
    sizes = dict(files)
    claimed: dict[str, str] = {}  # companion key -> its slide's location
    slides: list[SlideFiles] = []

    def take(location: str, kind: str, keys: list[str], series: Series | None = None) -> None:
        files = tuple((k, sizes[k]) for k in keys)
        slides.append(SlideFiles(location, kind, files, series))
        for k in keys:
            if k != location:
                claimed[k] = location

    def has_ext(key: str, exts: Sequence[str]) -> bool:
        return key.lower().endswith(tuple(exts)) and key.lower().endswith(tuple(extensions))

    for key in sizes:
        if has_ext(key, (".mrxs",)):
            folder = key[: -len(".mrxs")] + "/"
            take(key, MIRAX, [key, *(k for k in sizes if k.startswith(folder))])
    for key in sizes:
        if key not in claimed and has_ext(key, _VMS_EXTS):
            try:
                names = vms_companions(read(key), key)
            except StorageError:  # listed alone: staging it fails, with the reason, as a row
                names = []
            here = _parent(key)
            take(key, VMS, [key, *(here + n for n in names if here + n in sizes and "/" not in n)])
    series: dict[str, list[str]] = {}
    for key in sizes:
        if key not in claimed and has_ext(key, (".dcm",)):
            series.setdefault(_parent(key), []).append(key)
    for folder, keys in series.items():
        if head is None:
            take(folder, DICOM, keys)  # every instance is a companion of its folder
            continue
        for g in split_series(folder, keys, head):
            take(g.location, DICOM, list(g.keys), g.series)
    skipped: list[tuple[str, str]] = []
    mains = {s.location for s in slides}
    for key in sizes:
        if key in claimed:
            skipped.append((key, f"companion file of {claimed[key] or './'}"))
        elif key not in mains and not key.lower().endswith(tuple(extensions)):
            skipped.append((key, "not a slide extension"))
        elif key not in mains:
            take(key, FILE, [key])
    return sorted(slides, key=lambda s: s.location), skipped


# -- staging -------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Part:
    uri: str  # where the file is
    name: str  # its path inside the scratch folder
    size: int


def _safe_companion(name: str, slide: str) -> str:
    if not all(is_safe_name(p) for p in name.split("/")):
        raise StorageError(
            f"{slide}: companion file name {name!r} is not a plain file name (letters, digits, "
            "'.', '_', '-'); refusing to stage it"
        )
    return name


def _parts(uri: str, kind: str, store: Store) -> list[_Part]:
    """Every file of the slide at ``uri`` (the main file first) and its scratch name."""
    if kind == DICOM:
        instance = uri.lower().endswith(".dcm")
        here = uri[: len(uri) - len(basename(uri))] if instance else uri.rstrip("/") + "/"
        found = [
            (u, n)
            for u, n in store.list_files(here)
            if u.lower().endswith(".dcm") and "/" not in u[len(here) :].replace("\\", "/")
        ]
        if instance:  # the instances of its series, itself first
            in_series = same_series(uri, found, lambda u: store.read_head(u, HEAD_BYTES))
            if in_series is None:
                raise StorageError(f"{uri}: not a readable DICOM instance (no series UID)")
            found = in_series
        if not found:
            raise StorageError(f"{uri}: no DICOM instances (.dcm files) in this folder")
        return [_Part(u, f"{i:05d}.dcm", n) for i, (u, n) in enumerate(found)]
    main = _Part(uri, "slide" + uri[uri.rfind(".") :].lower(), store.size(uri))
    if kind == MIRAX:
        folder = uri[: -len(".mrxs")] + "/"
        data = store.list_files(folder)
        if not data:
            raise StorageError(f"{uri}: its MIRAX data folder {folder} is missing or empty")
        rel = [u[len(folder) :].replace("\\", "/") for u, _ in data]
        return [main] + [
            _Part(u, "slide/" + _safe_companion(r, uri), n)
            for (u, n), r in zip(data, rel, strict=True)
        ]
    here = uri[: len(uri) - len(uri.replace("\\", "/").rsplit("/", 1)[-1])]
    out = [main]
    for i, name in enumerate(vms_companions(store.read_bytes(uri), uri)):
        if "/" in name or "\\" in name or name in (".", ".."):
            raise StorageError(f"{uri}: names {name!r}, a file outside its own folder")
        try:
            n = store.size(here + name)
        except StorageError:
            raise StorageError(f"{uri}: the file {name!r} it names is missing") from None
        suffix = name[name.rfind(".") :].lower() if "." in name else ""
        scratch = (
            name
            if is_safe_name(name)
            else f"part{i:04d}{suffix if is_safe_name('x' + suffix) else ''}"
        )
        out.append(_Part(here + name, scratch, n))
    return out


def _renamed_vms(text: bytes, renames: dict[str, str]) -> bytes:
    lines = []
    for line in text.decode("utf-8", "replace").splitlines():
        key, eq, value = line.partition("=")
        if eq and value.strip() in renames:
            line = f"{key}={renames[value.strip()]}"
        lines.append(line)
    return ("\n".join(lines) + "\n").encode()


@contextlib.contextmanager
def stage_slide_files(
    uri: str,
    kind: str,
    store: Store,
    scratch_dir: str | Path,
    size: int | None,
) -> Iterator[Staged]:
    """All files of a multi-file slide as local files, for the ``with`` block; the staged path
    is the file OpenSlide opens. ``size``: the listing's total (checked when given)."""
    t0 = time.perf_counter()
    parts = _parts(uri, kind, store)
    total = sum(p.size for p in parts)
    if size is not None and total != size:
        raise StorageError(
            f"{uri}: its {len(parts)} file(s) have {total:,} bytes, the listing said {size:,} "
            "(a file was added, removed or changed since the listing)"
        )
    if not isinstance(store, S3Store):
        yield Staged(local_path(parts[0].uri), total, owned=False, seconds=time.perf_counter() - t0)
        return
    digest = hashlib.sha256(uri.encode("utf-8", "surrogatepass")).hexdigest()[:32]
    folder = Path(scratch_dir) / digest
    shutil.rmtree(folder, ignore_errors=True)
    try:
        folder.mkdir(parents=True)
        for p in parts:
            dest = folder / p.name
            dest.parent.mkdir(parents=True, exist_ok=True)
            store.download(p.uri, dest, p.size)
        renames = {basename(p.uri): p.name for p in parts[1:] if basename(p.uri) != p.name}
        if kind == VMS and renames:  # unsafe companion names were replaced: say so in the index
            main = folder / parts[0].name
            main.write_bytes(_renamed_vms(main.read_bytes(), renames))
        yield Staged(folder / parts[0].name, total, owned=True, seconds=time.perf_counter() - t0)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
