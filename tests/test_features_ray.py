"""Feature extraction for training through the batch pipeline: the scoring job's encoder stage
on a Ray actor pool (or in process), from a local cohort or one on S3, resumable, the same
features as the local extraction loop."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from s3_server import _environ as environ

from pathgen_batch.cli.features import features as features_cli
from pathgen_batch.cohort import load_cohort
from pathgen_batch.features import build_encoder, extract_cohort, read_slide_features
from pathgen_batch.features.store import feature_uri, stored_slide_ids

RAY_ENV = {"RAY_ENABLE_UV_RUN_RUNTIME_ENV": "0", "RAY_USAGE_STATS_ENABLED": "0"}
ROOT = Path(__file__).resolve().parents[1]
CLI = "from pathgen_batch.cli import main; main()"  # `pathgen-batch`, from this checkout


@pytest.fixture(scope="module")
def small_cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from pathgen_batch.synth import CohortConfig, build_cohort

    root = tmp_path_factory.mktemp("cohort")
    cfg = CohortConfig(mode="synthetic", n_patients=3, n_genes=12, slide_px=1024, levels=2, folds=2)
    build_cohort(root, cfg, workers=1)
    return root


@pytest.fixture(scope="module")
def local_features(small_cohort: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The cohort's features from the local loop (``extract_cohort``), the reference."""
    out = tmp_path_factory.mktemp("local_feats")
    res = extract_cohort(small_cohort, out, build_encoder("stain-texture"))
    assert all(r.status == "done" for r in res)
    return out


@pytest.fixture(scope="module")
def ray_local(s3_server) -> Iterator[None]:
    """A local Ray of 2 CPUs in this process (started after the S3 server, so that its workers
    inherit the server's endpoint and credentials)."""
    import ray

    with environ(RAY_ENV):
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        try:
            yield
        finally:
            ray.shutdown()


def assert_same_features(a: str | Path, b: str | Path, ids: list[str]) -> None:
    for sid in ids:
        fa = read_slide_features(feature_uri(a, sid))
        fb = read_slide_features(feature_uri(b, sid))
        assert fa.contract == fb.contract and fa.size_l0 == fb.size_l0, sid
        np.testing.assert_array_equal(fa.x, fb.x)
        np.testing.assert_array_equal(fa.y, fb.y)
        np.testing.assert_array_equal(fa.tissue, fb.tissue)
        np.testing.assert_allclose(fa.feats, fb.feats, rtol=1e-5, atol=1e-6, err_msg=sid)


def _extract(*args: str) -> tuple[int, str]:
    r = CliRunner().invoke(features_cli, ["extract", *args, "--device", "cpu"])
    if r.exception is not None and not isinstance(r.exception, SystemExit):
        raise r.exception
    return r.exit_code, r.output


def test_ray_extraction_equals_the_local_loop_and_resumes(
    small_cohort: Path, local_features: Path, ray_local: None, tmp_path: Path
) -> None:
    ids = load_cohort(small_cohort).slide_ids
    out = tmp_path / "feats"
    code, text = _extract(str(small_cohort), "--out", str(out), "--ray")
    assert code == 0, text
    assert "in Ray (local)" in text and f"done {len(ids)}, skipped 0, failed 0" in text
    assert stored_slide_ids(out) == tuple(sorted(ids))
    assert_same_features(local_features, out, ids)
    first = read_slide_features(feature_uri(out, ids[0]))
    assert first.extraction["min_tissue"] == 0.5 and first.extraction["mpp_override"] is None

    (out / f"{ids[1]}.parquet").unlink()  # resume: only the missing slide is extracted
    code, text = _extract(str(small_cohort), "--out", str(out), "--ray")
    assert code == 0 and f"done 1, skipped {len(ids) - 1}, failed 0" in text, text
    assert f"{ids[1]}: " in text and f"{ids[0]}: skipped" in text
    assert_same_features(local_features, out, ids)
    code, text = _extract(str(small_cohort), "--out", str(out), "--no-ray", "--ray-address", "x")
    assert code == 2 and "--ray-address needs --ray" in text


def test_a_cohort_on_s3_extracts_through_ray_and_reports_each_failed_slide(
    small_cohort: Path, local_features: Path, s3_server, s3_bucket: str, ray_local: None
) -> None:
    client = s3_server.client()
    for p in small_cohort.rglob("*"):
        if p.is_file():
            key = f"cohort/{p.relative_to(small_cohort).as_posix()}"
            client.put_object(Bucket=s3_bucket, Key=key, Body=p.read_bytes())
    root = f"s3://{s3_bucket}/cohort"
    cohort = load_cohort(root)
    ids = cohort.slide_ids
    assert all(cohort.slide_uri(s).startswith("s3://") for s in ids)
    bad = ids[-1]  # its object replaced by bytes that are no slide
    key = cohort.slide_uri(bad)[len(f"s3://{s3_bucket}/") :]
    client.put_object(Bucket=s3_bucket, Key=key, Body=b"not a slide at all")
    out = f"s3://{s3_bucket}/features"

    code, text = _extract(root, "--out", out, "--ray")
    assert code == 1, text
    assert f"done {len(ids) - 1}, skipped 0, failed 1" in text, text
    failed = [line for line in text.splitlines() if line.startswith("failed: ")]
    assert len(failed) == 1 and failed[0].startswith(f"failed: {bad}: ") and "Error" in failed[0]
    assert stored_slide_ids(out) == tuple(sorted(ids[:-1]))
    assert_same_features(local_features, out, ids[:-1])
    # in process, the same stage from S3 gives the same files and the same failure
    code, text = _extract(root, "--out", out, "--no-ray", "--overwrite")
    assert code == 1 and f"done {len(ids) - 1}, skipped 0, failed 1" in text, text
    assert_same_features(local_features, out, ids[:-1])


def test_a_killed_extraction_rerun_gives_the_same_files(
    small_cohort: Path, local_features: Path, tmp_path: Path
) -> None:
    ids = load_cohort(small_cohort).slide_ids
    out = tmp_path / "feats"
    cmd = [sys.executable, "-c", CLI, "features", "extract", str(small_cohort)]
    cmd += ["--out", str(out), "--no-ray", "--device", "cpu", "--batch-size", "4"]
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 240
        while not list(out.glob("*.parquet")) and time.monotonic() < deadline:
            if proc.poll() is not None:
                break
            time.sleep(0.05)
        assert proc.poll() is None, proc.communicate()[0].decode()  # still extracting
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    before = set(stored_slide_ids(out)) if out.exists() else set()
    assert len(before) < len(ids), "the run was killed before its end"
    code, text = _extract(str(small_cohort), "--out", str(out))
    assert code == 0, text
    assert f"done {len(ids) - len(before)}, skipped {len(before)}, failed 0" in text, text
    assert sorted(p.name for p in out.iterdir()) == sorted(f"{s}.parquet" for s in ids)
    assert_same_features(local_features, out, ids)
