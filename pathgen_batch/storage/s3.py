"""The S3 implementation of :class:`~pathgen_batch.storage.base.Store` (boto3 lives only here).

Whole writes are one PUT (or a completed multipart upload for large local files); exclusive
creation is a conditional PUT (``If-None-Match: *``). Transient failures (connection refused
or reset, timeouts, throttling, 5xx) are retried with exponential backoff
(:class:`~pathgen_batch.storage.base.RetryPolicy`); what still fails becomes a StorageError
naming the location. Credentials come from boto3's standard chain (environment, shared files,
instance roles), or from the profile named for the location
(:mod:`pathgen_batch.storage.credentials`); ``AWS_ENDPOINT_URL`` selects an S3-compatible
server. This module never logs or stores a credential.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pyarrow.fs as pafs

from pathgen_batch.storage.base import DEFAULT_RETRY, RetryPolicy, Staged, StorageError, Store
from pathgen_batch.storage.credentials import profile_for
from pathgen_batch.storage.locations import join, scratch_name, split_s3

log = logging.getLogger(__name__)
T = TypeVar("T")

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
_MISSING_CODES = ("NoSuchKey", "404", "NotFound", "NoSuchBucket")
_PRECONDITION_CODES = ("PreconditionFailed", "412", "ConditionalRequestConflict")
_DENIED_CODES = ("AccessDenied", "403", "Forbidden", "AllAccessDisabled")
_CLIENTS: dict[tuple[int, str | None, str | None], Any] = {}
_CLIENT_LOCK = threading.Lock()
# at DEBUG these libraries log signed request headers (which name the access key id)
_QUIET = ("botocore", "boto3", "s3transfer", "urllib3")


def _quiet_transport_logs() -> None:
    for name in _QUIET:
        logger = logging.getLogger(name)
        if logger.getEffectiveLevel() < logging.INFO:
            logger.setLevel(logging.INFO)


def _session(profile: str | None) -> Any:
    import boto3

    return boto3.session.Session(profile_name=profile)


def s3_client(uri: str = "") -> Any:
    """A boto3 S3 client for ``uri`` in this process: the profile named for its location, else
    the standard credential chain; ``AWS_ENDPOINT_URL``."""
    profile = profile_for(uri)
    key = (os.getpid(), os.environ.get("AWS_ENDPOINT_URL"), profile)
    with _CLIENT_LOCK:
        client = _CLIENTS.get(key)
        if client is None:
            _quiet_transport_logs()
            from botocore.config import Config

            cfg = Config(
                retries={"mode": "standard", "max_attempts": 2},
                connect_timeout=5,
                read_timeout=60,
                s3={"addressing_style": "path"},
            )
            client = _session(profile).client("s3", config=cfg)
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
    return _error_code(e) in _MISSING_CODES


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


def _identity(uri: str) -> str:
    profile = profile_for(uri)
    return f"profile {profile!r}" if profile else "the default credentials"


def _inside(path: Path, folder: Path) -> bool:
    try:
        path.resolve().relative_to(folder.resolve())
    except ValueError:
        return False
    return True


class S3Store(Store):
    """Objects in S3 buckets (``s3://bucket/key``), or any S3-compatible server."""

    def _call(self, what: str, fn: Callable[[], T]) -> T:
        return with_retries(what, fn, self.retry)

    def list_objects(self, uri: str, page_size: int = 1000) -> Iterator[tuple[str, int]]:
        """(key, size) of every object under an s3:// prefix, in key order (``page_size``
        keys per request of the paginator)."""
        bucket, prefix = split_s3(uri.rstrip("/"))
        if prefix and not prefix.endswith("/"):
            prefix += "/"
        client = s3_client(uri)

        def pages() -> list[dict[str, Any]]:
            pager = client.get_paginator("list_objects_v2")
            config = {"PageSize": page_size}
            return list(pager.paginate(Bucket=bucket, Prefix=prefix, PaginationConfig=config))

        for page in self._call(f"listing {uri}", pages):
            for obj in page.get("Contents", []) or []:
                yield str(obj["Key"]), int(obj["Size"])

    def exists(self, uri: str) -> bool:
        bucket, key = split_s3(uri)
        client = s3_client(uri)
        from botocore.exceptions import ClientError

        def head() -> bool:
            try:
                client.head_object(Bucket=bucket, Key=key)
            except ClientError as e:
                if _is_missing(e):
                    return False
                raise
            return True

        return self._call(f"checking {uri}", head)

    def size(self, uri: str) -> int:
        bucket, key = split_s3(uri)
        client = s3_client(uri)
        from botocore.exceptions import ClientError

        def head() -> int:
            try:
                return int(client.head_object(Bucket=bucket, Key=key)["ContentLength"])
            except ClientError as e:
                if _is_missing(e):
                    raise StorageError(f"{uri}: no such object") from None
                raise

        return self._call(f"reading the size of {uri}", head)

    def read_bytes(self, uri: str) -> bytes:
        bucket, key = split_s3(uri)
        client = s3_client(uri)
        return self._call(
            f"reading {uri}", lambda: client.get_object(Bucket=bucket, Key=key)["Body"].read()
        )

    def read_head(self, uri: str, n: int) -> bytes:
        bucket, key = split_s3(uri)
        client = s3_client(uri)
        return self._call(
            f"reading {uri}",
            lambda: client.get_object(Bucket=bucket, Key=key, Range=f"bytes=0-{n - 1}")[
                "Body"
            ].read(),
        )

    def write_bytes(self, uri: str, data: bytes) -> None:
        bucket, key = split_s3(uri)
        client = s3_client(uri)
        self._call(f"writing {uri}", lambda: client.put_object(Bucket=bucket, Key=key, Body=data))

    def upload_file(self, src: Path, uri: str) -> None:
        bucket, key = split_s3(uri)
        client = s3_client(uri)
        self._call(f"writing {uri}", lambda: client.upload_file(str(src), bucket, key))

    def create_exclusive(self, uri: str, data: bytes) -> bool:
        if self.exists(uri):
            return False
        bucket, key = split_s3(uri)
        client = s3_client(uri)
        from botocore.exceptions import ClientError

        def put() -> bool:
            try:
                client.put_object(Bucket=bucket, Key=key, Body=data, IfNoneMatch="*")
            except ClientError as e:
                if _error_code(e) in _PRECONDITION_CODES:
                    return False
                raise
            return True

        return self._call(f"writing {uri}", put)

    def list_files(self, prefix: str) -> list[tuple[str, int]]:
        bucket, _ = split_s3(prefix)
        return [(f"s3://{bucket}/{k}", n) for k, n in self.list_objects(prefix)]

    def delete(self, uri: str) -> None:
        bucket, key = split_s3(uri)
        client = s3_client(uri)
        self._call(f"deleting {uri}", lambda: client.delete_object(Bucket=bucket, Key=key))

    def delete_prefix(self, prefix: str) -> int:
        bucket, _ = split_s3(prefix)
        client = s3_client(prefix)
        keys = [k for k, _ in self.list_objects(prefix)]
        for i in range(0, len(keys), 1000):
            chunk = [{"Key": k} for k in keys[i : i + 1000]]
            self._call(
                f"deleting under {prefix}",
                functools.partial(client.delete_objects, Bucket=bucket, Delete={"Objects": chunk}),
            )
        return len(keys)

    def check_access(self, uri: str, write: bool) -> None:
        """List ``uri`` and read one object under it; with ``write``, also write, read back
        and delete a probe object. A denied request is a StorageError naming the permission."""
        bucket, key = split_s3(uri)
        client = s3_client(uri)
        who = _identity(uri)
        needs = "list, read, write and delete" if write else "list and read"

        def check(what: str, action: str, fn: Callable[[], T]) -> T:
            from botocore.exceptions import ClientError, NoCredentialsError

            try:
                return with_retries(f"reaching {uri}", fn, RetryPolicy(1))
            except StorageError as e:
                if isinstance(e.__cause__, NoCredentialsError):
                    raise StorageError(
                        f"{uri}: no credentials found for {who} (environment, shared "
                        "credentials file, or a profile for this location)"
                    ) from None
                if isinstance(e.__cause__, ClientError) and _error_code(e.__cause__) in (
                    _DENIED_CODES
                ):
                    raise StorageError(
                        f"{uri}: {who} may not {what} ({action} denied); this location needs "
                        f"{needs}"
                    ) from None
                raise

        listed = check(
            "list objects",
            "s3:ListBucket",
            lambda: client.list_objects_v2(Bucket=bucket, Prefix=key, MaxKeys=1),
        )
        first = (listed.get("Contents") or [{}])[0].get("Key")
        if first is not None and not write:
            check(
                "read objects",
                "s3:GetObject",
                lambda: client.get_object(Bucket=bucket, Key=first, Range="bytes=0-0"),
            )
        if write:
            probe = split_s3(join(uri, f"_access-check-{uuid.uuid4().hex[:12]}"))[1]
            check(
                "write objects",
                "s3:PutObject",
                lambda: client.put_object(Bucket=bucket, Key=probe, Body=b""),
            )
            check(
                "read objects",
                "s3:GetObject",
                lambda: client.get_object(Bucket=bucket, Key=probe)["Body"].read(),
            )
            check(
                "delete objects",
                "s3:DeleteObject",
                lambda: client.delete_object(Bucket=bucket, Key=probe),
            )

    def download(self, uri: str, dest: Path, expected: int | None) -> int:
        """Download ``uri`` to ``dest`` (whole: a hidden part file renamed), its size checked
        against ``expected`` or the object's; the whole transfer is retried."""
        bucket, key = split_s3(uri)
        client = s3_client(uri)
        retry = self.retry
        last: StorageError | None = None
        for k in range(retry.attempts):
            part = dest.with_name(f".{dest.name}.{uuid.uuid4().hex[:8]}.part")
            try:
                if expected is None:
                    head = self._call(
                        f"reading the size of {uri}",
                        lambda: client.head_object(Bucket=bucket, Key=key),
                    )
                    expected = int(head["ContentLength"])
                with_retries(
                    f"downloading {uri}",
                    functools.partial(client.download_file, bucket, key, str(part)),
                    RetryPolicy(1),
                )
                got = part.stat().st_size
                if got != expected:
                    raise StorageError(
                        f"downloading {uri}: got {got:,} bytes, the object has {expected:,}"
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
    def stage(self, uri: str, scratch_dir: str | Path, size: int | None = None) -> Iterator[Staged]:
        t0 = time.perf_counter()
        scratch = Path(scratch_dir)
        scratch.mkdir(parents=True, exist_ok=True)
        dest = scratch / scratch_name(uri)
        if not _inside(dest, scratch):  # cannot happen with hashed names; kept as a guard
            raise StorageError(f"{uri}: refusing to stage outside {scratch}")
        try:
            got = self.download(uri, dest, size)
            yield Staged(dest, got, owned=True, seconds=time.perf_counter() - t0)
        finally:
            dest.unlink(missing_ok=True)

    def arrow_filesystem(self, uri: str) -> tuple[pafs.FileSystem, str]:
        """pyarrow's S3 file system, with the standard credential chain and
        ``AWS_ENDPOINT_URL`` like boto3."""
        bucket, key = split_s3(uri)
        kwargs: dict[str, Any] = {}
        endpoint = os.environ.get("AWS_ENDPOINT_URL")
        if endpoint:
            scheme, _, rest = endpoint.partition("://")
            kwargs.update(endpoint_override=rest or scheme, scheme=scheme if rest else "https")
        region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
        if region:
            kwargs["region"] = region
        profile = profile_for(uri)
        if profile is not None:  # pyarrow knows no profiles: hand it that profile's keys
            creds = _session(profile).get_credentials()
            if creds is None:
                raise StorageError(f"{uri}: profile {profile!r} holds no credentials")
            frozen = creds.get_frozen_credentials()
            kwargs.update(
                access_key=frozen.access_key,
                secret_key=frozen.secret_key,
                session_token=frozen.token,
            )
        return pafs.S3FileSystem(**kwargs), f"{bucket}/{key}".rstrip("/")
