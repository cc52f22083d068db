"""The cohort format: loading, every validation problem as one clear line, the CLI, and a
real-world-shaped cohort (CSV, several slides per patient, missing labels, TPM) that trains."""

from __future__ import annotations

import dataclasses
import math
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from click.testing import CliRunner
from tiny_training import FUS, threads

from pathgen_batch.cli import main
from pathgen_batch.cohort import CohortSettings, init_cohort, load_cohort, validate_cohort
from pathgen_batch.errors import ConfigError, DataError
from pathgen_batch.features import build_encoder, extract_cohort, feature_file
from pathgen_batch.features.store import read_slide_features, write_slide_features
from pathgen_batch.models.fusion import FusionOutput
from pathgen_batch.models.survival import fit_bin_edges
from pathgen_batch.synth import CohortConfig, build_cohort
from pathgen_batch.training.data import check_training_part, load_training_data
from pathgen_batch.training.predictor_loop import prediction_loss
from pathgen_batch.training.trainers import train_predictor

GENES = ("G1", "G2", "G3")


def _write_tables(root: Path, n: int = 8) -> None:
    """A small cohort of tables only (slide files absent): n patients, 3 genes, 2 grades."""
    root.mkdir(parents=True, exist_ok=True)
    pids = [f"P{i + 1}" for i in range(n)]
    pd.DataFrame(
        {
            "patient_id": pids,
            "grade": ["low" if i % 2 else "high" for i in range(n)],
            "time": [100.0 + 10 * i for i in range(n)],
            "event": [1 if i % 3 == 0 else 0 for i in range(n)],
            "age": [50 + i for i in range(n)],
        }
    ).to_csv(root / "clinical.csv", index=False)
    pd.DataFrame(
        {
            "patient_id": pids,
            "slide_id": [f"{p}-A" for p in pids],
            "slide_uri": [f"slides/{p}-A.tiff" for p in pids],
        }
    ).to_csv(root / "slides.csv", index=False)
    rng = np.random.default_rng(0)
    expr = pd.DataFrame(rng.uniform(1, 50, (n, 3)), columns=list(GENES))
    expr.insert(0, "patient_id", pids)
    expr.to_csv(root / "expression.csv", index=False)
    (root / "gene_panel.csv").write_text("gene,family\nG1,a\nG2,a\nG3,b\n")
    settings = CohortSettings(expression_unit="tpm", grade_classes=("low", "high"), folds=2)
    (root / "cohort.toml").write_text(settings.to_toml())


def _edit(root: Path, name: str, change: Callable[[pd.DataFrame], pd.DataFrame | None]) -> None:
    df = pd.read_csv(root / name, dtype={"patient_id": str})
    out = change(df)
    (df if out is None else out).to_csv(root / name, index=False)


def _set(name: str, row: int, col: str, value: object) -> Callable[[Path], None]:
    def run(root: Path) -> None:
        def change(df: pd.DataFrame) -> None:
            df[col] = df[col].astype(object)
            df.loc[row, col] = value

        _edit(root, name, change)

    return run


def _drop(name: str, row: int | None = None, col: str | None = None) -> Callable[[Path], None]:
    def run(root: Path) -> None:
        if col is not None:
            _edit(root, name, lambda df: df.drop(columns=[col]))
        else:
            _edit(root, name, lambda df: df.drop(index=[row]))

    return run


def _append(name: str, row: dict) -> Callable[[Path], None]:
    return lambda root: _edit(root, name, lambda df: pd.concat([df, pd.DataFrame([row])]))


def _write(name: str, text: str) -> Callable[[Path], None]:
    return lambda root: (root / name).write_text(text)


def _also_parquet(root: Path) -> None:
    pd.read_csv(root / "clinical.csv").to_parquet(root / "clinical.parquet")


def _unlink(name: str) -> Callable[[Path], None]:
    return lambda root: (root / name).unlink()


PROBLEMS = [
    (_unlink("clinical.csv"), "clinical.csv|parquet: missing from the cohort"),
    (_unlink("gene_panel.csv"), "gene_panel.csv: missing from the cohort"),
    (_also_parquet, "clinical.csv and clinical.parquet: both present; keep one"),
    (_drop("clinical.csv", col="patient_id"), "clinical.csv: missing column 'patient_id'"),
    (
        _set("clinical.csv", 3, "patient_id", None),
        "clinical.csv row 4, column patient_id: empty id",
    ),
    (
        _set("clinical.csv", 2, "patient_id", "P2"),
        "clinical.csv row 3, column patient_id: duplicate id 'P2'",
    ),
    (
        _set("clinical.csv", 0, "grade", "mid"),
        "clinical.csv row 1, column grade: 'mid' is not a grade class ['low', 'high']",
    ),
    (
        _write("cohort.toml", 'expression_unit = "tpm"\nfolds = 2\n'),
        "clinical.csv column grade: text grades ['high', 'low'] need an order",
    ),
    (
        _set("clinical.csv", 1, "event", "maybe"),
        "clinical.csv row 2, column event: 'maybe' is not 0/1 or true/false",
    ),
    (
        _set("clinical.csv", 3, "time", -5),
        "clinical.csv row 4, column time: -5.0 is not a time >= 0",
    ),
    (
        _set("clinical.csv", 4, "event", None),
        "clinical.csv row 5, column time/event: an outcome needs both time and event",
    ),
    (
        lambda r: _edit(r, "clinical.csv", lambda df: df.assign(fold=[0, 1, 0, 1, 0, 1, 0, None])),
        "clinical.csv row 8, column fold: no fold; give every patient a fold or none",
    ),
    (
        lambda r: _edit(r, "clinical.csv", lambda df: df.assign(fold=[0, 1, 1, 0, 1, 1, 0, 1])),
        "clinical.csv column fold: fold 0: its training part has no events",
    ),
    (
        _write("cohort.toml", 'expression_unit = "tpm"\ngrade_classes = ["low", "high"]\n'),
        "clinical.csv column fold: 5 folds requested but the events and grade classes fill at "
        "most 3",
    ),
    (
        _write("cohort.toml", "expression_units = 'tpm'\n"),
        "cohort.toml: unknown key(s) ['expression_units']",
    ),
    (_write("cohort.toml", "format_version = 2\n"), "reads cohort format 1, got 2"),
    (
        _append("slides.csv", {"patient_id": "P1", "slide_id": "P1-A", "slide_uri": "x.tiff"}),
        "slides.csv row 9, column slide_id: duplicate id 'P1-A'",
    ),
    (
        _append("slides.csv", {"patient_id": "P9", "slide_id": "P9-A", "slide_uri": "x.tiff"}),
        "slides.csv row 9, column patient_id: patient 'P9' is not in clinical",
    ),
    (
        _drop("slides.csv", row=5),
        "slides.csv column patient_id: 1 patient(s) have no slide, e.g. ['P6']",
    ),
    (
        lambda r: _edit(r, "slides.csv", lambda df: df.assign(stain="HE")),
        "slides.csv: unknown column(s) ['stain']",
    ),
    (
        _set("slides.csv", 1, "slide_uri", "../elsewhere/a.tiff"),
        "slides.csv row 2, column "
        "slide_uri: '../elsewhere/a.tiff': a relative slide_uri must not contain '..'",
    ),
    (
        _set("slides.csv", 2, "slide_uri", None),
        "slides.csv row 3, column slide_uri: empty slide_uri",
    ),
    (
        lambda r: _edit(r, "slides.csv", lambda df: df.assign(mpp=[0.5] * 7 + [-1])),
        "slides.csv row 8, column mpp: -1.0 is not a number > 0 (um/px)",
    ),
    (
        lambda r: _edit(r, "clinical.csv", lambda df: df.assign(slide_id="x", slide_uri="y")),
        "slide column(s) ['slide_id', 'slide_uri'] here and a slides.csv too; keep one",
    ),
    (
        _unlink("slides.csv"),
        "slides.csv|parquet: missing (or give slide_id, slide_uri in the clinical table)",
    ),
    (
        lambda r: _edit(r, "expression.csv", lambda df: df.iloc[:0]),
        "expression.csv column patient_id: no patient has expression (none of the 8 patient(s) "
        "of clinical.csv); the generator needs some",
    ),
    (
        lambda r: _edit(r, "expression.csv", lambda df: df.iloc[:3]),
        "clinical.csv column patient_id: 3 patient(s) with expression; the generator needs at "
        "least 4",
    ),
    (
        _set("expression.csv", 1, "G2", None),
        "expression.csv row 2, column G2: missing (NaN) expression value",
    ),
    (
        _set("expression.csv", 2, "G3", -3.0),
        "expression.csv row 3, column G3: negative value for expression_unit 'tpm'",
    ),
    (_set("expression.csv", 0, "G1", "high"), "expression.csv row 1, column G1: not a number"),
    (
        _drop("expression.csv", col="G3"),
        "expression.csv: 1 gene(s) of gene_panel.csv have no column here, e.g. ['G3']",
    ),
    (
        _write("gene_panel.csv", "gene,family\nG1,a\nG1,b\n"),
        "gene_panel.csv: gene panel: duplicate gene(s) ['G1']",
    ),
    (
        _write("gene_panel.csv", "name,group\nG1,a\n"),
        "gene_panel.csv: gene panel must start with the header 'gene,family'",
    ),
]


@pytest.mark.parametrize(("breakage", "line"), PROBLEMS)
def test_each_problem_is_one_line_naming_file_row_and_column(
    tmp_path: Path, breakage: Callable[[Path], None], line: str
) -> None:
    root = tmp_path / "c"
    _write_tables(root)
    assert validate_cohort(root, open_slides=False).ok  # the unbroken cohort is valid
    breakage(root)
    v = validate_cohort(root, open_slides=False)
    assert not v.ok
    assert any(line in got for got in v.lines()), v.lines()


def test_patients_without_expression_are_a_warning_of_the_inventory(tmp_path: Path) -> None:
    root = tmp_path / "c"
    _write_tables(root)
    _edit(root, "expression.csv", lambda df: df.drop(index=[1, 6]))
    v = validate_cohort(root, open_slides=False)
    assert v.ok, v.lines()
    assert v.cohort is not None and v.cohort.without_expression == ["P2", "P7"]
    assert list(v.cohort.expression.index) == ["P1", "P3", "P4", "P5", "P6", "P8"]
    r = CliRunner().invoke(main, ["cohort", "validate", str(root), "--no-open-slides"])
    assert r.exit_code == 0, r.output
    assert "  patients without expression: 2 (warning; e.g. ['P2', 'P7'])" in r.output
    full = tmp_path / "full"
    _write_tables(full)
    assert "without expression" not in load_cohort(full).inventory()
    assert load_cohort(full).digest != v.cohort.digest
    # a fold whose training part keeps too few patients with expression is a problem
    _edit(root, "clinical.csv", lambda df: df.assign(fold=[0, 0, 0, 0, 0, 1, 1, 1]))
    _edit(root, "expression.csv", lambda df: df[df["patient_id"].isin(["P1", "P3", "P4", "P5"])])
    lines = validate_cohort(root, open_slides=False).lines()
    assert lines == [
        "clinical.csv column fold: fold 0: its training part has 0 patient(s) with expression; "
        "the generator needs at least 4"
    ], lines


def test_every_problem_is_reported_at_once_and_training_stops_with_the_same_lines(
    tmp_path: Path,
) -> None:
    root = tmp_path / "c"
    _write_tables(root)
    _set("clinical.csv", 0, "grade", "mid")(root)
    _set("expression.csv", 1, "G2", None)(root)
    _drop("slides.csv", row=5)(root)
    lines = validate_cohort(root, open_slides=False).lines()
    assert len(lines) == 3, lines
    with pytest.raises(DataError) as e:
        load_training_data(root, tmp_path / "no-features")
    assert str(e.value).splitlines()[1:] == lines


def test_loaded_tables_are_normalised(tmp_path: Path) -> None:
    root = tmp_path / "c"
    _write_tables(root)
    raw = pd.read_csv(root / "expression.csv").set_index("patient_id")
    c = load_cohort(root)
    np.testing.assert_allclose(c.expression.to_numpy(), np.log2(raw.to_numpy() + 1.0))
    assert c.grade_classes == ("low", "high")
    assert c.clinical["grade_index"].tolist() == [1, 0, 1, 0, 1, 0, 1, 0]
    assert c.clinical["event"].tolist() == [True, False, False, True, False, False, True, False]
    assert c.covariates == ("age",) and c.slides_of("P3") == ["P3-A"]
    assert c.slide_uri("P3-A") == str((root / "slides" / "P3-A.tiff").resolve())
    folds = c.folds()  # none given: stratified, deterministic
    assert sorted(np.bincount(folds).tolist()) == [4, 4]
    np.testing.assert_array_equal(folds, load_cohort(root).folds())
    assert c.folds_possible() == 3  # 3 events


def test_numeric_grades_order_by_value_and_parquet_categories_by_their_order(
    tmp_path: Path,
) -> None:
    root = tmp_path / "c"
    _write_tables(root)
    (root / "cohort.toml").write_text('expression_unit = "tpm"\nfolds = 2\n')
    _edit(root, "clinical.csv", lambda df: df.assign(grade=[3, 10, 3, 10, 3, 10, 3, 10]))
    assert load_cohort(root).grade_classes == ("3", "10")  # by value, not as text
    clinical = pd.read_csv(root / "clinical.csv")
    clinical["grade"] = pd.Categorical(
        ["b", "a"] * 4, categories=["b", "a"], ordered=True
    )  # (a user's ordered categorical)
    clinical.to_parquet(root / "clinical.parquet")
    (root / "clinical.csv").unlink()
    assert load_cohort(root).grade_classes == ("b", "a")


def test_slide_files_missing_unreadable_or_without_mpp(tmp_path: Path) -> None:
    import tifffile

    root = tmp_path / "c"
    _write_tables(root)
    slides = root / "slides"
    slides.mkdir()
    rgb = np.full((512, 512, 3), 200, np.uint8)
    opts: dict = dict(tile=(256, 256), photometric="rgb", metadata=None)
    for i in range(1, 7):
        res = dict(resolution=(2e4, 2e4), resolutionunit="CENTIMETER")
        tifffile.imwrite(slides / f"P{i}-A.tiff", rgb, **opts, **res)
    tifffile.imwrite(slides / "P7-A.tiff", rgb, **opts)  # no physical resolution
    (slides / "P8-A.tiff").write_bytes(b"II*\x00 not really a tiff")
    lines = validate_cohort(root).lines()
    assert any("slides.csv row 7, column slide_uri:" in x and "records no MPP" in x for x in lines)
    assert any("slides.csv row 8, column slide_uri: unreadable slide" in x for x in lines)
    assert len(lines) == 2, lines
    _edit(root, "slides.csv", lambda df: df.assign(mpp=[None] * 6 + [0.5, None]))
    (slides / "P8-A.tiff").unlink()
    lines = validate_cohort(root).lines()
    assert len(lines) == 1 and "row 8, column slide_uri:" in lines[0], lines
    assert "no such slide file" in lines[0]
    assert validate_cohort(root, open_slides=False).ok


def test_cli_init_then_validate(tmp_path: Path) -> None:
    runner = CliRunner()
    out = tmp_path / "mine"
    r = runner.invoke(main, ["cohort", "init", str(out)])
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in out.iterdir()) == [
        "README.md",
        "clinical.csv",
        "cohort.toml",
        "expression.csv",
        "gene_panel.csv",
        "slides",
        "slides.csv",
    ]
    readme = (out / "README.md").read_text()
    for column in ("patient_id", "grade", "time", "event", "fold", "slide_uri", "mpp", "tpm"):
        assert f"{column}" in readme
    again = runner.invoke(main, ["cohort", "init", str(out)])
    assert (
        again.exit_code == 2
        and again.output.startswith("Error:")
        and "already holds" in (again.output)
    )
    empty = runner.invoke(main, ["cohort", "validate", str(out)])
    assert empty.exit_code == 2 and "clinical.csv: no patients" in empty.output
    assert empty.output.strip().splitlines()[-1].startswith("Error: 2 problem(s) in")
    assert "gene_panel.csv: gene panel is empty" in empty.output

    good = tmp_path / "good"
    _write_tables(good)
    ok = runner.invoke(main, ["cohort", "validate", str(good), "--no-open-slides"])
    assert ok.exit_code == 0, ok.output
    for words in (
        "patients 8, slides 8",
        "grade: low 4, high 4, unknown 0",
        "events: 3 of 8",
        "genes 3 in 2 families, expression tpm",
        "folds possible: up to 3",
    ):
        assert words in ok.output
    bad = runner.invoke(main, ["cohort", "validate", str(good)])  # slides are opened: absent
    assert bad.exit_code == 2 and bad.output.count("no such slide file") == 8
    missing = runner.invoke(main, ["cohort", "validate", str(tmp_path / "none")])
    assert missing.exit_code == 2 and "no such cohort folder" in missing.output


def test_command_line_settings_override_cohort_toml(tmp_path: Path) -> None:
    root = tmp_path / "c"
    _write_tables(root)
    (root / "cohort.toml").unlink()  # text grades and TPM values, undeclared
    runner = CliRunner()
    base = ["cohort", "validate", str(root), "--no-open-slides", "--folds", "2"]
    bare = runner.invoke(main, base)
    assert bare.exit_code == 2 and "grade" in bare.output
    r = runner.invoke(main, [*base, "--expression-unit", "tpm", "--grade-classes", "low, high"])
    assert r.exit_code == 0, r.output
    assert "grade: low 4, high 4" in r.output and "expression tpm" in r.output
    flipped = runner.invoke(
        main, [*base, "--expression-unit", "tpm", "--grade-classes", "high,low"]
    )
    assert "grade: high 4, low 4" in flipped.output
    same = runner.invoke(main, [*base, "--expression-unit", "", "--grade-classes", ""])
    assert same.output == bare.output  # empty: not given, as mlflow run passes it
    wrong = runner.invoke(main, [*base, "--expression-unit", "rpkm"])
    assert wrong.exit_code == 2 and "expected one of log2, z, tpm, fpkm, counts" in wrong.output
    one = runner.invoke(main, [*base, "--expression-unit", "tpm", "--grade-classes", "low"])
    assert one.exit_code == 2 and "options: grade_classes: expected at least two" in one.output
    data = load_cohort(root, settings={"expression_unit": "tpm", "grade_classes": ("low", "high")})
    np.testing.assert_allclose(
        data.expression.to_numpy(),
        np.log2(pd.read_csv(root / "expression.csv").set_index("patient_id").to_numpy() + 1.0),
    )
    for command in (["evaluate"], ["train", "generator"], ["train", "fusion"]):
        helped = runner.invoke(main, [*command, "--help"])
        assert "--expression-unit" in helped.output and "--grade-classes" in helped.output


def test_settings_are_strict_and_round_trip() -> None:
    from pathgen_batch.cohort import parse_settings

    s = CohortSettings(expression_unit="counts", grade_classes=('a "1"', "b"), folds=3, seed=4)
    assert parse_settings(s.to_toml()) == s
    with pytest.raises(ConfigError, match="expression_unit"):
        parse_settings('expression_unit = "rpkm"')
    with pytest.raises(ConfigError, match="at least two distinct"):
        CohortSettings(grade_classes=("a", "a"))
    with pytest.raises(ConfigError, match="not valid TOML"):
        parse_settings("folds = ")


# -- a real-world-shaped cohort --------------------------------------------------------------


def _without_mpp(src: Path, dst: Path) -> None:
    """The slide's level 0 as a tiled TIFF that records no physical resolution."""
    import tifffile

    from pathgen_batch.slides import open_slide

    with open_slide(src) as s:
        rgb = s.read_region((0, 0), 0, s.dimensions)
    tifffile.imwrite(dst, rgb, tile=(256, 256), photometric="rgb", metadata=None)


@pytest.fixture(scope="module")
def real_world(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """(semi-synthetic cohort, the same as a user would give it, its features).

    The user's version: no cohort.json, no composition, clinical as CSV without folds, a
    slides table where a third of the patients have a second slide, 10% of grades and 10% of
    outcomes missing, expression in TPM.
    """
    base = tmp_path_factory.mktemp("real-world")
    semi = build_cohort(
        base / "semi", CohortConfig(n_patients=30, slide_px=768, levels=2, folds=2), workers=1
    )
    feats = base / "features"
    extract_cohort(semi.root, feats, build_encoder("stain-texture", device="cpu"))
    user = base / "user"
    (user / "wsi").mkdir(parents=True)
    clinical = pd.read_parquet(Path(semi.root) / "clinical.parquet")
    rows = []
    for i, (pid, sid) in enumerate(zip(clinical["patient_id"], clinical["slide_id"], strict=True)):
        shutil.copy(Path(semi.root) / "slides" / f"{sid}.tiff", user / "wsi" / f"{sid}.tiff")
        rows.append({"patient_id": pid, "slide_id": sid, "slide_uri": f"wsi/{sid}.tiff"})
        if i % 3 == 0:  # a second slide: the first one's tiles, under another id
            second = f"{pid}-S2"
            row = {"patient_id": pid, "slide_id": second, "slide_uri": f"wsi/{second}.tiff"}
            if i == 0:  # a scan that records no MPP: the table gives it
                _without_mpp(user / "wsi" / f"{sid}.tiff", user / "wsi" / f"{second}.tiff")
                row["mpp"] = 0.5
            else:
                shutil.copy(user / "wsi" / f"{sid}.tiff", user / "wsi" / f"{second}.tiff")
            rows.append(row)
            sf = read_slide_features(feature_file(feats, sid))
            write_slide_features(dataclasses.replace(sf, slide_id=second), feats)
    pd.DataFrame(rows).to_csv(user / "slides.csv", index=False)
    clinical = clinical.drop(columns=["slide_id", "slide_uri", "fold"])
    clinical.loc[[1, 11, 21], "grade"] = None
    clinical["event"] = clinical["event"].astype(object)
    clinical.loc[[2, 12, 22], ["time", "event"]] = None
    clinical.to_csv(user / "clinical.csv", index=False)
    expr = pd.read_parquet(Path(semi.root) / "expression.parquet")
    genes = [c for c in expr.columns if c != "patient_id"]
    expr[genes] = np.exp2(expr[genes]) - 1.0
    expr.to_csv(user / "expression.csv", index=False)
    shutil.copy(Path(semi.root) / "gene_panel.csv", user / "gene_panel.csv")
    grade_classes = ", ".join(f'"{g}"' for g in semi.grade_classes)
    (user / "cohort.toml").write_text(
        f'expression_unit = "tpm"\ngrade_classes = [{grade_classes}]\nfolds = 2\n'
    )
    return Path(semi.root), user, feats


@pytest.mark.slow
def test_a_real_world_shaped_cohort_validates(real_world: tuple[Path, Path, Path]) -> None:
    semi_root, user, _ = real_world
    r = CliRunner().invoke(main, ["cohort", "validate", str(user)])
    assert r.exit_code == 0, r.output
    assert "patients 30, slides 40 (1 slide(s): 20, 2 slide(s): 10)" in r.output
    assert "(3 unknown)" in r.output  # outcomes
    assert "expression tpm (log2(x + 1))" in r.output
    semi, mine = load_cohort(semi_root), load_cohort(user)
    np.testing.assert_allclose(mine.expression.to_numpy(), semi.expression.to_numpy(), atol=1e-9)
    first = mine.patient_ids[0]
    assert mine.slides_of(first) == [f"{first}-S1", f"{first}-S2"]
    assert mine.clinical["grade"].isna().sum() >= 3 and "fold" not in mine.covariates


@pytest.mark.slow
def test_the_slides_table_gives_the_mpp_of_a_scan_without_one(
    real_world: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    _, user, _ = real_world
    second = f"{load_cohort(user).patient_ids[0]}-S2"
    res = extract_cohort(
        user, tmp_path / "f", build_encoder("stain-texture", device="cpu"), slide_ids=[second]
    )
    assert res[0].status == "done" and res[0].n_tiles > 0
    extraction = read_slide_features(feature_file(tmp_path / "f", second)).extraction
    assert extraction["mpp_override"] == 0.5 and extraction["mpp_source"] == "override"
    copy = tmp_path / "no-mpp"
    shutil.copytree(user, copy)
    _edit(copy, "slides.csv", lambda df: df.drop(columns=["mpp"]))
    lines = validate_cohort(copy).lines()
    assert len(lines) == 1 and "row 2, column slide_uri:" in lines[0], lines
    assert "the slide records no MPP; give it in column mpp" in lines[0]


@pytest.mark.slow
def test_a_real_world_shaped_cohort_loads_for_training(
    real_world: tuple[Path, Path, Path],
) -> None:
    _, user, feats = real_world
    data = load_training_data(user, feats)
    assert data.n_patients == 30 and sum(len(s) for s in data.slides) == 40
    first = data.patient_ids[0]
    assert data.slides[0] == (f"{first}-S1", f"{first}-S2")
    one = read_slide_features(feature_file(feats, f"{first}-S1"))
    n = len(one.feats)
    assert data.bags[0].shape == (2 * n, one.feats.shape[1])  # the union of both slides' tiles
    np.testing.assert_array_equal(data.bags[0][:n], one.feats)
    np.testing.assert_array_equal(data.tile_slides[0], np.repeat([0, 1], n))
    np.testing.assert_array_equal(data.coords[0][n:], one.coords)
    assert len(data.slides[1]) == 1 and data.tile_slides[1].max() == 0
    assert (data.grade[[1, 11, 21]] == -1).all()
    assert np.isnan(data.time[[2, 12, 22]]).all() and not data.event[[2, 12, 22]].any()
    assert data.outcome_known.sum() == 27
    assert sorted(np.bincount(data.folds).tolist()) == [15, 15]  # made: none were given
    sub = data.subset([0, 2])
    assert sub.slides == (data.slides[0], data.slides[2])
    np.testing.assert_array_equal(sub.tile_slides[0], data.tile_slides[0])
    check_training_part(data, np.arange(30), "all patients")  # unknown labels are allowed

    # a fusion model trains on them: time bins from the known outcomes only
    tr, va = np.arange(0, 30, 2), np.arange(1, 30, 2)
    with threads(1):
        fus = train_predictor(data, tr, va, FUS)
    known = tr[data.outcome_known[tr]]
    assert len(known) < len(tr)
    np.testing.assert_array_equal(
        fus.bin_edges, fit_bin_edges(data.time[known], data.event[known].astype(int), FUS.n_bins)
    )
    history = fus.provenance["history"]
    assert all(math.isfinite(v) for v in history["train_loss"] + history["val_loss"])


def test_unknown_outcomes_and_grades_leave_their_loss_hand_computed() -> None:
    # K = 2 bins, hazard logit 0 -> h = 0.5 in every bin; 2 grade classes
    out = FusionOutput(
        hazard_logits=torch.zeros(2, 2),
        grade_logits=torch.tensor([[math.log(3.0), 0.0], [0.0, 0.0]]),
        attention=None,
    )
    bins = torch.tensor([1, -1])  # the second patient's outcome is unknown
    censored = torch.tensor([False, True])
    grade = torch.tensor([0, 1])
    # survival: patient 0 only, event in bin 1: -(log S_0 + log h_1) = 2 log 2;
    # grade: mean of -log(3/4) and -log(1/2)
    nll = 2.0 * math.log(2.0)
    ce = (-math.log(0.75) - math.log(0.5)) / 2.0
    got = prediction_loss(out, bins, censored, grade, 0.3, 0.7)
    assert got.item() == pytest.approx(0.3 * nll + 0.7 * ce, rel=1e-6)
    no_outcome = prediction_loss(out, torch.tensor([-1, -1]), censored, grade, 0.3, 0.7)
    assert no_outcome.item() == pytest.approx(0.7 * ce, rel=1e-6)
    nothing = prediction_loss(out, torch.tensor([-1, -1]), censored, torch.tensor([-1, -1]), 1, 1)
    assert nothing.item() == 0.0


def test_init_refuses_a_file_in_the_way(tmp_path: Path) -> None:
    (tmp_path / "x").write_text("")
    with pytest.raises(ConfigError, match="not a folder"):
        init_cohort(tmp_path / "x")


@pytest.mark.servers
def test_a_cohort_on_s3_validates_and_names_a_missing_slide_object(
    s3_server, s3_bucket: str, tmp_path: Path
) -> None:
    local = tmp_path / "c"
    _write_tables(local)
    client = s3_server.client()
    for p in local.iterdir():
        client.put_object(Bucket=s3_bucket, Key=f"cohort/{p.name}", Body=p.read_bytes())
    for i in range(1, 8):  # every slide object but P8's
        client.put_object(Bucket=s3_bucket, Key=f"cohort/slides/P{i}-A.tiff", Body=b"x")
    root = f"s3://{s3_bucket}/cohort"
    lines = validate_cohort(root).lines()
    assert lines == [f"slides.csv row 8, column slide_uri: {root}/slides/P8-A.tiff: no such "
                     "slide object"]  # fmt: skip
    c = load_cohort(root)
    assert c.slide_uri("P3-A") == f"{root}/slides/P3-A.tiff" and c.n_patients == 8
    np.testing.assert_allclose(c.expression.to_numpy(), load_cohort(local).expression.to_numpy())
    with pytest.raises(DataError, match="in object storage, not a local file"):
        c.slide_path("P3-A")


@pytest.mark.slow
@pytest.mark.servers
def test_a_real_world_shaped_cohort_trains_and_registers_through_mlflow_run(
    real_world: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    import json

    from mlflow_runs import env, mlflow_run
    from tiny_training import TINY_CV

    from pathgen_batch.config import to_dict
    from pathgen_batch.registry import (
        RegistryConfig,
        default_tracking_uri,
        open_store,
        resolve_version,
    )

    _, user, feats = real_world
    ws = tmp_path / "ws"
    store = open_store(RegistryConfig(workspace=str(ws), tracking_uri=default_tracking_uri(ws)))
    store.experiment_id()
    environ = env(store.tracking_uri)
    config = tmp_path / "cv.json"
    config.write_text(json.dumps(to_dict(TINY_CV)))
    common = {"cohort": user, "features": feats, "config": config, "epochs": 1, "workspace": ws}
    gen = tmp_path / "generator"
    gen_run = mlflow_run("train_generator", common | {"out": gen}, environ)
    fus_run = mlflow_run(
        "train_fusion", common | {"generator": gen, "out": tmp_path / "f"}, environ
    )
    assert resolve_version(store, "pathgen-generator", "1").run_id == gen_run
    assert resolve_version(store, "pathgen-fusion", "1").run_id == fus_run
    run = store.client.get_run(fus_run)
    assert run.info.status == "FINISHED" and run.data.params["calibrated_with"] == str(gen)
    manifest = json.loads((tmp_path / "f" / "bundle.json").read_text())
    assert manifest["grade_classes"] == list(load_cohort(user).grade_classes)


def test_gene_families_are_ward_clusters_of_the_gene_correlation() -> None:
    from scipy.cluster.hierarchy import cut_tree, linkage

    from pathgen_batch.omics import GenePanel, cluster_families, with_clustered_families

    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 24)) + np.repeat(rng.normal(size=(60, 4)), 6, axis=1)  # 4 blocks
    ref = cut_tree(linkage(np.corrcoef(x.T), method="ward"), n_clusters=4).ravel()
    first = {c: i for i, c in enumerate(dict.fromkeys(ref.tolist()))}
    got = cluster_families(x, 4)
    np.testing.assert_array_equal(got, [first[c] for c in ref])
    np.testing.assert_array_equal(got, np.repeat(np.arange(4), 6))  # the blocks, found
    bare = GenePanel.parse("gene\n" + "".join(f"G{i}\n" for i in range(24)))
    assert bare.needs_families and bare.n_genes == 24
    assert GenePanel.parse("gene,family\nA,\nB,\n").needs_families
    with pytest.raises(DataError, match="empty family"):
        GenePanel.parse("gene,family\nA,x\nB,\n")
    panel = with_clustered_families(bare, x, n_families=4)
    assert panel.family_names == ("family_1", "family_2", "family_3", "family_4")
    assert panel.family_sizes == (6, 6, 6, 6) and not panel.needs_families
    named = GenePanel.parse("gene,family\nA,x\nB,y\n")
    assert with_clustered_families(named, x[:, :2]) is named
    with pytest.raises(DataError, match="constant expression"):
        cluster_families(np.ones((5, 3)), 2)


def test_a_panel_without_families_validates(tmp_path: Path) -> None:
    root = tmp_path / "c"
    _write_tables(root)
    (root / "gene_panel.csv").write_text("gene\nG1\nG2\nG3\n")
    r = CliRunner().invoke(main, ["cohort", "validate", str(root), "--no-open-slides"])
    assert r.exit_code == 0, r.output
    assert "genes 3 in 3 families clustered on each training fold" in r.output


@pytest.mark.slow
def test_families_are_clustered_on_the_training_patients_and_stored_with_the_models(
    real_world: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    from tiny_training import GEN

    from pathgen_batch.inference.bundle import load_bundle, save_generator
    from pathgen_batch.omics import with_clustered_families
    from pathgen_batch.training.trainers import train_generator

    _, user, feats = real_world
    mine = tmp_path / "no-families"
    shutil.copytree(user, mine)
    genes = pd.read_csv(user / "gene_panel.csv")["gene"]
    (mine / "gene_panel.csv").write_text("gene\n" + "".join(f"{g}\n" for g in genes))
    (mine / "cohort.toml").write_text((user / "cohort.toml").read_text() + "n_families = 3\n")
    data = load_training_data(mine, feats)
    assert data.panel.needs_families and data.n_families == 3
    tr, va = np.arange(0, 30, 2), np.arange(1, 30, 2)
    with threads(1):
        gen = train_generator(data, tr, va, dataclasses.replace(GEN, epochs=1))
        fus = train_predictor(data, tr, va, FUS)
    want = with_clustered_families(data.panel, data.expression[tr], 3)
    assert gen.panel == want == fus.panel and gen.panel.n_families == 3
    assert want != with_clustered_families(data.panel, data.expression[va], 3)  # fold-specific
    save_generator(gen, tmp_path / "gen")
    assert load_bundle(tmp_path / "gen").panel == want  # stored with the model
