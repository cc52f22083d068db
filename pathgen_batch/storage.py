"""Object storage: the only code of the project that talks to S3 (boto3 and pyarrow's S3).

A location is either ``s3://bucket/key`` or a local path (``file://`` accepted). Three jobs:

- **Listing an archive** (:func:`list_archive`): an ``s3://bucket/prefix`` (boto3's
  ``list_objects_v2`` paginator), a local folder (walked, sorted), or a manifest table (CSV or
  Parquet: ``uri``, optional ``slide_id``, ``patient_id``, ``mpp``). Slide extensions are
  filtered; every slide gets a slide id that is safe as a file name.
- **Staging a slide** (:func:`stage`): OpenSlide reads only local files, so an S3 slide is
  downloaded into a scratch folder under a hashed name (object keys are untrusted: ``..``,
  absolute paths, spaces or non-ASCII never reach the file system), its size checked against
  the object's, and removed when the ``with`` block ends. Local slides are read in place.
- **Output files** (:func:`write_bytes`, :func:`upload_file`, :func:`create_exclusive`,
  :func:`read_bytes`, :func:`list_files`, :func:`delete`, :func:`arrow_filesystem`): each file
  appears whole or not at all (local: temporary name then rename; S3: one PUT or a completed
  multipart upload).

Transient failures (connection refused or reset, timeouts, throttling, 5xx) are retried with
exponential backoff (:class:`RetryPolicy`); what still fails becomes a :class:`StorageError`
naming the location. Credentials come from boto3's standard chain (environment, shared files,
instance roles) and ``AWS_ENDPOINT_URL`` selects an S3-compatible server; this module never
reads, logs or stores a credential.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import io
import logging
import os
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import unquote

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from pathgen_batch.errors import ConfigError, DataError, PathgenError

log = logging.getLogger(__name__)
T = TypeVar("T")

SLIDE_EXTENSIONS: frozenset[str] = frozenset(
    {".svs", ".tif", ".tiff", ".ndpi", ".vms", ".vmu", ".scn", ".mrxs", ".svslide", ".bif"}
)
MANIFEST_SUFFIXES = (".csv", ".parquet")
_SAFE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
_RETRYABLE_CODES = frozenset(
    {
        "InternalError",
        "ServiceUnavailable",
        "SlowDown",
        "RequestTimeout",
        "RequestTimeTooSkewed",
        "Throttling",
        "ThrottlingException",
        "500",
        "502",
        "503",
        "504",
    }
)


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
class SlideSource:
    """One slide of an archive: where it is and what is known about it before reading it."""

    uri: str
    slide_id: str
    size: int | None = None  # bytes, when the listing says
    patient_id: str | None = None
    mpp: float | None = None  # um/px override from a manifest


# -- locations ------------------------------------------------------------------------------
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


def join(base: str, *parts: str) -> str:
    """``base`` with ``parts`` appended, '/'-separated for S3 and by the OS for local paths."""
    for p in parts:
        if not p or p.startswith("/") or ".." in p.split("/"):
            raise ConfigError(f"path part {p!r} must be relative and must not contain '..'")
    if is_s3(base):
        return "/".join([base.rstrip("/"), *parts])
    return str(local_path(base).joinpath(*parts))


def normalise(uri: str | Path) -> str:
    """``s3://`` URIs as given (no trailing '/'), local locations as absolute paths."""
    text = str(uri)
    if is_s3(text):
        split_s3(text)
        return text.rstrip("/") if text.rstrip("/") != "s3:/" else text
    return str(local_path(text).resolve())


# -- S3 client ------------------------------------------------------------------------------
_CLIENTS: dict[tuple[int, str | None], Any] = {}
_CLIENT_LOCK = threading.Lock()
# at DEBUG these libraries log signed request headers (which name the access key id)
_QUIET = ("botocore", "boto3", "s3transfer", "urllib3")


def _quiet_transport_logs() -> None:
    for name in _QUIET:
        logger = logging.getLogger(name)
        if logger.getEffectiveLevel() < logging.INFO:
            logger.setLevel(logging.INFO)


def redact(text: str) -> str:
    """``text`` with the user-info of every URI in it (``scheme://user:secret@host``) removed."""
    return re.sub(r"([A-Za-z][A-Za-z0-9+.-]*://)[^/@\s]+@", r"\1***@", text)


def s3_client() -> Any:
    """A boto3 S3 client for this process (standard credential chain; ``AWS_ENDPOINT_URL``)."""
    key = (os.getpid(), os.environ.get("AWS_ENDPOINT_URL"))
    with _CLIENT_LOCK:
        client = _CLIENTS.get(key)
        if client is None:
            _quiet_transport_logs()
            import boto3
            from botocore.config import Config

            cfg = Config(
                retries={"mode": "standard", "max_attempts": 2},
                connect_timeout=5,
                read_timeout=60,
                s3={"addressing_style": "path"},
            )
            session = boto3.session.Session()
            client = session.client("s3", config=cfg)
            _CLIENTS[key] = client
        return client


def _error_code(e: BaseException) -> str:
    resp = getattr(e, "response", None)
    if isinstance(resp, dict):
        err = resp.get("Error", {})
        code = str(err.get("Code", ""))
        if code:
            return code
        status = resp.get("ResponseMetadata", {}).get("HTTPStatusCode")
        return str(status) if status else ""
    return ""


def _is_transient(e: BaseException) -> bool:
    from botocore.exceptions import BotoCoreError, ClientError

    if isinstance(e, ClientError):
        return _error_code(e) in _RETRYABLE_CODES
    if isinstance(e, BotoCoreError):
        return True  # connection refused/reset, timeouts, incomplete reads
    return isinstance(e, ConnectionError | TimeoutError)


def _is_missing(e: BaseException) -> bool:
    return _error_code(e) in ("NoSuchKey", "404", "NotFound", "NoSuchBucket")


def _reason(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}".rstrip(": ")


def with_retries(what: str, fn: Callable[[], T], retry: RetryPolicy = DEFAULT_RETRY) -> T:
    """``fn()`` retried on transient storage errors; the last failure becomes a StorageError."""
    from botocore.exceptions import BotoCoreError, ClientError

    last: BaseException | None = None
    for k in range(retry.attempts):
        try:
            return fn()
        except (BotoCoreError, ClientError, OSError) as e:
            if isinstance(e, OSError) and not isinstance(e, ConnectionError | TimeoutError):
                raise
            last = e
            if not _is_transient(e):
                break
            if k + 1 < retry.attempts:
                wait = retry.delay(k)
                log.info("%s: %s; retrying in %.1f s", what, _reason(e), wait)
                time.sleep(wait)
    assert last is not None
    tries = "" if not _is_transient(last) else f" after {retry.attempts} tries"
    raise StorageError(f"{what}: {_reason(last)}{tries}") from last


# -- listing --------------------------------------------------------------------------------
def slide_id_for(name: str) -> str:
    """A slide id from an object or file name: its stem when that is a safe file name, else the
    stem with unsafe characters replaced and a short hash of the name appended (unique)."""
    base = name.replace("\\", "/").rsplit("/", 1)[-1]
    stem = base.rsplit(".", 1)[0] if "." in base.strip(".") else base
    if _SAFE_ID.fullmatch(stem) and ".." not in stem:
        return stem
    clean = _UNSAFE.sub("_", stem).replace("..", "_").strip("._-") or "slide"
    return f"{clean[:64]}-{hashlib.sha256(name.encode('utf-8', 'surrogatepass')).hexdigest()[:8]}"


def check_slide_id(slide_id: object, where: str = "slide_id") -> str:
    if not isinstance(slide_id, str) or not _SAFE_ID.fullmatch(slide_id) or ".." in slide_id:
        raise DataError(
            f"{where}: expected letters, digits, '.', '_' or '-' (not starting with a separator, "
            f"no '..'), got {slide_id!r}"
        )
    return slide_id


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


def _list_s3(uri: str, retry: RetryPolicy, page_size: int = 1000) -> Iterator[tuple[str, int]]:
    """(key, size) of every object under an s3:// prefix, in key order (``page_size`` keys
    per request of the paginator)."""
    bucket, prefix = split_s3(uri)
    if prefix and not prefix.endswith("/"):
        prefix += "/"
    client = s3_client()

    def pages() -> list[dict[str, Any]]:
        pager = client.get_paginator("list_objects_v2")
        pages = pager.paginate(
            Bucket=bucket, Prefix=prefix, PaginationConfig={"PageSize": page_size}
        )
        return list(pages)

    for page in with_retries(f"listing {uri}", pages, retry):
        for obj in page.get("Contents", []) or []:
            yield str(obj["Key"]), int(obj["Size"])


def _list_local(root: Path) -> Iterator[tuple[Path, int]]:
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for f in sorted(filenames):
            if f.startswith("."):
                continue
            p = Path(dirpath) / f
            if p.is_file():
                yield p, p.stat().st_size


def _optional(value: Any) -> Any:
    if value is None:
        return None
    if isinstance(value, float) and value != value:  # NaN from a CSV's empty cell
        return None
    if isinstance(value, str) and not value.strip():
        return None
    return value


def read_manifest(uri: str, retry: RetryPolicy = DEFAULT_RETRY) -> list[SlideSource]:
    """Slides listed in a CSV or Parquet table: ``uri`` (s3:// or absolute path), optional
    ``slide_id``, ``patient_id`` and ``mpp`` (um/px override)."""
    data = read_bytes(uri, retry)
    try:
        if uri.lower().endswith(".csv"):
            table = pacsv.read_csv(
                io.BytesIO(data),
                convert_options=pacsv.ConvertOptions(
                    column_types={
                        "uri": pa.string(),
                        "slide_id": pa.string(),
                        "patient_id": pa.string(),
                    },
                ),
            )
        else:
            table = pq.read_table(io.BytesIO(data))
    except (pa.ArrowInvalid, OSError) as e:
        raise DataError(f"{uri}: not a readable manifest table ({e})") from e
    if "uri" not in table.column_names:
        raise DataError(
            f"{uri}: a manifest needs a 'uri' column (optional: slide_id, patient_id, mpp), "
            f"got columns {table.column_names}"
        )
    allowed = {"uri", "slide_id", "patient_id", "mpp"}
    extra = sorted(set(table.column_names) - allowed)
    if extra:
        raise DataError(f"{uri}: unknown manifest column(s) {extra}; allowed: {sorted(allowed)}")
    out = []
    for i, row in enumerate(table.to_pylist()):
        where = f"{uri} row {i + 1}"
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
        out.append(
            SlideSource(
                uri=u,
                slide_id=sid or slide_id_for(u),
                patient_id=None if pid is None else str(pid),
                mpp=mpp,
            )
        )
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
    lower = uri.lower()
    if lower.endswith(MANIFEST_SUFFIXES):
        return read_manifest(uri, retry)
    if is_s3(uri):
        base = uri.rstrip("/")
        sources = [
            SlideSource(uri=f"s3://{split_s3(uri)[0]}/{key}", slide_id=slide_id_for(key), size=n)
            for key, n in _list_s3(base, retry, page_size)
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
            for p, n in _list_local(root)
            if _has_extension(p.name, exts)
        ]
    return _unique(sorted(sources, key=lambda s: s.uri), uri)


# -- staging --------------------------------------------------------------------------------
def scratch_name(uri: str) -> str:
    """A local file name for ``uri``: a hash of the whole URI plus its extension when that is a
    known slide extension. Nothing of the key reaches the file system."""
    digest = hashlib.sha256(uri.encode("utf-8", "surrogatepass")).hexdigest()[:32]
    name = uri.rsplit("/", 1)[-1].lower()
    ext = "." + name.rsplit(".", 1)[-1] if "." in name else ""
    return digest + (ext if ext in SLIDE_EXTENSIONS else ".slide")


@dataclass(frozen=True)
class Staged:
    """A slide on local disk. ``owned``: the file is a downloaded copy (deleted after use)."""

    path: Path
    size: int
    owned: bool
    seconds: float


def _inside(path: Path, folder: Path) -> bool:
    try:
        path.resolve().relative_to(folder.resolve())
    except ValueError:
        return False
    return True


def _download(source: SlideSource, dest: Path, retry: RetryPolicy) -> int:
    bucket, key = split_s3(source.uri)
    client = s3_client()
    expected = source.size
    last: StorageError | None = None
    for k in range(retry.attempts):
        part = dest.with_name(f".{dest.name}.{uuid.uuid4().hex[:8]}.part")
        try:
            if expected is None:
                head = with_retries(
                    f"reading the size of {source.uri}",
                    lambda: client.head_object(Bucket=bucket, Key=key),
                    retry,
                )
                expected = int(head["ContentLength"])
            with_retries(
                f"downloading {source.uri}",
                functools.partial(client.download_file, bucket, key, str(part)),
                RetryPolicy(1),
            )
            got = part.stat().st_size
            if got != expected:
                raise StorageError(
                    f"downloading {source.uri}: got {got:,} bytes, the object has {expected:,}"
                )
            os.replace(part, dest)
            return got
        except StorageError as e:
            last = e
            if _is_missing(e.__cause__ or e) or (
                e.__cause__ is not None and not _is_transient(e.__cause__)
            ):
                break
            if k + 1 < retry.attempts:
                time.sleep(retry.delay(k))
        finally:
            part.unlink(missing_ok=True)
    assert last is not None
    raise StorageError(f"{last} (gave up after {k + 1} tries)") from last.__cause__


@contextlib.contextmanager
def stage(
    source: SlideSource, scratch_dir: str | Path, retry: RetryPolicy = DEFAULT_RETRY
) -> Iterator[Staged]:
    """The slide as a local file for the duration of the ``with`` block.

    S3 objects are downloaded into ``scratch_dir`` under :func:`scratch_name` (size checked,
    retried per ``retry``) and deleted afterwards; local files are used in place.
    """
    t0 = time.perf_counter()
    if not is_s3(source.uri):
        p = local_path(source.uri)
        if not p.is_file():
            raise StorageError(f"{source.uri}: slide file not found")
        size = p.stat().st_size
        if source.size is not None and size != source.size:
            raise StorageError(
                f"{source.uri}: the file has {size:,} bytes, the listing said {source.size:,}"
            )
        yield Staged(p, size, owned=False, seconds=time.perf_counter() - t0)
        return
    scratch = Path(scratch_dir)
    scratch.mkdir(parents=True, exist_ok=True)
    dest = scratch / scratch_name(source.uri)
    if not _inside(dest, scratch):  # cannot happen with hashed names; kept as a guard
        raise StorageError(f"{source.uri}: refusing to stage outside {scratch}")
    try:
        size = _download(source, dest, retry)
        yield Staged(dest, size, owned=True, seconds=time.perf_counter() - t0)
    finally:
        dest.unlink(missing_ok=True)


# -- output files ---------------------------------------------------------------------------
def _tmp_sibling(p: Path) -> Path:
    return p.with_name(f".{p.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")


def write_bytes(uri: str, data: bytes, retry: RetryPolicy = DEFAULT_RETRY) -> None:
    """Write a whole file: readers see the old content, or none, or all of the new one."""
    if is_s3(uri):
        bucket, key = split_s3(uri)
        client = s3_client()
        with_retries(
            f"writing {uri}", lambda: client.put_object(Bucket=bucket, Key=key, Body=data), retry
        )
        return
    p = local_path(uri)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_sibling(p)
    try:
        tmp.write_bytes(data)
        os.replace(tmp, p)
    finally:
        tmp.unlink(missing_ok=True)


def upload_file(src: str | Path, uri: str, retry: RetryPolicy = DEFAULT_RETRY) -> None:
    """Copy local file ``src`` to ``uri`` atomically (S3: multipart upload when large)."""
    s = Path(src)
    if is_s3(uri):
        bucket, key = split_s3(uri)
        client = s3_client()
        with_retries(f"writing {uri}", lambda: client.upload_file(str(s), bucket, key), retry)
        return
    p = local_path(uri)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_sibling(p)
    try:
        with open(s, "rb") as fi, open(tmp, "wb") as fo:
            while block := fi.read(1 << 20):
                fo.write(block)
        os.replace(tmp, p)
    finally:
        tmp.unlink(missing_ok=True)


def create_exclusive(uri: str, data: bytes, retry: RetryPolicy = DEFAULT_RETRY) -> bool:
    """Write ``uri`` only if it does not exist; True when this call created it.

    Local: a hard link of a complete temporary file (atomic, first writer wins). S3: a
    conditional PUT (``If-None-Match: *``), after a check that the key is absent.
    """
    if is_s3(uri):
        if exists(uri, retry):
            return False
        bucket, key = split_s3(uri)
        client = s3_client()
        from botocore.exceptions import ClientError

        def put() -> bool:
            try:
                client.put_object(Bucket=bucket, Key=key, Body=data, IfNoneMatch="*")
            except ClientError as e:
                if _error_code(e) in ("PreconditionFailed", "412", "ConditionalRequestConflict"):
                    return False
                raise
            return True

        return with_retries(f"writing {uri}", put, retry)
    p = local_path(uri)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_sibling(p)
    try:
        tmp.write_bytes(data)
        try:
            os.link(tmp, p)
        except FileExistsError:
            return False
        return True
    finally:
        tmp.unlink(missing_ok=True)


def read_bytes(uri: str, retry: RetryPolicy = DEFAULT_RETRY) -> bytes:
    """A whole file; StorageError when it does not exist or cannot be read."""
    if is_s3(uri):
        bucket, key = split_s3(uri)
        client = s3_client()
        return with_retries(
            f"reading {uri}",
            lambda: client.get_object(Bucket=bucket, Key=key)["Body"].read(),
            retry,
        )
    p = local_path(uri)
    try:
        return p.read_bytes()
    except FileNotFoundError:
        raise StorageError(f"reading {uri}: no such file") from None
    except IsADirectoryError:
        raise StorageError(f"reading {uri}: a folder, not a file") from None


def exists(uri: str, retry: RetryPolicy = DEFAULT_RETRY) -> bool:
    if is_s3(uri):
        bucket, key = split_s3(uri)
        client = s3_client()
        from botocore.exceptions import ClientError

        def head() -> bool:
            try:
                client.head_object(Bucket=bucket, Key=key)
            except ClientError as e:
                if _is_missing(e):
                    return False
                raise
            return True

        return with_retries(f"checking {uri}", head, retry)
    return local_path(uri).is_file()


def list_files(prefix: str, retry: RetryPolicy = DEFAULT_RETRY) -> list[tuple[str, int]]:
    """(uri, size) of every file under ``prefix`` (a folder), sorted; [] when there is none.
    Temporary files of unfinished local writes (hidden names) are not listed."""
    if is_s3(prefix):
        bucket, _ = split_s3(prefix)
        return [(f"s3://{bucket}/{k}", n) for k, n in _list_s3(prefix.rstrip("/"), retry)]
    root = local_path(prefix)
    if not root.is_dir():
        return []
    return [(str(p), n) for p, n in _list_local(root)]


def delete(uri: str, retry: RetryPolicy = DEFAULT_RETRY) -> None:
    """Remove one file (no error when it is absent)."""
    if is_s3(uri):
        bucket, key = split_s3(uri)
        client = s3_client()
        with_retries(f"deleting {uri}", lambda: client.delete_object(Bucket=bucket, Key=key), retry)
        return
    local_path(uri).unlink(missing_ok=True)


def delete_prefix(prefix: str, retry: RetryPolicy = DEFAULT_RETRY) -> int:
    """Remove every file under ``prefix`` (and, locally, the emptied folders); returns the count."""
    files = list_files(prefix, retry)
    if is_s3(prefix):
        bucket, _ = split_s3(prefix)
        client = s3_client()
        keys = [u[len(f"s3://{bucket}/") :] for u, _ in files]
        for i in range(0, len(keys), 1000):
            chunk = [{"Key": k} for k in keys[i : i + 1000]]
            with_retries(
                f"deleting under {prefix}",
                functools.partial(client.delete_objects, Bucket=bucket, Delete={"Objects": chunk}),
                retry,
            )
        return len(keys)
    root = local_path(prefix)
    for u, _ in files:
        Path(u).unlink(missing_ok=True)
    if root.is_dir():
        for dirpath, _dirs, _files in sorted(os.walk(root), key=lambda t: -len(t[0])):
            with contextlib.suppress(OSError):
                Path(dirpath).rmdir()
    return len(files)


def check_access(uri: str, write: bool, retry: RetryPolicy = DEFAULT_RETRY) -> None:
    """Fail early, with one StorageError, when ``uri`` cannot be listed (or written)."""
    if is_s3(uri):
        bucket, key = split_s3(uri)
        client = s3_client()
        with_retries(
            f"reaching {uri}",
            lambda: client.list_objects_v2(Bucket=bucket, Prefix=key, MaxKeys=1),
            retry,
        )
        if write:
            probe = join(uri, f"_access-check-{uuid.uuid4().hex[:12]}")
            write_bytes(probe, b"", retry)
            delete(probe, retry)
        return
    p = local_path(uri)
    if write:
        try:
            p.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise StorageError(f"{p}: cannot create the output folder ({e})") from e
        if not os.access(p, os.W_OK):
            raise StorageError(f"{p}: the output folder is not writable")


def arrow_filesystem(uri: str) -> tuple[pafs.FileSystem, str]:
    """A pyarrow file system and the path inside it, for pyarrow/pandas readers of ``uri``.

    S3 uses the standard credential chain and ``AWS_ENDPOINT_URL`` like boto3.
    """
    if is_s3(uri):
        bucket, key = split_s3(uri)
        kwargs: dict[str, Any] = {}
        endpoint = os.environ.get("AWS_ENDPOINT_URL")
        if endpoint:
            scheme, _, rest = endpoint.partition("://")
            kwargs.update(endpoint_override=rest or scheme, scheme=scheme if rest else "https")
        region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
        if region:
            kwargs["region"] = region
        return pafs.S3FileSystem(**kwargs), f"{bucket}/{key}".rstrip("/")
    return pafs.LocalFileSystem(), str(local_path(uri).resolve())
