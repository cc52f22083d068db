"""``pathgen-batch export``: GeoJSON tiles for QuPath and heatmap overlays, from the tables only."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from output_fixtures import LIN, runs_row
from PIL import Image

from pathgen_batch.cli import main
from pathgen_batch.inference.fusion import RiskCuts
from pathgen_batch.report.export import load_slide, overlay_image, slide_geojson
from pathgen_batch.tables import (
    PREDICTIONS,
    RUNS,
    THUMBNAILS,
    TILE_ATTENTION,
    attention_table,
    partition_uri,
    prediction_record,
    records_table,
    thumbnail_table,
)
from pathgen_batch.tables.io import write_table

W0, H0 = 800, 400  # level-0 extent
SIZE = 100  # tile side, level-0 px
# three tiles (x, y) and their attention per family (each family sums to 1)
XY = [(0, 0), (300, 100), (600, 200)]
ATT = np.array([[0.2, 0.3, 0.5], [0.6, 0.3, 0.1]])  # (F=2, N=3)


def _run_row(out: str, run: str, finished: str) -> dict:
    return runs_row(out, archive="s3://bucket/slides", finished_at=finished)


def _write_run(out: str, run: str, risk: float, finished: str, thumbnail: bool) -> None:
    x = np.array([p[0] for p in XY])
    y = np.array([p[1] for p in XY])
    rec = prediction_record(
        slide_id="S1",
        source_uri="s3://bucket/slides/S1.svs",  # never read: the export needs the tables only
        patient_id="P1",
        n_tiles=3,
        slide_mpp=0.5,
        mpp_source="aperio.MPP",
        grade_classes=["G1", "G2"],
        grade_probs=np.array([0.25, 0.75]),
        grade_set=None,
        grade_set_alpha=None,
        bin_edges=np.array([0.0, 5.0, math.inf]),
        hazards=np.array([0.3, 0.4]),
        risk=risk,
        risk_lo=risk - 0.1,
        risk_hi=risk + 0.1,
        risk_interval_alpha=0.1,
        risk_cuts=RiskCuts((1 / 3, 2 / 3), (-1.5, -1.0), 30),
        gene_panel_digest="sha256:p",
        lineage=LIN,
    )
    write_table(
        partition_uri(out, "predictions", run),
        records_table([rec], "predictions"),
        PREDICTIONS,
        run,
    )
    att = attention_table("S1", x, y, SIZE, 128, 0.5, ["immune", "stroma"], ATT, LIN)
    write_table(partition_uri(out, "tile_attention", run), att, TILE_ATTENTION, run)
    if thumbnail:
        img = np.full((100, 200, 3), 230, dtype=np.uint8)  # a 200 x 100 picture of the slide
        mask = np.zeros((50, 100), dtype=bool)
        mask[:, :60] = True
        thumb = thumbnail_table("S1", img, (W0, H0), 0.5, mask, None, LIN)
        write_table(partition_uri(out, "thumbnails", run), thumb, THUMBNAILS, run)
    write_table(
        partition_uri(out, "runs", run),
        records_table([_run_row(out, run, finished)], "runs"),
        RUNS,
        run,
        name="run.parquet",
    )


@pytest.fixture()
def written(tmp_path: Path) -> str:
    out = str(tmp_path / "scores")
    _write_run(out, "old", -2.0, "2025-01-01T01:00:00+00:00", thumbnail=False)
    _write_run(out, "new", -0.5, "2025-01-02T01:00:00+00:00", thumbnail=True)
    return out


def test_geojson_has_one_polygon_per_tile_in_level0_px(written: str, tmp_path: Path) -> None:
    out = tmp_path / "S1.geojson"
    res = CliRunner().invoke(
        main, ["export", "geojson", written, "--slide", "S1", "--out", str(out)]
    )
    assert res.exit_code == 0, res.output
    doc = json.loads(out.read_text())
    assert doc["type"] == "FeatureCollection" and len(doc["features"]) == len(XY)
    by_corner = {tuple(f["geometry"]["coordinates"][0][0]): f for f in doc["features"]}
    for i, (x, y) in enumerate(XY):
        f = by_corner[(x, y)]
        ring = f["geometry"]["coordinates"][0]
        assert f["geometry"]["type"] == "Polygon"
        assert ring == [[x, y], [x + SIZE, y], [x + SIZE, y + SIZE], [x, y + SIZE], [x, y]]
        # RFC 7946: exterior rings counter-clockwise (positive shoelace area in x, y)
        area = sum(a[0] * b[1] - b[0] * a[1] for a, b in itertools.pairwise(ring))
        assert area == 2 * SIZE * SIZE
        props = f["properties"]
        assert props["objectType"] == "tile"
        m = props["measurements"]
        assert m["attention immune"] == pytest.approx(ATT[0, i])
        assert m["attention stroma"] == pytest.approx(ATT[1, i])
        assert m["slide risk"] == pytest.approx(-0.5)  # the latest run that scored the slide
        assert m["slide P(grade G2)"] == pytest.approx(0.75)
        assert all(isinstance(v, float) for v in m.values())  # QuPath measurements: numbers
        assert props["metadata"]["run_id"] == "new"
        assert props["metadata"]["risk_group"] == "high"  # -0.5 >= the upper cut -1.0
    old = slide_geojson(load_slide(written, "S1", "old"), "detection")
    assert old["features"][0]["properties"]["measurements"]["slide risk"] == pytest.approx(-2.0)
    assert old["features"][0]["properties"]["objectType"] == "detection"


def test_geojson_is_valid_by_the_geojson_library(written: str) -> None:
    geojson = pytest.importorskip("geojson")  # in the test extra
    text = json.dumps(slide_geojson(load_slide(written, "S1")))
    obj = geojson.loads(text)
    assert isinstance(obj, geojson.FeatureCollection)
    assert obj.is_valid, obj.errors()
    assert len(obj["features"]) == len(XY)
    assert all(isinstance(f.geometry, geojson.Polygon) and f.is_valid for f in obj["features"])


def test_overlay_at_a_level_puts_attention_on_the_tiles(written: str, tmp_path: Path) -> None:
    out = tmp_path / "overlay.png"
    args = ["export", "overlay", written, "--slide", "S1", "--level", "2", "--out", str(out)]
    res = CliRunner().invoke(main, [*args, "--family", "stroma", "--no-background"])
    assert res.exit_code == 0, res.output
    with Image.open(out) as im:
        assert im.mode == "RGBA" and im.size == (W0 // 4, H0 // 4)
        alpha = np.asarray(im)[..., 3]
    for x, y in XY:  # each tile covers 25 x 25 px at level 2, opaque; glass is transparent
        assert (alpha[y // 4 : (y + SIZE) // 4, x // 4 : (x + SIZE) // 4] > 0).all()
    assert alpha.astype(bool).sum() == len(XY) * (SIZE // 4) ** 2
    # stroma weights 0.6 > 0.3 > 0.1: more attention, more opaque
    a = [int(alpha[y // 4 + 1, x // 4 + 1]) for x, y in XY]
    assert a[0] > a[1] > a[2]
    view = load_slide(written, "S1")
    over = overlay_image(view, 3)  # over the stored thumbnail, scaled to the level
    assert over.shape == (H0 // 8, W0 // 8, 3)
    assert (over[30:, 0:5] == 230).all()  # no tile there: the thumbnail's own pixels


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["geojson", "--slide", "NOPE"], "'NOPE': not scored in any complete run"),
        (["overlay", "--slide", "S1", "--level", "0", "--family", "x"], "family 'x'"),
        (["overlay", "--slide", "S1", "--level", "0", "--run", "old"], "stored no thumbnail"),
        (["geojson", "--slide", "S1", "--run", "zzz"], "'zzz': not a complete run"),
    ],
)
def test_errors_are_one_line(written: str, tmp_path: Path, args: list[str], message: str) -> None:
    cmd = ["export", args[0], written, *args[1:], "--out", str(tmp_path / "o")]
    res = CliRunner().invoke(main, cmd)
    assert res.exit_code == 2, res.output
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and message in lines[0], res.output
