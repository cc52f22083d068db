"""Object storage: listing, staging, whole-file writes, retries; local and on a real S3 server;
feature folders and model bundles stored on S3."""

from __future__ import annotations

import logging
import re
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from pathgen_batch import storage
from pathgen_batch.errors import ConfigError, DataError
from pathgen_batch.features import store as feature_store
from pathgen_batch.features.contract import FeatureContract
from pathgen_batch.inference.bundle import load_bundle, read_manifest, save_fusion, save_generator
from pathgen_batch.storage import RetryPolicy, SlideSource, StorageError
from pathgen_batch.storage import s3 as s3_store

SAFE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
FAST = RetryPolicy(attempts=2, backoff_s=0.05)


def tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


# -- names ----------------------------------------------------------------------------------
def test_slide_ids_are_safe_stable_and_unique() -> None:
    assert storage.slide_id_for("cohort/a/TCGA-01.svs") == "TCGA-01"
    assert storage.slide_id_for("../../etc/x.svs") == "x"
    hostile = ["with space.svs", "ünïcode.svs", "a/..svs", "..", "semi;colon.tif", "/abs/.svs"]
    ids = [storage.slide_id_for(k) for k in hostile]
    for k, sid in zip(hostile, ids, strict=True):
        assert SAFE.fullmatch(sid) and ".." not in sid, (k, sid)
        assert storage.slide_id_for(k) == sid  # stable
    assert len(set(ids)) == len(ids)
    # a safe name and an unsafe one that would clean to the same stem stay distinct
    assert storage.slide_id_for("a_b.svs") != storage.slide_id_for("a b.svs")


def test_scratch_names_hide_the_key() -> None:
    for uri in [
        "s3://bkt/../../etc/passwd",
        "s3://bkt//abs/slide.svs",
        "s3://bkt/dir/with space.SVS",
        "s3://bkt/ünï.ndpi",
        "s3://bkt/x.svs/../../../y.sh",
    ]:
        name = storage.scratch_name(uri)
        assert re.fullmatch(r"[0-9a-f]{32}\.(svs|ndpi|slide)", name), (uri, name)
        assert "/" not in name and ".." not in name
    assert storage.scratch_name("s3://b/a.svs") != storage.scratch_name("s3://b/b.svs")
    assert storage.scratch_name("s3://b/A.SVS").endswith(".svs")


def test_locations_are_checked() -> None:
    assert storage.split_s3("s3://my-bucket/a/b.svs") == ("my-bucket", "a/b.svs")
    assert storage.split_s3("s3://my-bucket") == ("my-bucket", "")
    with pytest.raises(ConfigError, match="bucket name"):
        storage.split_s3("s3://A_B/key")
    with pytest.raises(ConfigError, match="unsupported location"):
        storage.local_path("gs://bucket/x")
    assert storage.local_path("file:///tmp/a%20b") == Path("/tmp/a b")
    assert storage.join("s3://b/out/", "t", "run_id=1") == "s3://b/out/t/run_id=1"
    with pytest.raises(ConfigError, match=r"'\.\.'"):
        storage.join("/tmp/out", "../escape")
    with pytest.raises(ConfigError, match="relative"):
        storage.join("s3://b/out", "/abs")


def test_redact_removes_user_info_from_uris() -> None:
    text = '{"tracking_uri": "https://bob:pa55@mlflow.internal:5000", "out": "s3://b/k"}'
    assert (
        storage.redact(text)
        == '{"tracking_uri": "https://***@mlflow.internal:5000", "out": "s3://b/k"}'
    )
    assert storage.redact("ray://u:p@head:10001 and http://plain:80") == (
        "ray://***@head:10001 and http://plain:80"
    )


def test_retry_policy_backoff_doubles_up_to_the_cap() -> None:
    p = RetryPolicy(attempts=6, backoff_s=0.5, max_backoff_s=3.0)
    assert [p.delay(k) for k in range(5)] == [0.5, 1.0, 2.0, 3.0, 3.0]
    with pytest.raises(ConfigError, match="attempts"):
        RetryPolicy(attempts=0)
    with pytest.raises(ConfigError, match="backoff"):
        RetryPolicy(backoff_s=-1)


# -- local archives -------------------------------------------------------------------------
def test_local_folder_listing(tmp_path: Path) -> None:
    root = tmp_path / "archive"
    (root / "b" / "deep").mkdir(parents=True)
    (root / ".hidden").mkdir()
    files = {
        "z.svs": 5,
        "b/a.TIFF": 7,
        "b/deep/c.ndpi": 3,
        "b/notes.txt": 2,
        ".hidden/h.svs": 1,
        "b/.part.svs": 1,
    }
    for rel, n in files.items():
        (root / rel).write_bytes(b"x" * n)
    got = storage.list_archive(str(root))
    assert [(Path(s.uri).relative_to(root).as_posix(), s.slide_id, s.size) for s in got] == [
        ("b/a.TIFF", "a", 7),
        ("b/deep/c.ndpi", "c", 3),
        ("z.svs", "z", 5),
    ]
    (root / "b" / "z.tif").write_bytes(b"y")
    with pytest.raises(DataError, match=r"slide id 'z'.*z\.svs.*manifest"):
        storage.list_archive(str(root))
    with pytest.raises(StorageError, match="not found"):
        storage.list_archive(str(tmp_path / "nope"))
    only_ndpi = storage.list_archive(str(root / "b" / "deep"), extensions=["ndpi"])
    assert [s.slide_id for s in only_ndpi] == ["c"]


def test_multi_file_grouping_by_hand() -> None:
    from pathgen_batch.storage.slide_files import group_files

    files = {
        "a/s1/0.dcm": 10, "a/s1/1.DCM": 20, "a/s1/sub/2.dcm": 5, "a/s1/DICOMDIR": 1,
        "m.mrxs": 3, "m/Slidedat.ini": 4, "m/Data0000.dat": 50, "m/stray.dcm": 7,
        "v.vms": 9, "v.jpg": 30, "v_map.jpg": 6, "other.jpg": 2,
        "x.svs": 11, "notes.txt": 1,
    }  # fmt: skip
    index = b"[Virtual Microscope Specimen]\nImageFile = v.jpg\nMapFile=v_map.jpg\n"
    index += b"MacroImage=gone.jpg\n"  # named but absent: the slide fails when staged
    slides, skipped = group_files(
        list(files.items()), frozenset(storage.SLIDE_EXTENSIONS), {"v.vms": index}.__getitem__
    )
    got = {s.location: (s.kind, s.size) for s in slides}
    assert got == {
        "a/s1/": ("dicom", 30),  # a folder's instances; the subfolder is its own series
        "a/s1/sub/": ("dicom", 5),
        "m.mrxs": ("mirax", 64),  # the data folder, whatever is in it
        "v.vms": ("vms", 45),  # the files the index names and that exist
        "x.svs": ("file", 11),
    }
    why = dict(skipped)
    assert (
        why["a/s1/1.DCM"] == "companion file of a/s1/"
        and why["m/stray.dcm"] == "companion file of m.mrxs"
    )
    assert why["v_map.jpg"] == "companion file of v.vms"
    assert why["other.jpg"] == why["notes.txt"] == why["a/s1/DICOMDIR"] == "not a slide extension"
    only_svs, skipped = group_files(list(files.items()), frozenset({".svs"}), {}.__getitem__)
    assert [s.location for s in only_svs] == ["x.svs"] and len(skipped) == len(files) - 1


def test_manifest_tables(tmp_path: Path) -> None:
    csv = tmp_path / "m.csv"
    csv.write_text(
        f"uri,slide_id,patient_id,mpp\ns3://bkt/x/1.svs,S1,007,0.25\n{tmp_path}/two.svs,,,\n"
    )
    got = storage.list_archive(str(csv))
    assert got[0] == SlideSource("s3://bkt/x/1.svs", "S1", None, "007", 0.25)
    assert got[1] == SlideSource(f"{tmp_path}/two.svs", "two", None, None, None)
    pq.write_table(
        pa.table({"uri": ["/data/a.svs", "/data/b.svs"], "patient_id": ["p1", "p2"]}),
        tmp_path / "m.parquet",
    )
    assert [s.slide_id for s in storage.list_archive(str(tmp_path / "m.parquet"))] == ["a", "b"]
    bad = {
        "rel.csv": ("uri\nrelative/a.svs\n", "absolute path"),
        "cols.csv": ("uri,site\n/a.svs,x\n", r"unknown manifest column\(s\) \['site'\]"),
        "nouri.csv": ("path\n/a.svs\n", "needs a 'uri' column"),
        "mpp.csv": ("uri,mpp\n/a.svs,-1\n", "mpp must be a positive"),
        "id.csv": ("uri,slide_id\n/a.svs,../x\n", "slide_id"),
        "dup.csv": ("uri,slide_id\n/a.svs,S\n/b.svs,S\n", "two slides get the slide id 'S'"),
        "empty.csv": ("uri\n", "lists no slides"),
    }
    for name, (text, words) in bad.items():
        (tmp_path / name).write_text(text)
        with pytest.raises(DataError, match=words):
            storage.list_archive(str(tmp_path / name))


# -- local files ----------------------------------------------------------------------------
def test_local_whole_file_writes(tmp_path: Path) -> None:
    uri = str(tmp_path / "out" / "a.json")
    storage.write_bytes(uri, b"one")
    storage.write_bytes(uri, b"two")
    assert storage.read_bytes(uri) == b"two"
    assert tree(tmp_path / "out") == {"a.json"}  # no temporary files left behind
    storage.upload_file(uri, str(tmp_path / "copy" / "b.json"))
    assert storage.read_bytes(str(tmp_path / "copy" / "b.json")) == b"two"
    with pytest.raises(StorageError, match="no such file"):
        storage.read_bytes(str(tmp_path / "missing"))
    assert storage.delete_prefix(str(tmp_path / "copy")) == 1
    assert not (tmp_path / "copy").exists()


def test_create_exclusive_has_exactly_one_winner(tmp_path: Path) -> None:
    uri = str(tmp_path / "commits" / "S1.json")
    wins: list[bytes] = []
    barrier = threading.Barrier(8)

    def attempt(i: int) -> None:
        barrier.wait()
        if storage.create_exclusive(uri, f"writer {i}".encode()):
            wins.append(f"writer {i}".encode())

    threads = [threading.Thread(target=attempt, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(wins) == 1
    assert storage.read_bytes(uri) == wins[0]
    assert not storage.create_exclusive(uri, b"late")
    assert tree(tmp_path / "commits") == {"S1.json"}


def test_stage_local_uses_the_file_in_place_and_checks_size(tmp_path: Path) -> None:
    f = tmp_path / "s.svs"
    f.write_bytes(b"12345")
    with storage.stage(SlideSource(str(f), "s", 5), tmp_path / "scratch") as st:
        assert st.path == f and not st.owned and st.size == 5
    assert f.exists() and not (tmp_path / "scratch").exists()
    with (
        pytest.raises(StorageError, match="has 5 bytes, the listing said 9"),
        storage.stage(SlideSource(str(f), "s", 9), tmp_path / "scratch"),
    ):
        pass
    with (
        pytest.raises(StorageError, match="not found"),
        storage.stage(SlideSource(str(tmp_path / "gone.svs"), "g"), tmp_path / "scratch"),
    ):
        pass


# -- S3 -------------------------------------------------------------------------------------
@pytest.mark.servers
def test_s3_listing_uses_the_paginator(s3_server, s3_bucket: str) -> None:
    c = s3_server.client()
    for i in range(23):
        c.put_object(Bucket=s3_bucket, Key=f"arch/p{i // 10}/s{i:02d}.svs", Body=b"x" * (i + 1))
    for key in ("arch/readme.txt", "arch/s99.svs.md5", "other/s50.svs"):
        c.put_object(Bucket=s3_bucket, Key=key, Body=b"z")
    got = storage.list_archive(f"s3://{s3_bucket}/arch", page_size=5)
    assert [s.slide_id for s in got] == [f"s{i:02d}" for i in range(23)]
    assert [s.size for s in got] == list(range(1, 24))
    assert got[0].uri == f"s3://{s3_bucket}/arch/p0/s00.svs"
    assert storage.list_archive(f"s3://{s3_bucket}/nothing-here") == []


@pytest.mark.servers
def test_s3_stage_downloads_checks_size_and_cleans_up(
    s3_server, s3_bucket: str, tmp_path: Path
) -> None:
    body = bytes(range(256)) * 40
    s3_server.client().put_object(Bucket=s3_bucket, Key="a/slide one.svs", Body=body)
    src = storage.list_archive(f"s3://{s3_bucket}/a")[0]
    scratch = tmp_path / "scratch"
    with storage.stage(src, scratch, FAST) as st:
        assert st.owned and st.size == len(body) and st.path.read_bytes() == body
        assert st.path.parent == scratch and st.path.name == storage.scratch_name(src.uri)
    assert list(scratch.iterdir()) == []
    lying = SlideSource(src.uri, "x", size=len(body) + 1)
    with (
        pytest.raises(StorageError, match=r"got 10,240 bytes, the object has 10,241"),
        storage.stage(lying, scratch, FAST),
    ):
        pass
    assert list(scratch.iterdir()) == []
    missing = SlideSource(f"s3://{s3_bucket}/a/gone.svs", "gone")
    with (
        pytest.raises(StorageError, match=r"gone\.svs.*404"),
        storage.stage(missing, scratch, FAST),
    ):
        pass


@pytest.mark.servers
def test_hostile_keys_never_write_outside_scratch(
    s3_server, s3_bucket: str, tmp_path: Path
) -> None:
    c = s3_server.client()
    keys = [
        "arch//abs/x.svs",
        "arch/with space.svs",
        "arch/ünï.svs",
        "arch/a/..svs",
        "arch/.../b.svs",
    ]
    for k in keys:
        c.put_object(Bucket=s3_bucket, Key=k, Body=b"slide")
    manifest = tmp_path / "m.csv"
    manifest.write_text(
        f"uri\ns3://{s3_bucket}/../../escape.svs\ns3://{s3_bucket}/arch/../../../../tmp/evil.svs\n"
    )
    sources = storage.list_archive(f"s3://{s3_bucket}/arch") + storage.list_archive(str(manifest))
    assert len(sources) == len(keys) + 2
    scratch = tmp_path / "work" / "scratch"
    scratch.mkdir(parents=True)
    before = tree(tmp_path)
    seen = []
    for s in sources:
        assert SAFE.fullmatch(s.slide_id) and ".." not in s.slide_id
        try:
            with storage.stage(s, scratch, FAST) as st:
                assert st.path.resolve().parent == scratch.resolve()
                seen.append(st.path.name)
        except StorageError:
            assert ".." in s.uri  # the server refuses such keys: recorded, nothing written
    assert len(seen) == len(keys)
    assert tree(tmp_path) == before  # nothing left anywhere, inside or outside scratch


@pytest.mark.servers
def test_s3_files_exclusive_list_delete_and_arrow(s3_server, s3_bucket: str) -> None:
    base = f"s3://{s3_bucket}/out"
    assert storage.create_exclusive(f"{base}/c/S1.json", b"first")
    assert not storage.create_exclusive(f"{base}/c/S1.json", b"second")
    assert storage.read_bytes(f"{base}/c/S1.json") == b"first"
    storage.write_bytes(f"{base}/c/S2.json", b"x")
    assert storage.exists(f"{base}/c/S2.json") and not storage.exists(f"{base}/c/S3.json")
    assert [u for u, _ in storage.list_files(f"{base}/c")] == [
        f"{base}/c/S1.json",
        f"{base}/c/S2.json",
    ]
    sink = pa.BufferOutputStream()
    pq.write_table(pa.table({"a": [1, 2, 3]}), sink)
    storage.write_bytes(f"{base}/t.parquet", sink.getvalue().to_pybytes())
    fs, path = storage.arrow_filesystem(f"{base}/t.parquet")
    assert pq.read_table(path, filesystem=fs).column("a").to_pylist() == [1, 2, 3]
    assert storage.delete_prefix(f"{base}/c") == 2
    assert storage.list_files(f"{base}/c") == []
    storage.check_access(base, write=True)
    with pytest.raises(StorageError, match="NoSuchBucket"):
        storage.check_access("s3://no-such-bucket-pgb/x", write=False, retry=FAST)


@pytest.mark.servers
def test_outage_is_retried_and_credentials_stay_out_of_errors(
    s3_server, s3_bucket: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    monkeypatch.setattr(s3_store, "_CLIENTS", {})
    uri = f"s3://{s3_bucket}/k.bin"
    storage.write_bytes(uri, b"payload")
    s3_server.stop()
    try:
        with pytest.raises(StorageError, match=r"k\.bin.*after 2 tries") as info:
            storage.read_bytes(uri, RetryPolicy(attempts=2, backoff_s=0.1))
        errors: list[BaseException] = []

        def restart() -> None:
            time.sleep(1.0)
            try:
                s3_server.start()
            except RuntimeError as e:
                errors.append(e)

        restarter = threading.Thread(target=restart)
        restarter.start()
        got = storage.read_bytes(uri, RetryPolicy(attempts=12, backoff_s=0.5, max_backoff_s=4))
        restarter.join()
        assert not errors, errors
        assert got == b"payload"
    finally:
        if s3_server.proc is None:
            s3_server.start()
    env = s3_server.env
    assert env["AWS_SECRET_ACCESS_KEY"] not in str(info.value)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong-secret-0123456789")
    monkeypatch.setattr(s3_store, "_CLIENTS", {})
    with pytest.raises(StorageError) as bad:
        storage.read_bytes(uri, FAST)
    text = str(bad.value)
    assert "SignatureDoesNotMatch" in text or "AccessDenied" in text
    for secret in ("wrong-secret-0123456789", env["AWS_SECRET_ACCESS_KEY"]):
        assert secret not in text
    logged = caplog.text  # DEBUG logging of everything above, the transport libraries included
    assert "payload" in logged or "k.bin" in logged
    for secret in (
        env["AWS_SECRET_ACCESS_KEY"],
        env["AWS_ACCESS_KEY_ID"],
        "wrong-secret-0123456789",
    ):
        assert secret not in logged


# -- artefacts on S3: features and model bundles ---------------------------------------------------
def _slide_features(
    slide_id: str, contract: FeatureContract, n: int = 5
) -> feature_store.SlideFeatures:
    rng = np.random.default_rng(len(slide_id))
    x = np.arange(n, dtype=np.int64) * 256
    return feature_store.SlideFeatures(
        slide_id,
        contract,
        x,
        x[::-1].copy(),
        rng.standard_normal((n, contract.dim)).astype(np.float32),
        np.full(n, 0.75, np.float32),
        512,
        {"slide_id": slide_id, "min_tissue": 0.5},
    )


@pytest.mark.servers
def test_features_folder_on_s3(s3_server, s3_bucket: str) -> None:
    contract = FeatureContract("stain-texture", "v1", 6, 256, 0.5)
    folder = f"s3://{s3_bucket}/cohort/features"
    written = {s: _slide_features(s, contract, n) for s, n in (("A", 4), ("B-2", 7))}
    for sf in written.values():
        assert feature_store.write_slide_features(sf, folder) == f"{folder}/{sf.slide_id}.parquet"
    storage.write_bytes(f"{folder}/nested/C.parquet", b"not a direct member")
    assert feature_store.stored_slide_ids(folder) == ("A", "B-2")
    assert feature_store.read_contract(feature_store.feature_uri(folder, "A")) == contract
    back = feature_store.read_slide_features(feature_store.feature_uri(folder, "B-2"), contract)
    np.testing.assert_array_equal(back.feats, written["B-2"].feats)
    assert back.extraction == {"slide_id": "B-2", "min_tissue": 0.5} and back.size_l0 == 512
    bags = feature_store.load_bags(folder, ["A", "B-2"], contract)
    np.testing.assert_array_equal(bags["A"][0], written["A"].coords)
    with pytest.raises(DataError, match=r"1 of 2 slide\(s\) have no features, e.g. \['Z'\]"):
        feature_store.load_bags(folder, ["A", "Z"])
    other = FeatureContract("stain-texture", "v2", 6, 256, 0.5)
    with pytest.raises(DataError, match=r"slide A mismatch: version 'v2' vs 'v1'"):
        feature_store.load_bags(folder, ["A"], other)
    with pytest.raises(DataError, match="feature file not found"):
        feature_store.read_contract(feature_store.feature_uri(folder, "Z"))


@pytest.mark.servers
def test_model_bundles_on_s3(s3_server, s3_bucket: str, tmp_path: Path) -> None:
    from test_registry import make_fusion, make_generator

    local = {"gen": make_generator(tmp_path / "gen"), "fus": make_fusion(tmp_path / "fus")}
    for name, path in local.items():
        model = load_bundle(path)
        uri = f"s3://{s3_bucket}/models/{name}"
        save = save_generator if name == "gen" else save_fusion
        assert save(model, uri) == uri
        assert [u.rsplit("/", 1)[-1] for u, _ in storage.list_files(uri)] == sorted(
            p.name for p in path.iterdir()
        )
        assert read_manifest(uri) == read_manifest(path)  # same files, same digests
        back = load_bundle(uri)
        assert type(back) is type(model) and back.contract == model.contract
        for (k, a), (_, b) in zip(
            model.model.state_dict().items(), back.model.state_dict().items(), strict=True
        ):
            assert torch.equal(a, b), k
        with pytest.raises(ConfigError, match="not empty"):
            save(model, uri)
        save(model, uri, overwrite=True)
        assert read_manifest(uri) == read_manifest(path)
    weights = f"s3://{s3_bucket}/models/gen/weights.pt"
    storage.write_bytes(weights, storage.read_bytes(f"s3://{s3_bucket}/models/fus/weights.pt"))
    with pytest.raises(DataError, match=r"weights\.pt does not match the digest"):
        load_bundle(f"s3://{s3_bucket}/models/gen")
    with pytest.raises(DataError, match="not a model bundle"):
        load_bundle(f"s3://{s3_bucket}/models/none")
