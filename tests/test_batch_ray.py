"""The batch scorer end to end: a real 2-node Ray cluster on loopback, a real S3 server,
trained bundles, real slides (good and broken); fault injection: a worker killed mid-run, the
job killed and rerun, the S3 server restarted during a run."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.compute as pc
import pytest
from click.testing import CliRunner
from s3_server import S3Server, free_ports

from pathgen_batch import storage
from pathgen_batch.batch import ScoreConfig, score_archive
from pathgen_batch.cli.score import score
from pathgen_batch.errors import ConfigError
from pathgen_batch.tables import complete_runs, read_table

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
CLI = "from pathgen_batch.cli import main; main()"  # `pathgen-batch`, from this checkout
RAY_ENV = {
    "RAY_ENABLE_UV_RUN_RUNTIME_ENV": "0",
    "RAY_AUTH_MODE": "disabled",
    "RAY_USAGE_STATS_ENABLED": "0",
}
N_GOOD = 6


# -- fixtures: models, slides ---------------------------------------------------------------
@dataclass(frozen=True)
class Trained:
    root: Path
    gen: Path
    fus: Path
    slides: dict[str, Path]  # slide id -> cohort slide file
    patients: dict[str, str]  # slide id -> patient id


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Trained:
    """Tiny generator and fusion bundles trained on a 16-patient synthetic cohort."""
    from tiny_training import tiny_bundles

    root = tmp_path_factory.getbasetemp() / "tiny-bundles"  # shared by the modules that use it
    cohort, gen, fus = tiny_bundles(root)
    clinical = cohort.slides
    return Trained(
        root=root,
        gen=gen,
        fus=fus,
        slides={s: cohort.slide_path(s) for s in cohort.slide_ids},
        patients=dict(zip(clinical["slide_id"], clinical["patient_id"], strict=True)),
    )


def _generic_tiff(path: Path, rgb: np.ndarray, mpp: float | None) -> Path:
    """A tiled pyramidal TIFF (2 levels), with or without physical resolution."""
    import tifffile
    from PIL import Image

    opts: dict = dict(tile=(256, 256), compression="jpeg", photometric="rgb", metadata=None)
    if mpp is not None:
        opts.update(resolution=(1e4 / mpp, 1e4 / mpp), resolutionunit="CENTIMETER")
    with tifffile.TiffWriter(path) as tif:
        tif.write(rgb, **opts)
        tif.write(np.asarray(Image.fromarray(rgb).reduce(2)), subfiletype=1, **opts)
    return path


@pytest.fixture(scope="module")
def bad_slides(
    trained: Trained, openslide_fixtures: Path, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, tuple[Path, str, str]]:
    """file name -> (path, expected failure stage, expected error type)."""
    from pathgen_batch.slides import open_slide

    d = tmp_path_factory.mktemp("bad")
    first = next(iter(trained.slides.values()))
    with open_slide(first) as s:
        rgb = s.read_region((0, 0), 0, (512, 512))
    data = first.read_bytes()
    (d / "truncated.tiff").write_bytes(data[: len(data) // 2])
    (d / "notes.svs").write_text("patient 12, slide 3: see the report\n")
    shutil.copy(openslide_fixtures / "unreadable.svs", d / "undecodable.svs")
    shutil.copy(openslide_fixtures / "unopenable.tiff", d / "unopenable.tiff")
    _generic_tiff(d / "nompp.tif", rgb, None)
    _generic_tiff(d / "glass.tif", np.full((512, 512, 3), 242, np.uint8), 0.5)
    return {
        "truncated.tiff": (d / "truncated.tiff", "open", "UnreadableSlideError"),
        "notes.svs": (d / "notes.svs", "open", "UnsupportedSlideError"),
        "undecodable.svs": (d / "undecodable.svs", "tiles", "UnreadableSlideError"),
        "unopenable.tiff": (d / "unopenable.tiff", "open", "UnreadableSlideError"),
        "nompp.tif": (d / "nompp.tif", "tiles", "MissingMPPError"),
        "glass.tif": (d / "glass.tif", "tiles", "NoTissueError"),
    }


# -- fixtures: a 2-node Ray cluster ----------------------------------------------------------
def _cmdline(pid: int) -> str:
    try:
        return (
            Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        )
    except OSError:
        return ""


def _pids() -> list[int]:
    return [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit()]


def _descendants(roots: set[int]) -> set[int]:
    parent: dict[int, int] = {}
    for pid in _pids():
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            parent[pid] = int(fields[1])
        except (OSError, IndexError, ValueError):
            continue
    out, todo = set(roots), list(roots)
    while todo:
        p = todo.pop()
        for child, par in parent.items():
            if par == p and child not in out:
                out.add(child)
                todo.append(child)
    return out


def _kill(pids: set[int], sig: int = signal.SIGKILL) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)


@dataclass(frozen=True)
class Cluster:
    address: str
    temp_dir: str
    env: dict[str, str]
    dashboard: str  # the head's dashboard and job server, for `ray job submit --address`

    def processes(self, needle: str) -> list[int]:
        """Pids of this cluster's processes whose command line (title) contains ``needle``."""
        mine = _descendants(set(self._roots()))
        return sorted(p for p in mine if needle in _cmdline(p))

    def _roots(self) -> list[int]:
        return [p for p in _pids() if self.temp_dir in _cmdline(p)]


@pytest.fixture(scope="module")
def ray_cluster(s3_server: S3Server) -> Iterator[Cluster]:
    """``ray start --head`` (with its dashboard and job server) plus a second ``ray start
    --address``, 1 CPU each, on 127.0.0.1; the S3 server's endpoint and credentials are in the
    nodes' environment, and the project's virtual environment is first on their PATH (as on a
    cluster image, where ``python`` is the project's)."""
    ray_bin = str(Path(sys.executable).parent / "ray")
    port, dash = free_ports(2)
    temp = f"/tmp/ray_pgb_{os.getpid()}"
    env = {**os.environ, **RAY_ENV, **s3_server.env}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    common = [
        "--num-cpus=1",
        "--node-ip-address=127.0.0.1",
        "--disable-usage-stats",
        "--object-store-memory=150000000",
    ]
    head = [
        ray_bin,
        "start",
        "--head",
        f"--port={port}",
        f"--temp-dir={temp}",
        "--include-dashboard=true",
        "--dashboard-host=127.0.0.1",
        f"--dashboard-port={dash}",
        *common,
    ]
    cluster = Cluster(f"127.0.0.1:{port}", temp, env, f"http://127.0.0.1:{dash}")
    try:
        subprocess.run(head, env=env, check=True, capture_output=True, timeout=180)
        worker = [ray_bin, "start", f"--address=127.0.0.1:{port}", *common]
        subprocess.run(worker, env=env, check=True, capture_output=True, timeout=180)
        yield cluster
    finally:
        import ray

        if ray.is_initialized():
            ray.shutdown()
        mine = _descendants(set(cluster._roots()))
        _kill(mine, signal.SIGTERM)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and any(_cmdline(p) for p in mine):
            time.sleep(0.3)
        _kill({p for p in mine if _cmdline(p)})
        shutil.rmtree(temp, ignore_errors=True)


@pytest.fixture(scope="module")
def ray_driver(ray_cluster: Cluster) -> Iterator[Cluster]:
    """This test process connected to the cluster as a driver (the job runs on its nodes)."""
    import ray

    old = {k: os.environ.get(k) for k in RAY_ENV}
    os.environ.update(RAY_ENV)
    ray.init(address=ray_cluster.address, log_to_driver=False)
    try:
        yield ray_cluster
    finally:
        ray.shutdown()
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


# -- helpers --------------------------------------------------------------------------------
def assert_exactly_once(out: str, run_id: str, expected: set[str]) -> tuple[list, list]:
    preds = read_table(out, "predictions", [run_id]).column("slide_id").to_pylist()
    fails = read_table(out, "failures", [run_id]).column("slide_id").to_pylist()
    assert len(preds) == len(set(preds)), "a slide has two predictions rows"
    assert len(fails) == len(set(fails)), "a slide has two failures rows"
    assert not set(preds) & set(fails), "a slide is both scored and failed"
    assert set(preds) | set(fails) == expected, "a slide has no row"
    return preds, fails


def _upload(client, bucket: str, key: str, path: Path) -> None:
    client.put_object(Bucket=bucket, Key=key, Body=path.read_bytes())


def _cli(*args: str, env: dict[str, str]) -> subprocess.Popen[str]:
    cmd = [sys.executable, str(REPO / "jobs" / "score_archive.py"), *args]
    return subprocess.Popen(
        cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def _job_args(
    archive: str, out: str, run_id: str, trained: Trained, cluster: Cluster, scratch: Path
) -> list[str]:
    """The score job's command line for one run on ``cluster``."""
    return [
        archive,
        "--out",
        out,
        "--run-id",
        run_id,
        "--generator",
        str(trained.gen),
        "--fusion",
        str(trained.fus),
        "--ray-address",
        cluster.address,
        "--scratch",
        str(scratch),
    ]


def _commits(out: str, run_id: str) -> int:
    return len(storage.list_files(storage.join(out, "_runs", f"run_id={run_id}", "commits")))


def _wait_for(cond, timeout: float, proc: subprocess.Popen[str] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        if proc is not None and proc.poll() is not None:
            raise AssertionError(
                f"the job ended early:\n{proc.stdout.read() if proc.stdout else ''}"
            )
        time.sleep(0.05)
    raise AssertionError("timed out waiting")


def _linked_archive(trained: Trained, folder: Path, copies: int) -> set[str]:
    """``copies`` slides (hard links of the cohort's slides under new names)."""
    folder.mkdir(parents=True)
    files = list(trained.slides.values())
    ids = set()
    for i in range(copies):
        name = f"slide-{i:03d}"
        os.link(files[i % len(files)], folder / f"{name}.tiff")
        ids.add(name)
    return ids


def _start_job(
    cluster: Cluster, trained: Trained, tmp_path: Path, run_id: str
) -> tuple[set[str], str, list[str], subprocess.Popen[str]]:
    """The score job started on 40 linked slides: (slide ids, out, its arguments, process)."""
    ids = _linked_archive(trained, tmp_path / "archive", 40)
    out = str(tmp_path / "out")
    args = _job_args(str(tmp_path / "archive"), out, run_id, trained, cluster, tmp_path / "scratch")
    return ids, out, args, _cli(*args, env=cluster.env)


# -- checks before any slide is read (no Ray) -----------------------------------------------
def test_bad_starts_exit_2_with_one_line(trained: Trained, tmp_path: Path) -> None:
    import hashlib
    import json

    from pathgen_batch.omics.panel import GenePanel

    bad = tmp_path / "fus-other-contract"
    shutil.copytree(trained.fus, bad)
    manifest = json.loads((bad / "bundle.json").read_text())
    manifest["feature_contract"]["tile_px"] = 128
    (bad / "bundle.json").write_text(json.dumps(manifest))
    other_panel = tmp_path / "fus-other-panel"
    shutil.copytree(trained.fus, other_panel)
    panel_csv = other_panel / "gene_panel.csv"
    panel_csv.write_text(panel_csv.read_text().replace("G00001,", "G99999,"))
    m2 = json.loads((other_panel / "bundle.json").read_text())
    m2["gene_panel_digest"] = GenePanel.read(panel_csv).digest
    m2["files"]["gene_panel.csv"] = "sha256:" + hashlib.sha256(panel_csv.read_bytes()).hexdigest()
    (other_panel / "bundle.json").write_text(json.dumps(m2))
    runner = CliRunner()
    base = ["--out", str(tmp_path / "out"), "--generator", str(trained.gen)]
    cases = [
        (
            ["/no/such/archive", *base, "--fusion", str(bad)],
            r"feature contract of generator .* mismatch: tile_px 64 vs 128",
        ),
        (
            ["/no/such/archive", *base, "--fusion", str(other_panel)],
            r"gene panel of generator .* mismatch: .*only in first: \['G00001'\], only in second: "
            r"\['G99999'\]",
        ),
        (
            ["/no/such/archive", *base, "--fusion", str(tmp_path / "missing")],
            r"fusion: bundle folder .*missing not found",
        ),
        (
            ["/no/such/archive", *base, "--fusion", str(trained.gen)],
            r"is a generator bundle, not a fusion",
        ),
        (
            ["/no/such/archive", *base, "--fusion", str(trained.fus)],
            r"/no/such/archive: archive folder not found",
        ),
        ([str(tmp_path), *base, "--fusion", str(trained.fus), "--run-id", "../x"], r"run id"),
        (
            [str(tmp_path), "--out", str(tmp_path / "o"), "--workspace", str(tmp_path / "ws")],
            r"no registered model 'pathgen-generator'",
        ),
    ]
    for args, words in cases:
        r = runner.invoke(score, args)
        assert r.exit_code == 2, (args, r.output)
        errors = [line for line in r.output.splitlines() if line.startswith("Error: ")]
        assert len(errors) == 1 and r.output.rstrip().endswith(errors[0]), r.output
        assert re.search(words, errors[0]), (words, errors[0])
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").rglob("*.parquet"))


def test_cli_help_names_exit_codes() -> None:
    r = CliRunner().invoke(score, ["--help"])
    assert r.exit_code == 0
    for words in ("ARCHIVE", "--run-id", "--ray-address", "--reuse-features", "3 some slides"):
        assert words in r.output


# -- one real run from S3 to S3, shared by the next tests -----------------------------------
@dataclass(frozen=True)
class S3Run:
    bucket: str
    out: str
    run_id: str
    summary: object
    good: dict[str, Path]
    bad: dict[str, tuple[Path, str, str]]
    max_staged: int
    scratch: Path
    logs: str


@pytest.fixture(scope="module")
def s3_run(
    ray_driver: Cluster,
    s3_server: S3Server,
    trained: Trained,
    bad_slides: dict[str, tuple[Path, str, str]],
    tmp_path_factory: pytest.TempPathFactory,
) -> S3Run:
    import logging

    client = s3_server.client()
    bucket = "scoring-e2e"
    client.create_bucket(Bucket=bucket)
    good = dict(list(trained.slides.items())[:N_GOOD])
    rows = ["uri,slide_id,patient_id,mpp"]
    for sid, path in good.items():
        _upload(client, bucket, f"archive/{sid}.tiff", path)
        rows.append(f"s3://{bucket}/archive/{sid}.tiff,{sid},{trained.patients[sid]},")
    for name, (path, _, _) in bad_slides.items():
        _upload(client, bucket, f"archive/bad/{name}", path)
        rows.append(f"s3://{bucket}/archive/bad/{name},,,")
    rows.append(f"s3://{bucket}/archive/never-uploaded.svs,,,")
    client.put_object(Bucket=bucket, Key="manifest.csv", Body="\n".join(rows).encode())
    scratch = tmp_path_factory.mktemp("scratch")
    seen = {"max": 0}
    stop = threading.Event()

    def watch() -> None:  # how many slides sit on scratch at once
        while not stop.is_set():
            n = sum(1 for p in scratch.rglob("*") if p.is_file())
            seen["max"] = max(seen["max"], n)
            time.sleep(0.005)

    records: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(self.format(record))

    handler = Keep()
    logging.getLogger().addHandler(handler)
    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        cfg = ScoreConfig(
            archive=f"s3://{bucket}/manifest.csv",
            output=f"s3://{bucket}/scores",
            run_id="e2e",
            generator=str(trained.gen),
            fusion=str(trained.fus),
            scratch_dir=str(scratch),
            write_features=True,
            retries=2,
            retry_backoff_s=0.1,
        )
        summary = score_archive(cfg)
    finally:
        stop.set()
        watcher.join()
        logging.getLogger().removeHandler(handler)
    return S3Run(
        bucket,
        f"s3://{bucket}/scores",
        "e2e",
        summary,
        good,
        bad_slides,
        seen["max"],
        scratch,
        "\n".join(records),
    )


@pytest.mark.ray
@pytest.mark.servers
def test_s3_run_scores_good_slides_and_records_each_failure(s3_run: S3Run) -> None:
    s = s3_run.summary
    n_bad = len(s3_run.bad) + 1  # + the object that was never uploaded
    assert (s.n_slides, s.n_scored, s.n_failed) == (N_GOOD + n_bad, N_GOOD, n_bad)
    assert s.exit_code == 3
    expected = set(s3_run.good) | {storage.slide_id_for(n) for n in s3_run.bad}
    expected.add("never-uploaded")
    preds, _ = assert_exactly_once(s3_run.out, "e2e", expected)
    assert set(preds) == set(s3_run.good)
    f = read_table(s3_run.out, "failures", ["e2e"]).to_pylist()
    got = {r["slide_id"]: (r["stage"], r["error_type"]) for r in f}
    for name, (_, stage, error) in s3_run.bad.items():
        assert got[storage.slide_id_for(name)] == (stage, error), name
    assert got["never-uploaded"] == ("download", "StorageError")
    assert all(r["attempt"] == 1 and r["message"] for r in f)
    assert any(line.startswith("  bounded by: ") for line in s.lines()), s.lines()
    # the listing's summary is part of the run's (slides by kind, what it skipped)
    assert f"  listing: s3://{s3_run.bucket}/" in "\n".join(s.lines()), s.lines()
    assert s.listing is not None and f"{s.n_slides} slide(s)" in s.listing


@pytest.mark.ray
@pytest.mark.servers
def test_s3_run_encodes_on_both_nodes(s3_run: S3Run) -> None:
    stats = s3_run.summary.ray_stats
    assert stats is not None and "MapBatches(SlideScorer)" in stats
    # one encoder actor per node (1 CPU each, the scorer reserves none): slides are staged
    # and encoded on both nodes
    encoder = stats.split("MapBatches(TileEncoder)", 1)[1].split("Operator", 1)[0]
    assert "; 2 nodes used" in encoder, encoder


@pytest.mark.ray
@pytest.mark.servers
def test_s3_run_tables_match_the_models_applied_directly(
    s3_run: S3Run, trained: Trained, tmp_path: Path
) -> None:
    from pathgen_batch.features import build_encoder, extract_slide
    from pathgen_batch.inference.bundle import load_bundle
    from pathgen_batch.report import write_report
    from pathgen_batch.slides import open_slide
    from pathgen_batch.tables import png_array

    gen, fus = load_bundle(trained.gen), load_bundle(trained.fus)
    enc = build_encoder("stain-texture", options={"tile_px": 64, "scales": 2})
    ids = sorted(s3_run.good)
    bags = [extract_slide(s3_run.good[s], enc).feats for s in ids]
    mean, std = gen.generate(bags, seed=0)
    ref = fus.predict(bags, mean)
    p = read_table(s3_run.out, "predictions", ["e2e"]).to_pandas().set_index("slide_id").loc[ids]
    np.testing.assert_allclose(np.stack(p["grade_probs"]), ref.grade_probs, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(p["risk"], ref.risk, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(p["risk_lo"], ref.risk_lo, rtol=1e-4, atol=1e-6)
    assert [list(x) for x in p["grade_set"]] == [
        [c for c, m in zip(fus.grade_classes, row, strict=True) if m] for row in ref.grade_sets
    ]
    assert list(p["patient_id"]) == [trained.patients[s] for s in ids]
    assert list(p["n_tiles"]) == [len(b) for b in bags]
    assert list(p["risk_group"]) == [fus.risk_group(r) for r in ref.risk]  # the bundle's cuts
    assert len(set(p["risk_group"])) > 1, list(p["risk"])  # relative groups split the archive
    assert fus.risk_cuts is not None and list(p["risk_cuts"].iloc[0]) == list(fus.risk_cuts.cuts)
    assert set(p["generator_version"]) == {f"bundle:{_digest(trained.gen)}"}
    thumbs = {r["slide_id"]: r for r in read_table(s3_run.out, "thumbnails", ["e2e"]).to_pylist()}
    assert sorted(thumbs) == ids  # one per scored slide, written with its commit
    for sid in ids:
        with open_slide(s3_run.good[sid]) as slide:
            assert (thumbs[sid]["width_l0"], thumbs[sid]["height_l0"]) == slide.dimensions
        img = png_array(thumbs[sid]["image_png"], sid)
        assert max(img.shape[:2]) <= 1024 and img.std() > 5.0  # a picture, not a blank
        assert png_array(thumbs[sid]["mask_png"], sid).any()
        t = thumbs[sid]  # the slide's quality flags, measured on the tiles it kept
        assert 0 <= t["n_tiles_blank"] + t["n_tiles_out_of_focus"] <= int(p.loc[sid, "n_tiles"])
        assert t["focus_median"] > 0 and t["excluded_fraction"] >= 0.0
    page = write_report(s3_run.out, tmp_path / "report", run_id="e2e").read_text()
    assert "no stored thumbnail" not in page  # heatmaps over real thumbnails, from S3
    t = read_table(s3_run.out, "transcriptomes", ["e2e"]).to_pandas()
    assert len(t) == len(ids) * gen.panel.n_genes
    m = t.pivot(index="slide_id", columns="gene_index", values="mean").loc[ids].to_numpy()
    np.testing.assert_allclose(m, mean, rtol=1e-4, atol=1e-5)
    sd = t.pivot(index="slide_id", columns="gene_index", values="std").loc[ids].to_numpy()
    np.testing.assert_allclose(sd, std, rtol=1e-4, atol=1e-5)
    a = read_table(s3_run.out, "tile_attention", ["e2e"]).to_pandas()
    sums = a.groupby(["slide_id", "family"])["attention"].sum()
    np.testing.assert_allclose(sums.to_numpy(), 1.0, atol=1e-4)  # a distribution over tiles
    assert len(a) == sum(len(b) for b in bags) * gen.panel.n_families
    feats = read_table(s3_run.out, "features", ["e2e"]).to_pandas()
    assert len(feats) == sum(len(b) for b in bags)
    runs = read_table(s3_run.out, "runs", ["e2e"]).to_pylist()
    assert runs[0]["n_scored"] == N_GOOD and runs[0]["features_written"]


def _digest(bundle: Path) -> str:
    import hashlib

    return hashlib.sha256((bundle / "bundle.json").read_bytes()).hexdigest()[:16]


@pytest.mark.ray
@pytest.mark.servers
def test_s3_run_bounds_scratch_and_keeps_credentials_out(
    s3_run: S3Run, s3_server: S3Server
) -> None:
    assert 1 <= s3_run.max_staged <= 2  # one staged slide per encoder actor, at most
    assert not any(p.is_file() for p in s3_run.scratch.rglob("*"))  # all deleted after use
    secrets = [s3_server.env["AWS_SECRET_ACCESS_KEY"], s3_server.env["AWS_ACCESS_KEY_ID"]]
    client = s3_server.client()
    blobs = []
    for page in client.get_paginator("list_objects_v2").paginate(
        Bucket=s3_run.bucket, Prefix="scores/"
    ):
        for obj in page.get("Contents", []):
            blobs.append(client.get_object(Bucket=s3_run.bucket, Key=obj["Key"])["Body"].read())
    assert len(blobs) > 10
    for secret in secrets:
        assert not any(secret.encode() in b for b in blobs)
        assert secret not in s3_run.logs


def _rerun_config(s3_run: S3Run, trained: Trained, run_id: str, **options: Any) -> ScoreConfig:
    """A run over the end-to-end run's archive and output with the shared models."""
    return ScoreConfig(
        archive=f"s3://{s3_run.bucket}/manifest.csv",
        output=s3_run.out,
        run_id=run_id,
        generator=str(trained.gen),
        fusion=str(trained.fus),
        **options,
    )


@pytest.mark.ray
@pytest.mark.servers
def test_rerun_is_a_no_op_and_other_models_need_a_new_run(
    s3_run: S3Run, trained: Trained, tmp_path: Path
) -> None:
    cfg = _rerun_config(s3_run, trained, "e2e", write_features=True)
    before = read_table(s3_run.out, "predictions", ["e2e"])
    again = score_archive(cfg)
    assert again.already_complete and (again.n_scored, again.n_failed) == (N_GOOD, 7)
    assert again.exit_code == 3
    assert read_table(s3_run.out, "predictions", ["e2e"]).equals(before)
    other = tmp_path / "fus2"
    shutil.copytree(trained.fus, other)
    (other / "bundle.json").write_text((other / "bundle.json").read_text() + "\n")
    with pytest.raises(ConfigError, match=r"other models or settings \(fusion: \['pathgen-fusion"):
        score_archive(dataclasses.replace(cfg, fusion=str(other)))
    with pytest.raises(ConfigError, match=r"write_features: True -> False"):
        score_archive(dataclasses.replace(cfg, write_features=False))


@pytest.mark.ray
@pytest.mark.servers
def test_reuse_features_rescores_without_the_slides(
    s3_run: S3Run, s3_server: S3Server, trained: Trained
) -> None:
    client = s3_server.client()
    for page in client.get_paginator("list_objects_v2").paginate(
        Bucket=s3_run.bucket, Prefix="archive/"
    ):
        for obj in page.get("Contents", []):  # the slides are gone: only features remain
            client.delete_object(Bucket=s3_run.bucket, Key=obj["Key"])
    summary = score_archive(_rerun_config(s3_run, trained, "rescored", reuse_features=True))
    assert summary.n_scored == N_GOOD and summary.n_failed == 7
    old = read_table(s3_run.out, "predictions", ["e2e"]).to_pandas().set_index("slide_id")
    new = read_table(s3_run.out, "predictions", ["rescored"]).to_pandas().set_index("slide_id")
    new = new.loc[old.index]
    np.testing.assert_allclose(new["risk"], old["risk"], rtol=1e-6)
    np.testing.assert_allclose(
        np.stack(new["grade_probs"]), np.stack(old["grade_probs"]), rtol=1e-6
    )
    f = read_table(s3_run.out, "failures", ["rescored"])
    assert set(f.column("stage").to_pylist()) == {"features"}
    assert set(f.column("error_type").to_pylist()) == {"MissingFeaturesError"}
    runs = read_table(s3_run.out, "runs", ["rescored"]).to_pylist()[0]
    assert runs["features_source_run"] == "e2e"
    # re-scoring ran in this process (no cluster given); through Ray's actor pool it is the same
    assert json.loads(runs["config_json"])["in_process"] is None
    on_ray = score_archive(
        _rerun_config(s3_run, trained, "rescored-ray", reuse_features=True, in_process=False)
    )
    assert (on_ray.n_scored, on_ray.n_failed) == (N_GOOD, 7) and on_ray.ray_stats
    assert summary.ray_stats is None
    via = read_table(s3_run.out, "predictions", ["rescored-ray"]).to_pandas()
    via = via.set_index("slide_id").loc[old.index]
    np.testing.assert_allclose(via["risk"], new["risk"], rtol=1e-6)


@pytest.mark.ray
def test_ray_job_submit_runs_the_score_job_with_the_shipped_runtime_env(
    trained: Trained, ray_cluster: Cluster, tmp_path: Path
) -> None:
    """``ray job submit`` to the head's job server, as the README and jobs/score_archive.py
    say: jobs/runtime_env.yaml as shipped (only its node-local scratch TMPDIR pointed at this
    machine's), the working directory uploaded, the driver joining the cluster through the
    RAY_ADDRESS the job server sets; every slide scored exactly once, exit status 0."""
    import yaml

    shipped = yaml.safe_load((REPO / "jobs" / "runtime_env.yaml").read_text())
    assert shipped["working_dir"] == "." and "TMPDIR" in shipped["env_vars"]
    scratch_tmp = tmp_path / "node-scratch"
    scratch_tmp.mkdir()
    runtime_env = {**shipped, "env_vars": {**shipped["env_vars"], "TMPDIR": str(scratch_tmp)}}
    env_file = tmp_path / "runtime_env.yaml"
    env_file.write_text(yaml.safe_dump(runtime_env))
    ids = _linked_archive(trained, tmp_path / "archive", 4)
    out = str(tmp_path / "out")
    job = [
        str(Path(sys.executable).parent / "ray"),
        "job",
        "submit",
        "--address",
        ray_cluster.dashboard,
        "--runtime-env",
        str(env_file),
        "--",
        "python",
        "jobs/score_archive.py",
        str(tmp_path / "archive"),
        "--out",
        out,
        "--run-id",
        "submitted",
        "--generator",
        str(trained.gen),
        "--fusion",
        str(trained.fus),
    ]
    deadline = time.monotonic() + 180
    while True:  # the head's job agent registers a while after `ray start` returns
        done = subprocess.run(
            job, cwd=REPO, env=ray_cluster.env, capture_output=True, text=True, timeout=600
        )
        log = done.stdout + done.stderr
        if "No available agent to submit job" not in log or time.monotonic() > deadline:
            break
        time.sleep(3)
    assert done.returncode == 0, log
    assert "succeeded" in log, log
    preds, fails = assert_exactly_once(out, "submitted", ids)
    assert not fails and sorted(preds) == sorted(ids)


@pytest.mark.ray
@pytest.mark.servers
def test_features_extract_on_the_cluster_from_s3_gives_the_bags_scoring_encoded(
    s3_run: S3Run, ray_cluster: Cluster, s3_server: S3Server, trained: Trained
) -> None:
    from pathgen_batch.features import read_slide_features
    from pathgen_batch.features.store import feature_uri
    from pathgen_batch.tables.io import feature_index, read_row_group
    from pathgen_batch.tables.rows import bag_from_features

    client = s3_server.client()
    local = trained.root / "cohort"
    for p in local.rglob("*"):
        if p.is_file():
            _upload(client, s3_run.bucket, f"cohort/{p.relative_to(local).as_posix()}", p)
    ids = list(s3_run.good)
    out = f"s3://{s3_run.bucket}/cohort-features"
    cmd = [sys.executable, "-c", CLI, "features", "extract"]
    cmd += [f"s3://{s3_run.bucket}/cohort", "--out", out, "--ray-address", ray_cluster.address]
    cmd += ["-o", "tile_px=64 scales=2", "--device", "cpu", "--slides", ",".join(ids)]
    env = {**ray_cluster.env, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"in Ray ({ray_cluster.address})" in r.stdout
    assert f"done {len(ids)}, skipped 0, failed 0" in r.stdout
    assert "execution finished" not in r.stdout + r.stderr  # Ray Data's INFO lines need -v
    index = feature_index(s3_run.out, "e2e")
    for sid in ids:  # the scoring run's bag, the local loop's and the cluster's are one
        got = read_slide_features(feature_uri(out, sid))
        ref = read_slide_features(feature_uri(trained.root / "features", sid))
        x, y, feats, size_l0 = bag_from_features(read_row_group(*index[sid]))
        np.testing.assert_array_equal(got.x, x)
        np.testing.assert_array_equal(got.y, y)
        assert got.size_l0 == size_l0 == ref.size_l0
        np.testing.assert_allclose(got.feats, feats, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(got.feats, ref.feats, rtol=1e-5, atol=1e-6)
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and f"done 0, skipped {len(ids)}, failed 0" in r.stdout, r.stdout


@pytest.mark.ray
def test_default_models_are_the_production_versions_of_the_registry(
    ray_driver: Cluster, trained: Trained, tmp_path: Path, no_mlflow_env: None
) -> None:
    from pathgen_batch.registry import RegistryConfig, open_store, promote, register_bundle

    ws = tmp_path / "ws"
    store = open_store(RegistryConfig(workspace=str(ws)))
    digest = "sha256:" + "e" * 64
    for bundle, cv in (
        (trained.gen, {"fidelity/mean_pearson": 0.5, "fidelity/mae": 0.3}),
        (
            trained.fus,
            {"synthetic/harrell_c": 0.7, "synthetic/macro_auc": 0.7, "synthetic/ibs": 0.2},
        ),
    ):
        reg = register_bundle(store, bundle, cv=cv, eval_digest=digest)
        promote(store, reg.name, reg.version, "Production", force=True, reason="test models")
    ids = _linked_archive(trained, tmp_path / "archive", 3)
    out = str(tmp_path / "out")
    summary = score_archive(
        ScoreConfig(archive=str(tmp_path / "archive"), output=out, run_id="prod", workspace=str(ws))
    )
    assert summary.exit_code == 0 and summary.n_scored == 3
    p = read_table(out, "predictions", ["prod"]).to_pylist()
    assert {r["slide_id"] for r in p} == ids
    assert {
        (r["generator_model"], r["generator_version"], r["fusion_model"], r["fusion_version"])
        for r in p
    } == {("pathgen-generator", "1", "pathgen-fusion", "1")}


# -- fault injection ------------------------------------------------------------------------
@pytest.mark.ray
def test_worker_killed_mid_run_keeps_exactly_once(
    ray_cluster: Cluster, trained: Trained, tmp_path: Path
) -> None:
    ids, out, _, proc = _start_job(ray_cluster, trained, tmp_path, "kill-worker")
    encoders = "MapWorker(MapBatches(TileEncoder))"
    attempts = Path(out, "_runs", "run_id=kill-worker", "attempts")
    try:  # an encoder at work (the scorer may not have committed anything yet)
        _wait_for(
            lambda: (
                attempts.is_dir() and any(attempts.iterdir()) and ray_cluster.processes(encoders)
            ),
            180,
            proc,
        )
        victims = ray_cluster.processes(encoders)
        assert victims, "no encoder actor process found"
        at_kill = _commits(out, "kill-worker")
        os.kill(victims[0], signal.SIGKILL)
        output, _ = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert at_kill < len(ids), "the worker was killed after the work was done"
    assert proc.returncode == 0, output
    _, fails = assert_exactly_once(out, "kill-worker", ids)
    assert fails == []
    assert "slides 40/40" in output or "scored 40" in output


@pytest.mark.ray
def test_job_killed_then_rerun_scores_each_slide_once(
    ray_cluster: Cluster, trained: Trained, tmp_path: Path
) -> None:
    ids, out, args, proc = _start_job(ray_cluster, trained, tmp_path, "kill-job")
    try:
        _wait_for(lambda: _commits(out, "kill-job") >= 3, 180, proc)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    commits = Path(out, "_runs", "run_id=kill-job", "commits")
    before = {p.name: p.read_bytes() for p in commits.iterdir()}
    assert 3 <= len(before) < len(ids)
    assert complete_runs(out) == []  # nothing visible to readers from a killed run
    assert not Path(out, "predictions").exists()
    rerun = _cli(*args, env=ray_cluster.env)
    output, _ = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, output
    assert "resumed" in output
    assert_exactly_once(out, "kill-job", ids)
    for name, data in before.items():  # committed slides were not scored again
        assert (commits / name).read_bytes() == data
        attempts = Path(out, "_runs", "run_id=kill-job", "attempts", name[: -len(".json")])
        assert len(list(attempts.iterdir())) == 1
    t = read_table(out, "predictions", ["kill-job"])
    assert pc.count_distinct(t.column("slide_id")).as_py() == 40


@pytest.mark.ray
@pytest.mark.servers
def test_s3_restart_during_a_run_loses_no_slide(
    ray_cluster: Cluster, s3_server: S3Server, trained: Trained, tmp_path: Path
) -> None:
    client = s3_server.client()
    bucket = "restart-run"
    client.create_bucket(Bucket=bucket)
    files = list(trained.slides.values())
    ids = set()
    for i in range(32):
        _upload(client, bucket, f"archive/s-{i:03d}.tiff", files[i % len(files)])
        ids.add(f"s-{i:03d}")
    out = f"s3://{bucket}/scores"
    args = _job_args(
        f"s3://{bucket}/archive", out, "restart", trained, ray_cluster, tmp_path / "scratch"
    )
    proc = _cli(*args, "--retries", "8", env=ray_cluster.env)
    try:
        _wait_for(lambda: _commits(out, "restart") >= 1, 180, proc)
        s3_server.stop()
        time.sleep(3)
        s3_server.start()
        output, _ = proc.communicate(timeout=400)
    finally:
        if s3_server.proc is None:
            s3_server.start()
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode in (0, 3), output
    _, fails = assert_exactly_once(out, "restart", ids)
    if fails:
        f = read_table(out, "failures", ["restart"]).to_pylist()
        assert {r["error_type"] for r in f} == {"StorageError"}, f
