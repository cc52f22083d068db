"""The HTML report: pictures exist and render, heatmaps sit on tissue, outcome statistics match
hand-computed values, errors are one line, and the page renders in headless Chromium."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from output_fixtures import CONTRACT, LIN, runs_row
from PIL import Image
from scipy import stats

from pathgen_batch.cli import main
from pathgen_batch.cli.report import report
from pathgen_batch.inference.fusion import RiskCuts
from pathgen_batch.report import attention_map, blend, confusion_matrix, survival_summary
from pathgen_batch.report.build import write_report
from pathgen_batch.slides import TileSpec, open_slide, tile_grid, tissue_mask
from pathgen_batch.synth import write_pyramidal_tiff
from pathgen_batch.tables import (
    PREDICTIONS,
    RUNS,
    THUMBNAILS,
    TILE_ATTENTION,
    TRANSCRIPTOMES,
    attention_table,
    partition_uri,
    prediction_record,
    records_table,
    thumbnail_table,
    transcriptome_table,
)
from pathgen_batch.tables.io import write_table

CLASSES = ["well differentiated", "intermediate", "poorly differentiated"]
GENES = ["G1", "G2", "G3", "G4", "G5"]
FAMILIES = ["immune", "immune", "stroma", "stroma", "stroma"]
RUN = "run-a"
W0, H0 = 1536, 1024  # level-0 size of every test slide
# tissue boxes (x0, y0, x1, y1) in level-0 px, deliberately off-centre so a swapped or
# mis-scaled heatmap would fall on glass
BOXES = [(64, 64, 832, 576), (640, 384, 1472, 960), (128, 512, 1024, 1000), (896, 32, 1500, 600)]
RISKS = [-1.0, -3.5, -2.0, -2.8]  # slide order by risk, highest first: S0, S2, S3, S1
TIME = [2.0, 9.0, 4.0, 7.0]
EVENT = [True, False, True, True]
CUTS = RiskCuts((0.5,), (-2.4,), 20)  # a median split: S0, S2 high; S1, S3 low


def _chromium() -> str | None:
    for name in ("/usr/bin/chromium", "chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    return None


def _slide_rgb(box: tuple[int, int, int, int], he: np.ndarray) -> np.ndarray:
    rgb = np.full((H0, W0, 3), 245, dtype=np.uint8)  # (H0, W0, 3) glass
    x0, y0, x1, y1 = box
    rgb[y0:y1, x0:x1] = he[: y1 - y0, : x1 - x0]
    return rgb


def _hazards(risk: float) -> np.ndarray:
    h = np.full(4, 0.2)
    h[0] = min(0.9, 0.2 + 0.15 * (risk + 4))
    return h


@pytest.fixture(scope="module")
def scored(tmp_path_factory: pytest.TempPathFactory, he_sources: tuple[Path, Path]) -> dict:
    root = tmp_path_factory.mktemp("report")
    out = str(root / "scores")
    he = np.array(Image.open(he_sources[1]).convert("RGB"))  # (1000, 1000, 3) real H&E
    he = np.tile(he, (2, 2, 1))  # (2000, 2000, 3)
    rng = np.random.default_rng(0)
    preds, atts, txs, thumbs, masks = [], [], [], [], {}
    for k, box in enumerate(BOXES):
        sid, pid = f"S{k}", f"P{k}"
        path = root / f"{sid}.tiff"
        write_pyramidal_tiff(path, _slide_rgb(box, he), mpp=0.5, levels=2, downsample=4)
        with open_slide(path) as s:
            mask = tissue_mask(s)
            grid = tile_grid(s, TileSpec(tile_px=128, mpp=0.5, min_tissue=0.5), mask)
            picture = s.thumbnail(1024)  # as the encoder stage stores it
        masks[sid] = mask
        thumbs.append(thumbnail_table(sid, picture, (W0, H0), 0.5, mask.mask, None, LIN))
        att = rng.dirichlet(np.ones(len(grid)), size=2)  # (F=2, N)
        atts.append(
            attention_table(
                sid, grid.x, grid.y, grid.size_l0, 128, 0.5, ["immune", "stroma"], att, LIN
            )
        )
        probs = np.roll([0.6, 0.3, 0.1], k % 3)
        preds.append(
            prediction_record(
                slide_id=sid,
                source_uri=str(path),
                patient_id=pid,
                n_tiles=len(grid),
                slide_mpp=0.5,
                mpp_source="tiff",
                grade_classes=CLASSES,
                grade_probs=probs,
                grade_set=probs >= 0.3,
                grade_set_alpha=0.1,
                bin_edges=np.array([0.0, 2.0, 4.0, 8.0, np.inf]),
                hazards=_hazards(RISKS[k]),
                risk=RISKS[k],
                risk_lo=RISKS[k] - 0.5,
                risk_hi=RISKS[k] + 0.5,
                risk_interval_alpha=0.1,
                risk_cuts=CUTS,
                gene_panel_digest="sha256:p",
                lineage=LIN,
            )
        )
        mean = np.arange(5, dtype=float) + k * np.array([1.0, -1.0, 0.5, 2.0, 0.0])
        txs.append(transcriptome_table(sid, GENES, FAMILIES, "sha256:p", mean, mean * 0, 8, LIN))
    import pyarrow as pa

    write_table(
        partition_uri(out, "predictions", RUN),
        records_table(preds, "predictions"),
        PREDICTIONS,
        RUN,
    )
    write_table(
        partition_uri(out, "tile_attention", RUN), pa.concat_tables(atts), TILE_ATTENTION, RUN
    )
    write_table(
        partition_uri(out, "transcriptomes", RUN), pa.concat_tables(txs), TRANSCRIPTOMES, RUN
    )
    write_table(partition_uri(out, "thumbnails", RUN), pa.concat_tables(thumbs), THUMBNAILS, RUN)
    for path in root.glob("S*.tiff"):  # the report needs the tables only
        path.unlink()
    run_row = runs_row(
        out,
        archive=str(root),
        n_scored=4,
        n_tiles=100,
        timings_json='{"score": 1.5}',
        config_json='{"batch_size": 8}',
        code_version="0.1",
    )
    write_table(
        partition_uri(out, "runs", RUN),
        records_table([run_row], "runs"),
        RUNS,
        RUN,
        name="run.parquet",
    )
    clinical = root / "clinical.csv"
    pd.DataFrame(
        {
            "patient_id": [f"P{k}" for k in range(4)],
            "time": TIME,
            "event": EVENT,
            "grade": [
                "well differentiated",
                "intermediate",
                "intermediate",
                "poorly differentiated",
            ],
        }
    ).to_csv(clinical, index=False)
    expression = root / "expression.parquet"
    real = {g: [float(k * (j + 1) % 4) for k in range(4)] for j, g in enumerate(GENES)}
    pd.DataFrame({"patient_id": [f"P{k}" for k in range(4)], **real}).to_parquet(expression)
    html_dir = root / "html"
    index = write_report(out, html_dir, clinical=str(clinical), expression=str(expression))
    return {"out": out, "index": index, "masks": masks, "root": root}


def _image_refs(index: Path) -> list[str]:
    return re.findall(r'<img src="([^"]+)"', index.read_text(encoding="utf-8"))


# -- the page -------------------------------------------------------------------------------
def test_every_referenced_image_exists_and_renders(scored: dict) -> None:
    index: Path = scored["index"]
    text = index.read_text(encoding="utf-8")
    refs = _image_refs(index)
    # cohort: risk, grades, km, confusion, fidelity; per slide: thumb, 2 families, grade probs
    assert len(refs) == 5 + 4 * 4
    assert not re.search(r"(src|href)=\"(https?:)?//", text)  # offline: no external URLs
    for ref in refs:
        assert ref.startswith("img/")
        path = index.parent / ref
        assert path.is_file(), ref
        with Image.open(path) as im:
            im.load()
            arr = np.asarray(im.convert("RGB"), dtype=np.float64)
        assert arr.shape[0] > 20 and arr.shape[1] > 20
        assert arr.std() > 5.0, f"{ref} is blank"
    for slide in ("S0", "S1", "S2", "S3"):
        assert slide in text
    assert "pathgen-fusion version 7" in text and CONTRACT.digest in text
    assert "log-rank" in text and "Harrell" in text


def test_slides_are_ordered_by_risk_and_limited(scored: dict, tmp_path: Path) -> None:
    text = scored["index"].read_text(encoding="utf-8")
    heads = re.findall(r'<h3 id="slide-\d+">\d+\. (S\d)</h3>', text)
    assert heads == ["S0", "S2", "S3", "S1"]
    from pathgen_batch.report import ReportConfig

    small = write_report(scored["out"], tmp_path / "r", config=ReportConfig(slides=1))
    assert re.findall(r'<h3 id="slide-\d+">\d+\. (S\d)</h3>', small.read_text()) == ["S0"]


def test_heatmap_lies_on_the_tissue(scored: dict) -> None:
    img = scored["index"].parent / "img"
    for i, sid in enumerate(["S0", "S2", "S3", "S1"]):
        thumb = np.asarray(Image.open(img / f"slide{i:03d}_thumb.png").convert("RGB"), np.int16)
        mask = scored["masks"][sid].mask  # (h, w) bool at the mask's own scale
        h, w = thumb.shape[:2]
        tissue = np.asarray(Image.fromarray(mask).resize((w, h), Image.Resampling.NEAREST))
        box = np.zeros((h, w), dtype=bool)
        x0, y0, x1, y1 = BOXES[int(sid[1:])]
        t = 128  # one tile (level-0 px): a kept tile reaches at most this far past the tissue
        x0, y0, x1, y1 = max(0, x0 - t), max(0, y0 - t), x1 + t, y1 + t
        box[round(y0 * h / H0) : round(y1 * h / H0), round(x0 * w / W0) : round(x1 * w / W0)] = 1
        for f in range(2):
            over = np.asarray(Image.open(img / f"slide{i:03d}_attn{f:02d}.png").convert("RGB"))
            drawn = np.abs(over.astype(np.int16) - thumb).max(axis=2) > 6  # (h, w)
            assert drawn.sum() > 0.3 * (box & tissue).sum(), f"{sid}: too little attention"
            # kept tiles are >= 50% tissue, so most (not all) drawn pixels are tissue; the
            # same picture flipped (a wrong axis or origin) lands mostly on glass
            assert (drawn & tissue).sum() / drawn.sum() > 0.75, f"{sid}: attention off tissue"
            assert (drawn[::-1, ::-1] & tissue).sum() / drawn.sum() < 0.5
            assert (drawn & box).sum() / drawn.sum() > 0.99, f"{sid}: attention off the box"


# -- pieces against hand-computed values ----------------------------------------------------
def test_attention_map_scales_level0_boxes_to_the_thumbnail() -> None:
    # a 1000 x 500 slide drawn at 100 x 50: 10 level-0 px per thumbnail px
    amap = attention_map(
        np.array([100, 500]),
        np.array([200, 0]),
        100,
        np.array([0.25, 0.75]),
        (1000, 500),
        (50, 100),
    )
    want = np.zeros((50, 100))
    want[20:30, 10:20] = 0.25
    want[0:10, 50:60] = 0.75
    np.testing.assert_array_equal(amap, want)
    img = np.full((50, 100, 3), 200, dtype=np.uint8)
    out = blend(img, amap, alpha=0.5)
    np.testing.assert_array_equal(out[amap == 0], img[amap == 0])
    assert (np.abs(out.astype(int) - 200).max(axis=2)[amap > 0] > 0).all()


def test_survival_summary_by_hand() -> None:
    # group a: events at 1 and 3, group b: event at 2, censored at 4.
    time = np.array([1.0, 3.0, 2.0, 4.0])
    event = np.array([1, 1, 1, 0])
    groups = np.array(["high", "high", "low", "low"], dtype=object)
    risk = np.array([2.0, 1.8, 1.5, 0.0])
    s = survival_summary(time, event, risk, groups, "risk_group")
    high, low = s.curves
    assert high.group == "high" and low.group == "low"
    np.testing.assert_allclose(high.time, [0, 1, 3])
    np.testing.assert_allclose(high.survival, [1, 0.5, 0.0])
    np.testing.assert_allclose(low.time, [0, 2, 4])  # censored at 4: the curve stays at 0.5
    np.testing.assert_allclose(low.survival, [1, 0.5, 0.5])
    # log-rank by hand: t=1: n=4, d=1, n_high=2 -> E=0.5, V=2*2*1*3/(16*3)=0.25
    # t=2: n=3, d=1, n_high=1 -> E=1/3, V=1*2*1*2/(9*2)=2/9; t=3: n=2, d=1, n_high=1 -> E=0.5,
    # V=1*1*1*1/(4*1)=0.25. O_high=2, E_high=4/3, V=13/18 -> chi2=(2/3)^2/(13/18)=8/13
    chi2 = (2 - (0.5 + 1 / 3 + 0.5)) ** 2 / (0.25 + 2 / 9 + 0.25)
    assert s.logrank_chi2 == pytest.approx(chi2)
    assert s.logrank_p == pytest.approx(stats.chi2.sf(chi2, 1))
    # comparable pairs (i had the event first): (0,1) (0,2) (0,3) (2,1) (2,3) (1,3);
    # concordant when risk_i > risk_j: all but (2,1) (1.5 < 1.8) -> 5/6
    assert s.c_index == pytest.approx(5 / 6)


def test_confusion_matrix_by_hand() -> None:
    cm = confusion_matrix(np.array([0, 1, 1, 2, -1]), np.array([0, 1, 2, 2, 0]), 3)
    np.testing.assert_array_equal(cm, [[1, 0, 0], [0, 1, 1], [0, 0, 1]])


# -- the command ----------------------------------------------------------------------------
def _cli() -> CliRunner:
    if "report" not in main.commands:
        main.add_command(report)
    return CliRunner()


def test_cli_writes_the_report(scored: dict, tmp_path: Path) -> None:
    res = _cli().invoke(
        main, ["report", scored["out"], "--run", RUN, "--slides", "2", "--out", str(tmp_path / "o")]
    )
    assert res.exit_code == 0, res.output
    assert (tmp_path / "o" / "index.html").is_file()
    assert len(list((tmp_path / "o" / "img").glob("slide*_thumb.png"))) == 2


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("missing", "no such folder"),
        ("empty", "no complete scoring runs"),
        ("unknown", "'nope': not a complete run"),
    ],
)
def test_cli_errors_are_one_line(scored: dict, tmp_path: Path, case: str, message: str) -> None:
    root = {"missing": str(tmp_path / "nowhere"), "empty": str(tmp_path), "unknown": scored["out"]}
    args = ["report", root[case], "--out", str(tmp_path / "o")]
    if case == "unknown":
        args += ["--run", "nope"]
    res = _cli().invoke(main, args)
    assert res.exit_code == 2
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and message in lines[0], res.output


def test_cli_help() -> None:
    res = _cli().invoke(main, ["report", "--help"])
    assert res.exit_code == 0 and "--clinical" in res.output and "--expression" in res.output


# -- headless Chromium ----------------------------------------------------------------------
def test_page_renders_in_headless_chromium(scored: dict, tmp_path: Path) -> None:
    exe = _chromium()
    if exe is None:
        pytest.skip(
            "chromium not installed; enable with `apt-get install -y --no-install-recommends "
            "chromium` (Debian)"
        )
    shot = tmp_path / "shot.png"
    cmd = [
        exe,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path / 'profile'}",
        f"--screenshot={shot}",
        "--window-size=1280,2000",
        scored["index"].resolve().as_uri(),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0 and shot.is_file(), proc.stderr[-2000:]
    with Image.open(shot) as im:
        arr = np.asarray(im.convert("RGB"), dtype=np.float64)
    assert arr.shape[:2] == (2000, 1280)
    assert arr.std() > 10.0  # not blank: text, charts and slides drawn
    assert (arr.mean(axis=2) < 200).mean() > 0.02  # a visible share of the page is not white


def test_folder_archive_slides_get_patient_ids_from_the_clinical_table():
    from pathgen_batch.report.data import fill_patient_ids

    preds = pd.DataFrame({"slide_id": ["S1", "S2", "S3"], "patient_id": [None, "Q2", None]})
    clinical = pd.DataFrame({"slide_id": ["S1", "S2", "S9"], "patient_id": ["P1", "P2", "P9"]})
    assert fill_patient_ids(preds, clinical) == 1
    assert preds["patient_id"].tolist()[:2] == ["P1", "Q2"]  # known ids are kept
    assert pd.isna(preds["patient_id"].iloc[2])  # no clinical row: stays unknown
