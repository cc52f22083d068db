"""Locations: ``s3://bucket/key`` or a local path (``file://`` accepted), and the checks on the
names that become parts of them (slide ids, run ids, scratch file names)."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from urllib.parse import unquote

from pathgen_batch.errors import ConfigError, DataError

SLIDE_EXTENSIONS: frozenset[str] = frozenset(
    {
        ".svs",
        ".tif",
        ".tiff",
        ".ndpi",
        ".vms",
        ".vmu",
        ".scn",
        ".mrxs",
        ".svslide",
        ".bif",
        ".dcm",  # the instances of a DICOM WSI series: one slide per folder
    }
)
_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
_RUN_ID_MAX = 128


def is_s3(uri: str) -> bool:
    return isinstance(uri, str) and uri.startswith("s3://")


def split_s3(uri: str) -> tuple[str, str]:
    """``s3://bucket/key`` -> (bucket, key); the key may be empty (the bucket's root)."""
    if not is_s3(uri):
        raise ConfigError(f"expected an s3://bucket/key URI, got {uri!r}")
    bucket, _, key = uri[len("s3://") :].partition("/")
    if not _BUCKET.fullmatch(bucket):
        raise ConfigError(
            f"{uri}: bucket name {bucket!r} is not valid (3-63 lowercase letters, digits, '.', '-')"
        )
    return bucket, key


def local_path(uri: str | Path) -> Path:
    """The local path of a non-S3 location (``file://`` stripped)."""
    text = str(uri)
    if is_s3(text):
        raise ConfigError(f"expected a local path, got {text!r}")
    if text.startswith("file://"):
        text = unquote(text[len("file://") :])
    elif "://" in text:
        raise ConfigError(f"unsupported location {text!r}: expected s3://bucket/key or a path")
    return Path(text).expanduser()


def join(base: str | Path, *parts: str) -> str:
    """``base`` with ``parts`` appended, '/'-separated for S3 and by the OS for local paths."""
    for p in parts:
        if not p or p.startswith("/") or ".." in p.split("/"):
            raise ConfigError(f"path part {p!r} must be relative and must not contain '..'")
    text = str(base)
    if is_s3(text):
        return "/".join([text.rstrip("/"), *parts])
    return str(local_path(text).joinpath(*parts))


def basename(uri: str) -> str:
    """The last part of a location (its file name)."""
    return uri.replace("\\", "/").rstrip("/").rsplit("/", 1)[-1]


def normalise(uri: str | Path) -> str:
    """``s3://`` URIs as given (no trailing '/'), local locations as absolute paths."""
    text = str(uri)
    if is_s3(text):
        split_s3(text)
        return text.rstrip("/") if text.rstrip("/") != "s3:/" else text
    return str(local_path(text).resolve())


def redact(text: str) -> str:
    """``text`` with the user-info of every URI in it (``scheme://user:secret@host``) removed."""
    return re.sub(r"([A-Za-z][A-Za-z0-9+.-]*://)[^/@\s]+@", r"\1***@", text)


# -- names that become parts of locations ------------------------------------------------------
def is_safe_name(name: object, max_len: int | None = None) -> bool:
    """Letters, digits, '.', '_', '-', starting with a letter or digit, no '..'."""
    return (
        isinstance(name, str)
        and _SAFE_NAME.fullmatch(name) is not None
        and ".." not in name
        and (max_len is None or len(name) <= max_len)
    )


def check_slide_id(slide_id: object, where: str = "slide_id") -> str:
    """A slide id names files: letters, digits, '.', '_' or '-' (DataError otherwise)."""
    if not is_safe_name(slide_id):
        raise DataError(
            f"{where}: expected letters, digits, '.', '_' or '-' (not starting with a separator, "
            f"no '..'), got {slide_id!r}"
        )
    return str(slide_id)


def check_run_id(run_id: object) -> str:
    """Run ids name folders: letters, digits, '.', '_', '-' (at most 128, no '..')."""
    if not is_safe_name(run_id, _RUN_ID_MAX):
        raise DataError(
            f"run id: expected 1-{_RUN_ID_MAX} letters, digits, '.', '_' or '-' (starting with a "
            f"letter or digit, no '..'), got {run_id!r}"
        )
    return str(run_id)


def slide_id_for(name: str) -> str:
    """A slide id from an object or file name: its stem when that is a safe file name, else the
    stem with unsafe characters replaced and a short hash of the name appended (unique)."""
    base = name.replace("\\", "/").rsplit("/", 1)[-1]
    stem = base.rsplit(".", 1)[0] if "." in base.strip(".") else base
    return _safe_id(stem, name)


def folder_slide_id(name: str) -> str:
    """A slide id from a folder or prefix holding one slide's files (a DICOM series): the
    folder's own name, whole, when that is a safe file name (as :func:`slide_id_for` else)."""
    base = name.replace("\\", "/").rstrip("/").rsplit("/", 1)[-1]
    return _safe_id(base, name)


def _safe_id(stem: str, name: str) -> str:
    if is_safe_name(stem):
        return stem
    clean = _UNSAFE.sub("_", stem).replace("..", "_").strip("._-") or "slide"
    return f"{clean[:64]}-{hashlib.sha256(name.encode('utf-8', 'surrogatepass')).hexdigest()[:8]}"


def scratch_name(uri: str, extensions: frozenset[str] = SLIDE_EXTENSIONS) -> str:
    """A local file name for ``uri``: a hash of the whole URI plus its extension when that is
    one of ``extensions``. Nothing of the key reaches the file system."""
    digest = hashlib.sha256(uri.encode("utf-8", "surrogatepass")).hexdigest()[:32]
    name = uri.rsplit("/", 1)[-1].lower()
    ext = "." + name.rsplit(".", 1)[-1] if "." in name else ""
    return digest + (ext if ext in extensions else ".slide")
