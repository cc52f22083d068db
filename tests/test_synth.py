"""The semi-synthetic cohort: slide files, tables in the cohort format, composition ground
truth, determinism."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import openslide
import pandas as pd
import pytest
from click.testing import CliRunner

from pathgen_batch.cli import main
from pathgen_batch.cohort import load_cohort
from pathgen_batch.cohort.splits import stratified_folds
from pathgen_batch.config import from_dict
from pathgen_batch.errors import ConfigError, DataError
from pathgen_batch.omics import GenePanel
from pathgen_batch.synth import (
    GRADE_CLASSES,
    CohortConfig,
    SynthCohort,
    build_cohort,
    load_built_cohort,
    write_pyramidal_tiff,
)
from pathgen_batch.synth.cohort import config_of_meta
from pathgen_batch.synth.data import fold_strata, semi_data
from pathgen_batch.synth.render import RenderParams, render_slide
from pathgen_batch.synth.stain import RGB_FROM_HED, StainShift
from pathgen_batch.synth.texture import TextureLibrary

SEMI_SMALL = CohortConfig(n_patients=16, slide_px=768, seed=0)


def _tissue_share(rgb: np.ndarray) -> float:
    """Share of pixels whose optical density (sum over RGB) exceeds 0.3."""
    od = -np.log((rgb.astype(np.float64) + 1.0) / 256.0).sum(-1)
    return float((od > 0.3).mean())


def _digests(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def semi(tmp_path_factory: pytest.TempPathFactory, he_sources: tuple[Path, Path]) -> SynthCohort:
    """16 real patients, 768 px slides."""
    return build_cohort(tmp_path_factory.mktemp("semi") / "cohort", SEMI_SMALL, workers=2)


# ----------------------------------------------------------------------------- slide writer


def test_written_tiff_opens_in_openslide_as_aperio_with_every_level(tmp_path: Path) -> None:
    # a smooth gradient compresses with small JPEG error
    yy, xx = np.mgrid[0:640, 0:480]
    img = np.stack([yy * 200 // 640 + 30, xx * 200 // 480 + 30, np.full_like(yy, 128)], -1)
    img = img.astype(np.uint8)  # (640, 480, 3)
    path = tmp_path / "s.tiff"
    dims = write_pyramidal_tiff(path, img, mpp=0.5, magnification=20, levels=3, tile=256)
    assert dims == [(480, 640), (120, 160), (30, 40)]
    with openslide.OpenSlide(path) as s:
        assert s.properties["openslide.vendor"] == "aperio"
        assert s.level_count == 3
        assert s.level_dimensions == ((480, 640), (120, 160), (30, 40))
        assert float(s.properties["openslide.mpp-x"]) == 0.5
        assert float(s.properties["openslide.mpp-y"]) == 0.5
        assert float(s.properties["openslide.objective-power"]) == 20
        assert s.properties["openslide.comment"].startswith("Aperio Image Library v1.0")
        got = np.asarray(s.read_region((0, 0), 0, (480, 640)).convert("RGB"), dtype=np.float64)
        assert np.abs(got - img).mean() < 3.0
        lvl1 = np.asarray(s.read_region((0, 0), 1, (120, 160)).convert("RGB"), dtype=np.float64)
        box = img.reshape(160, 4, 120, 4, 3).mean(axis=(1, 3))  # closed-form 4x4 box mean
        assert np.abs(lvl1 - box).mean() < 3.0

    other = tmp_path / "t.tiff"
    write_pyramidal_tiff(other, img, mpp=0.25, magnification=40, levels=2, tile=128)
    with openslide.OpenSlide(other) as s:
        assert s.level_dimensions == ((480, 640), (120, 160))
        assert float(s.properties["openslide.mpp-x"]) == 0.25
        assert float(s.properties["openslide.objective-power"]) == 40
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.tiff", "t.tiff"]  # no temp files


@pytest.mark.parametrize(
    ("rgb", "kwargs", "err", "words"),
    [
        (np.zeros((300, 300, 3), np.float32), {}, DataError, "uint8"),
        (np.zeros((300, 300), np.uint8), {}, DataError, "(H, W, 3)"),
        (np.zeros((300, 300, 3), np.uint8), {"tile": 100}, ConfigError, "multiple of 16"),
        (np.zeros((200, 300, 3), np.uint8), {}, ConfigError, "smaller than one 256 px tile"),
        (np.zeros((300, 300, 3), np.uint8), {"levels": 6}, ConfigError, "too small"),
        (np.zeros((300, 300, 3), np.uint8), {"mpp": 0.0}, ConfigError, "mpp"),
    ],
)
def test_writer_rejects_bad_input_by_name(
    tmp_path: Path, rgb: np.ndarray, kwargs: dict, err: type[Exception], words: str
) -> None:
    with pytest.raises(err, match=words.replace("(", r"\(").replace(")", r"\)")):
        write_pyramidal_tiff(tmp_path / "x.tiff", rgb, **kwargs)
    assert not list(tmp_path.iterdir())


# ----------------------------------------------------------------------------- stain, render


def test_stain_shift_identity_and_haematoxylin_scaling_closed_form() -> None:
    rng = np.random.default_rng(1)
    img = rng.integers(0, 256, size=(64, 64, 3), dtype=np.uint8)
    assert np.array_equal(StainShift().apply(img), img)

    # a pure haematoxylin pixel of concentration c: I = 256 exp(-c v) - 1 per channel;
    # doubling haematoxylin gives 256 exp(-2 c v) - 1
    c = 0.3
    v = RGB_FROM_HED[0]
    pixel = np.round(256.0 * np.exp(-c * v) - 1.0).astype(np.uint8).reshape(1, 1, 3)
    out = StainShift(alpha=(2.0, 1.0, 1.0)).apply(pixel).reshape(3).astype(np.float64)
    expected = 256.0 * np.exp(-2.0 * c * v) - 1.0
    assert np.abs(out - expected).max() <= 2.0
    # eosin scaling leaves a pure haematoxylin pixel unchanged
    same = StainShift(alpha=(1.0, 1.7, 1.0)).apply(pixel).reshape(3).astype(np.float64)
    assert np.abs(same - pixel.reshape(3)).max() <= 1.0


def _flat_library(colours: list[tuple[int, int, int]]) -> TextureLibrary:
    """One constant-colour image per class; every patch of class k is colour k."""
    images = [np.full((160, 160, 3), c, dtype=np.uint8) for c in colours]
    patches = [np.array([[k, y, x] for y in (0, 16, 32) for x in (0, 32)]) for k in range(3)]
    return TextureLibrary(images, 128, patches, np.zeros((len(colours), 8)))


def test_render_cross_fades_to_exact_colours_and_hits_the_composition() -> None:
    colours = [(200, 60, 120), (90, 40, 160), (230, 150, 190)]
    lib = _flat_library(colours)
    params = RenderParams(size_px=640, stain_scale_sd=0.0, stain_shift_sd=0.0)
    target = np.array([0.5, 0.3, 0.2])
    r = render_slide(lib, target, params, np.random.default_rng(3))
    assert r.rgb.shape == (640, 640, 3) and r.rgb.dtype == np.uint8
    assert np.abs(r.class_fractions - target).sum() < 0.1
    assert r.class_fractions.sum() == pytest.approx(1.0)
    # blended patch weights sum to one: every fully-tissue pixel is exactly one class colour
    # or a mix of two neighbouring classes, never darker or lighter than the colours allow
    flat = r.rgb.reshape(-1, 3).astype(int)
    exact = np.zeros(len(flat), bool)
    for c in colours:
        exact |= np.abs(flat - np.array(c)).max(1) <= 1
    assert exact.mean() > 0.25
    # the rest is background, the soft tissue edge or class cross-fades; tissue share matches
    assert 0.3 < r.tissue_fraction < 0.7
    assert _tissue_share(r.rgb) == pytest.approx(r.tissue_fraction, abs=0.05)


def test_render_one_class_only_uses_that_class() -> None:
    lib = _flat_library([(200, 60, 120), (90, 40, 160), (230, 150, 190)])
    params = RenderParams(size_px=512, stain_scale_sd=0.0, stain_shift_sd=0.0)
    r = render_slide(lib, np.array([0.0, 1.0, 0.0]), params, np.random.default_rng(0))
    assert r.class_fractions.tolist() == [0.0, 1.0, 0.0]
    flat = r.rgb.reshape(-1, 3).astype(int)
    tissue = np.abs(flat - np.array([90, 40, 160])).max(1) <= 1
    other = np.abs(flat - np.array([200, 60, 120])).max(1) <= 1
    assert tissue.mean() > 0.3 and not other.any()


def test_render_rejects_a_composition_that_is_not_shares() -> None:
    lib = _flat_library([(200, 60, 120), (90, 40, 160), (230, 150, 190)])
    with pytest.raises(ConfigError, match="summing to 1"):
        render_slide(
            lib, np.array([0.5, 0.5, 0.5]), RenderParams(size_px=256), np.random.default_rng(0)
        )


# ----------------------------------------------------------------------------- tables


def test_real_patients_keep_unknown_grades_and_folds_are_stratified() -> None:
    data = semi_data(CohortConfig().resolved())
    c = data.clinical
    assert len(c) == 198 and c["patient_id"].is_unique
    unknown = c["grade"].isna()
    assert unknown.sum() == 2
    assert c.loc[unknown, "grade_index"].isna().all()
    assert set(c.loc[~unknown, "grade"]) == set(GRADE_CLASSES)
    known = c[~unknown]
    assert (known["grade_index"] == known["grade"].map(GRADE_CLASSES.index)).all()
    assert c["event"].sum() == 51  # e.tdm of the source
    assert data.expression.shape == (198, 76)

    strata = fold_strata(c)
    folds = stratified_folds(strata, 5, seed=0)
    sizes = np.bincount(folds, minlength=5)
    assert sizes.max() - sizes.min() <= 1
    table = pd.crosstab(pd.Series(strata, name="s"), pd.Series(folds, name="f"))
    assert ((table.max(axis=1) - table.min(axis=1)) <= 1).all()
    assert set(table.columns) == set(range(5))


def test_panel_has_families_from_expression_and_matches_columns(semi: SynthCohort) -> None:
    assert semi.panel.n_families >= 4
    assert list(semi.expression.columns) == list(semi.panel.genes)
    assert semi.panel.n_genes == 76
    on_disk = GenePanel.read(Path(semi.root) / "gene_panel.csv")
    assert on_disk.digest == semi.meta["panel_digest"] == semi.panel.digest
    # genes of a family correlate more with each other than with other families' genes
    corr = np.corrcoef(semi_data(CohortConfig().resolved()).expression.to_numpy().T)
    fam = np.asarray(semi.panel.families)
    same = fam[:, None] == fam[None, :]
    off = ~np.eye(len(fam), dtype=bool)
    assert corr[same & off].mean() > corr[~same].mean() + 0.1


def test_tables_follow_the_cohort_format_with_relative_slide_uris(semi: SynthCohort) -> None:
    root = Path(semi.root)
    disk = pd.read_parquet(root / "clinical.parquet")
    assert list(disk.columns) == [
        "patient_id", "slide_id", "slide_uri", "grade", "time", "event", "fold", "age", "er",
    ]  # fmt: skip
    assert len(disk) == 16 and disk["patient_id"].is_unique and disk["slide_id"].is_unique
    assert set(disk["fold"]) <= set(range(5)) and disk["fold"].dtype == np.int64
    assert disk["event"].dtype == bool and disk["time"].dtype == np.float64
    assert (disk["slide_uri"] == "slides/" + disk["slide_id"] + ".tiff").all()
    toml = (root / "cohort.toml").read_text()
    assert 'expression_unit = "log2"' in toml and '"poorly differentiated"]' in toml
    c = semi.clinical  # as every reader sees it
    assert c["patient_id"].tolist() == disk["patient_id"].tolist()
    assert str(c["grade_index"].dtype) == "Int64" and semi.grade_classes == GRADE_CLASSES
    assert c.loc[c["grade"].notna(), "grade_index"].tolist() == [
        GRADE_CLASSES.index(g) for g in c["grade"].dropna()
    ]
    assert semi.covariates == ("age", "er")
    for sid in semi.slide_ids:
        assert semi.slide_path(sid) == root / "slides" / f"{sid}.tiff"
        assert semi.slide_path(sid).is_file()
    assert semi.expression.index.tolist() == c["patient_id"].tolist()
    with pytest.raises(DataError, match="no slide 'nope'"):
        semi.slide_path("nope")


def test_readers_need_none_of_the_builders_bookkeeping(semi: SynthCohort, tmp_path: Path) -> None:
    import shutil

    copy = tmp_path / "plain"
    shutil.copytree(semi.root, copy)
    (copy / "cohort.json").unlink()
    (copy / "composition.parquet").unlink()
    plain = load_cohort(copy, open_slides=True)
    assert plain.digest == semi.digest  # derived from the content, not from where it lies
    assert plain.slide_ids == semi.slide_ids and plain.panel.digest == semi.panel.digest


def test_every_slide_opens_with_all_levels_mpp_and_tissue_on_white(semi: SynthCohort) -> None:
    comp = semi.composition.set_index("slide_id")
    for sid in semi.slide_ids:
        with openslide.OpenSlide(semi.slide_path(sid)) as s:
            assert s.properties["openslide.vendor"] == "aperio"
            assert s.level_count == 3
            assert s.level_dimensions == ((768, 768), (192, 192), (48, 48))
            assert float(s.properties["openslide.mpp-x"]) == 0.5
            rgb = np.asarray(s.read_region((0, 0), 1, (192, 192)).convert("RGB"))
        share = _tissue_share(rgb)
        truth = comp.loc[sid, "tissue_fraction"]
        # texture holds some empty gaps, so measured tissue is a little below the mask
        assert 0.6 * truth < share < truth + 0.05
        assert share < 0.75  # background left for a tissue mask to find


def test_rendered_composition_tracks_programs_without_copying_them(semi: SynthCohort) -> None:
    comp = semi.composition
    k = semi.config.n_programs
    prog = comp[[f"program_{j}" for j in range(1, k + 1)]].to_numpy()
    frac = comp[[f"fraction_{j}" for j in range(1, k + 1)]].to_numpy()
    target = comp[[f"target_{j}" for j in range(1, k + 1)]].to_numpy()
    np.testing.assert_allclose(prog.sum(1), 1.0, atol=1e-9)
    np.testing.assert_allclose(frac.sum(1), 1.0, atol=1e-9)
    r = np.array([np.corrcoef(prog[:, j], frac[:, j])[0, 1] for j in range(k)])
    assert r.mean() > 0.4 and (r > 0).all()  # composition follows expression
    assert r.max() < 0.95  # and is not a copy of it
    assert np.abs(prog - frac).max() > 0.1
    assert np.abs(target - frac).sum(1).mean() < 0.1  # the renderer hits its targets


def test_inventory_reports_counts(semi: SynthCohort) -> None:
    text = semi.inventory()
    c = semi.clinical
    assert "patients 16, slides 16" in text
    assert f"genes 76 in {semi.panel.n_families} families" in text
    for g in GRADE_CLASSES:
        assert f"{g} {int((c['grade'] == g).sum())}" in text
    assert f"events: {int(c['event'].sum())} of 16" in text
    assert "768x768 > 192x192 > 48x48 px (3 levels) at 0.5 um/px" in text
    assert "disk:" in text


# ----------------------------------------------------------------------------- build behaviour


@pytest.mark.slow  # over ~2 s: the full suite runs it
def test_same_seed_gives_identical_files_whatever_the_workers(tmp_path: Path) -> None:
    cfg = CohortConfig(n_patients=5, slide_px=512, folds=2, seed=7)
    a = build_cohort(tmp_path / "a", cfg, workers=1)
    b = build_cohort(tmp_path / "b", cfg, workers=2)
    da, db = _digests(Path(a.root)), _digests(Path(b.root))
    assert len(da) == 5 + 6 and da == db
    meta = json.loads((Path(a.root) / "cohort.json").read_text())
    for rel, info in meta["files"].items():
        assert info["sha256"] == da[rel]
    c = build_cohort(tmp_path / "c", CohortConfig(n_patients=5, slide_px=512, folds=2, seed=8))
    dc = _digests(Path(c.root))
    slides_a = {v for k, v in da.items() if k.startswith("slides/")}
    assert not slides_a & {v for k, v in dc.items() if k.startswith("slides/")}


@pytest.mark.slow  # over ~2 s: the full suite runs it
def test_rebuild_reuses_refuses_or_overwrites(tmp_path: Path) -> None:
    out = tmp_path / "c"
    cfg = CohortConfig(n_patients=4, slide_px=256, folds=2)
    first = build_cohort(out, cfg, workers=1)
    slide = first.slide_path(first.slide_ids[0])
    stamp = slide.stat().st_mtime_ns
    again = build_cohort(out, cfg, workers=1)
    assert again.reused and not first.reused
    assert slide.stat().st_mtime_ns == stamp

    other = CohortConfig(n_patients=4, slide_px=256, folds=2, seed=1)
    with pytest.raises(ConfigError, match=r"different config.*seed: 0 -> 1"):
        build_cohort(out, other, workers=1)
    assert load_built_cohort(out).meta["seed"] == 0
    replaced = build_cohort(out, other, workers=1, overwrite=True)
    assert not replaced.reused and replaced.meta["seed"] == 1

    (out / "cohort.json").unlink()  # an interrupted build: rebuilt, not reused
    with pytest.raises(DataError, match="not a complete semi-synthetic cohort"):
        load_built_cohort(out)
    assert not build_cohort(out, other, workers=1).reused

    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="not part of a cohort"):
        build_cohort(foreign, cfg, workers=1, overwrite=True)
    assert (foreign / "notes.txt").read_text() == "mine"


@pytest.mark.slow  # over ~2 s: the full suite runs it
def test_synthetic_mode_produces_the_requested_sizes(tmp_path: Path) -> None:
    cfg = CohortConfig(
        mode="synthetic", n_patients=9, n_genes=37, n_families=5, n_programs=3,
        slide_px=512, levels=2, folds=3, seed=2,
    )  # fmt: skip
    c = build_cohort(tmp_path / "s", cfg, workers=1)
    assert c.expression.shape == (9, 37)
    assert c.panel.n_families == 5 and c.panel.n_genes == 37
    assert c.meta["mode"] == "synthetic" and c.meta["counts"]["patients"] == 9
    assert c.clinical["grade_index"].notna().all()
    assert set(c.clinical["fold"]) == {0, 1, 2}
    assert (c.clinical["time"] > 0).all()
    assert [f"program_{j}" for j in (1, 2, 3)] == list(c.composition.columns[2:5])
    for sid in c.slide_ids:
        with openslide.OpenSlide(c.slide_path(sid)) as s:
            assert s.level_dimensions == ((512, 512), (128, 128))


def test_synthetic_survival_and_grade_follow_the_programs() -> None:
    from pathgen_batch.synth.data import synthetic_data

    d = synthetic_data(CohortConfig(mode="synthetic", n_patients=600, n_genes=60).resolved())
    gi = d.clinical["grade_index"].to_numpy(dtype=float)
    counts = np.bincount(gi.astype(int), minlength=3)
    assert counts.tolist() == [120, 240, 240]  # grade cut at the 20% and 60% quantiles
    # the last program is the high-grade one; high-grade patients fail sooner
    assert np.corrcoef(d.programs[:, -1], gi)[0, 1] > 0.3
    ev = d.clinical["event"].to_numpy()
    assert 0.2 < ev.mean() < 0.8
    t = d.clinical["time"].to_numpy()
    assert np.median(t[(gi == 2) & ev]) < np.median(t[(gi == 0) & ev])


@pytest.mark.parametrize(
    ("overrides", "words"),
    [
        ({"n_patients": 0}, "n_patients"),
        ({"n_patients": 500}, "198 real patients"),
        ({"n_genes": 100}, "76 real genes"),
        ({"slide_px": 200}, "smaller than one 256 px tile"),
        ({"slide_px": 100, "tile_px": 64}, "one texture patch"),
        ({"folds": 1}, "folds"),
        ({"n_families": 0}, "n_families"),
        ({"mode": "synthetic", "n_genes": 3, "n_families": 4}, "n_families"),
        ({"tissue_fraction": (0.9, 0.2)}, "tissue_fraction"),
        ({"mode": "real"}, "mode"),
    ],
)
def test_bad_config_is_a_clear_config_error(overrides: dict, words: str) -> None:
    with pytest.raises(ConfigError, match=words):
        from_dict(CohortConfig, overrides)


def test_unknown_config_key_is_named() -> None:
    with pytest.raises(ConfigError, match="slide_size"):
        from_dict(CohortConfig, {"slide_size": 2048})


# ----------------------------------------------------------------------------- CLI


@pytest.mark.slow  # over ~2 s: the full suite runs it
def test_cli_builds_reuses_and_summarises(tmp_path: Path) -> None:
    runner = CliRunner()
    out = tmp_path / "cli"
    args = ["synth", "cohort", "--out", str(out), "--n-patients", "5", "--slide-px", "256",
            "--folds", "2", "--workers", "1"]  # fmt: skip
    first = runner.invoke(main, args)
    assert first.exit_code == 0, first.output
    assert "5 patients, 5 slides, 76 genes" in first.output
    again = runner.invoke(main, args)
    assert again.exit_code == 0 and "reused" in again.output
    inv = runner.invoke(main, ["synth", "inventory", str(out)])
    assert inv.exit_code == 0 and "patients 5, slides 5" in inv.output

    bad = runner.invoke(main, [*args[:4], "--n-patients", "0"])
    assert bad.exit_code == 2
    assert bad.output.strip().startswith("Error:") and "n_patients" in bad.output
    missing = runner.invoke(main, ["synth", "inventory", str(tmp_path / "none")])
    assert missing.exit_code == 2 and "not a complete semi-synthetic cohort" in missing.output


@pytest.mark.parametrize("cmd", [["synth"], ["synth", "cohort"], ["synth", "inventory"]])
def test_every_synth_command_has_help(cmd: list[str]) -> None:
    res = CliRunner().invoke(main, [*cmd, "--help"])
    assert res.exit_code == 0 and "Usage:" in res.output


# ------------------------------------------------------------------ cohort v2: grade morphology


def test_grade_morphology_darkens_enlarges_and_fills_tumour_patches(
    he_sources: tuple[Path, Path],
) -> None:
    from pathgen_batch.synth.cohort import _library
    from pathgen_batch.synth.morphology import apply_morphology
    from pathgen_batch.synth.texture import patch_features

    lib = _library(4, 0)
    rng = np.random.default_rng(0)
    patches = [lib.patch(3, rng) for _ in range(12)]  # the tumour-like class
    assert apply_morphology(patches[0], 0.0, rng) is patches[0]  # level 0: cohort v1
    size = lib.patch_px

    def feats(level: float) -> np.ndarray:  # (12, 8) features of whole patches
        out = [apply_morphology(p, level, np.random.default_rng(i)) for i, p in enumerate(patches)]
        return np.concatenate([patch_features(p, size, size)[1] for p in out])

    f0, f1 = feats(0.0), feats(1.0)
    h, nuclear, empty = 3, 5, 6  # FEATURES: h_mean, nuclear share, empty share
    assert f1[:, h].mean() > f0[:, h].mean() + 0.1
    assert f1[:, nuclear].mean() > f0[:, nuclear].mean() + 0.1
    assert f1[:, empty].mean() <= f0[:, empty].mean()
    with pytest.raises(ConfigError, match="morphology level"):
        apply_morphology(patches[0], -1.0, rng)


def test_cohort_v2_draws_grade_morphology_and_v1_stays_without(tmp_path: Path) -> None:
    from scipy.stats import spearmanr

    base = {"n_patients": 8, "slide_px": 256, "folds": 2}
    v2 = build_cohort(tmp_path / "v2", CohortConfig(**base), workers=1)
    v1 = build_cohort(tmp_path / "v1", CohortConfig(**base, version=1), workers=1)
    assert v2.config.version == 2 and v2.config.grade_morphology == 1.0
    assert v1.config.version == 1 and v1.config.grade_morphology == 0.0
    comp = v2.composition
    assert "morphology_level" not in v1.composition.columns
    g = v2.clinical["grade"].map({c: i for i, c in enumerate(GRADE_CLASSES)})
    rho = spearmanr(g, comp["morphology_score"], nan_policy="omit")[0]
    assert rho > 0.5  # the score follows grade, with noise
    assert np.allclose(comp["morphology_level"], comp["morphology_score"])  # strength 1
    # the same patients, compositions and layout; only the tumour texture differs
    cols = list(v1.composition.columns)
    pd.testing.assert_frame_equal(v1.composition[cols], comp[cols])
    d1, d2 = _digests(Path(v1.root)), _digests(Path(v2.root))
    assert d1["clinical.parquet"] == d2["clinical.parquet"]
    assert {k for k in d1 if k.startswith("slides/") and d1[k] != d2[k]}
    assert "cohort version 2" in v2.inventory() and "grade morphology" in v2.inventory()
    # a cohort.json written before versions existed reads as version 1
    meta = dict(v1.meta)
    meta["config"] = {k: v for k, v in meta["config"].items() if k != "version"}
    assert from_dict(CohortConfig, config_of_meta(meta)).version == 1
    with pytest.raises(ConfigError, match="version 1 has no grade morphology"):
        CohortConfig(version=1, grade_morphology=0.5)
    with pytest.raises(ConfigError, match="version"):
        CohortConfig(version=3)
