"""Output tables and the exactly-once commit protocol, without Ray (local folders)."""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from output_fixtures import CONTRACT, runs_row

from pathgen_batch.batch import commit as cm
from pathgen_batch.batch.config import ScoreConfig
from pathgen_batch.batch.ray_runner import Resources, plan_resources
from pathgen_batch.batch.stage_rows import (
    SlideRow,
    SlideStatus,
    StageTimes,
    TileBag,
    from_batch,
    input_rows,
    to_batch,
)
from pathgen_batch.batch.summary import Progress, RunSummary, bound_by
from pathgen_batch.errors import ConfigError, DataError
from pathgen_batch.inference.fusion import RiskCuts
from pathgen_batch.storage import RetryPolicy, SlideSource
from pathgen_batch.tables import (
    FAILURES,
    LINEAGE_COLUMNS,
    PREDICTIONS,
    RUNS,
    TILE_ATTENTION,
    TRANSCRIPTOMES,
    Lineage,
    PartWriter,
    attention_table,
    bag_from_features,
    complete_runs,
    failure_record,
    feature_index,
    features_schema,
    features_table,
    median_survival_bin,
    median_survival_group,
    partition_uri,
    png_array,
    prediction_record,
    read_row_group,
    read_table,
    records_table,
    survival_curve,
    thumbnail_table,
    transcriptome_table,
)
from pathgen_batch.tables.io import write_table

RETRY = RetryPolicy(attempts=1)
LIN = Lineage("gen", "3", "fus", "7", CONTRACT.to_json(), CONTRACT.digest)
GENES, FAMILIES = ["G1", "G2", "G3"], ["fa", "fa", "fb"]


# -- rows between the stages ---------------------------------------------------------------
def test_stage_rows_cross_the_batch_form_with_none_and_bags_intact() -> None:
    bare = SlideRow(SlideSource("s3://b/a.svs", "a"))  # nothing known: every optional is None
    full = SlideRow(
        SlideSource("s3://b/c.svs", "c", size=12, patient_id="P1", mpp=0.25),
        status=SlideStatus.ENCODED,
        attempt=2,
        attempt_id="0002-abc",
        n_tiles=3,
        size_l0=128,
        slide_mpp=0.25,
        mpp_source="manifest",
        bag=TileBag(
            x=np.array([0, 128, 256]),
            y=np.zeros(3, dtype=np.int64),
            tissue=np.array([1.0, 0.5, 0.75], dtype=np.float32),
            feats=np.arange(12, dtype=np.float32).reshape(3, 4),
        ),
        times=StageTimes(download=1.5, encode=0.25),
    )
    back = from_batch(to_batch([bare, full]))
    assert back[0] == bare and back[0].source.mpp is None and back[0].slide_mpp is None
    assert back[0].bag is None and back[0].attempt_id is None
    got = back[1]
    assert got.but(bag=None) == full.but(bag=None)
    assert got.bag is not None and full.bag is not None
    np.testing.assert_array_equal(got.bag.feats, full.bag.feats)
    np.testing.assert_array_equal(got.bag.x, [0, 128, 256])
    np.testing.assert_array_equal(got.bag.tissue, full.bag.tissue)
    # the pipeline's input items say where each stored bag is, or None
    items = input_rows([bare.source, full.source], {"c": ("part-0.parquet", 4)})
    rows = from_batch({k: np.asarray([i[k] for i in items], dtype=object) for k in items[0]})
    assert [(r.feature_uri, r.feature_group) for r in rows] == [
        (None, None),
        ("part-0.parquet", 4),
    ]


def test_stage_times_one_record_for_rows_runs_row_and_summary() -> None:
    a, b = StageTimes(download=1.0, tiles=2.0), StageTimes(encode=0.5, score=0.25, write=4.0)
    total = a + b
    assert total.to_dict() == {
        "download_s": 1.0,
        "tiles_s": 2.0,
        "encode_s": 0.5,
        "score_s": 0.25,
        "write_s": 4.0,
    }
    assert StageTimes.from_dict({**total.to_dict(), "passes": 2, "wall_s": 9.0}) == total
    prog = Progress(total=2)
    prog.count(SlideRow(SlideSource("u", "a"), status=SlideStatus.SCORED, n_tiles=5, times=a))
    prog.count(SlideRow(SlideSource("u", "b"), status=SlideStatus.FAILED, times=b))
    assert (prog.scored, prog.failed, prog.tiles, prog.times) == (1, 1, 5, total)
    with pytest.raises(DataError, match="unscored"):
        prog.count(SlideRow(SlideSource("u", "c"), status=SlideStatus.ENCODED))
    summary = RunSummary("r", "out", 2, 1, 1, 5, 10.0, total, {})
    lines = summary.lines()
    assert (  # shares of 7.75 s
        "  time per stage (summed over slides): download 1.0 s (13%), tiles 2.0 s (26%), "
        "encode 0.5 s (6%), score 0.2 s (3%), write 4.0 s (52%)" in lines
    )
    assert any(ln.startswith("  throughput: 0.5 tiles/s, 720 slides/h") for ln in lines), lines
    # one actor each: the scorer pool was busier (4.25 s against 3.5 s), writing most of it
    assert any(ln.startswith("  bounded by: write (94% of its actors' busy time") for ln in lines)


def test_bound_by_weighs_each_pool_by_its_actors() -> None:
    times = StageTimes(download=1.0, tiles=2.0, encode=0.5, score=0.25, write=4.0)
    assert bound_by(times, encoder_actors=1, scorer_actors=1) == ("write", 4.0 / 4.25)
    # two scorers halve the scorer pool's load (2.125 s): the encoders (3.5 s) bound the run,
    # waiting for tiles most of the time
    assert bound_by(times, encoder_actors=1, scorer_actors=2) == ("decode", 2.0 / 3.5)
    assert bound_by(StageTimes(encode=3.0, tiles=1.0), 1, 1) == ("encode", 0.75)


def test_rescoring_runs_in_process_unless_a_cluster_is_given(monkeypatch) -> None:
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    cfg = ScoreConfig(archive="a", output="o")
    assert not cfg.runs_in_process()  # scoring from slides: Ray
    rescore = replace(cfg, reuse_features=True)
    assert rescore.runs_in_process()
    assert not replace(rescore, ray_address="127.0.0.1:6379").runs_in_process()
    assert not replace(rescore, in_process=False).runs_in_process()
    assert replace(cfg, in_process=True).runs_in_process()
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:6379")  # inside `ray job submit`
    assert not rescore.runs_in_process()
    with pytest.raises(ConfigError, match="in_process and ray_address exclude each other"):
        ScoreConfig(archive="a", output="o", in_process=True, ray_address="auto")


def test_resources_give_the_cores_to_the_encoders() -> None:
    cfg = ScoreConfig(archive="a", output="o")
    # no GPU: one encoder per CPU with a whole CPU (one torch thread), the scorer on no CPU
    two = plan_resources(cfg, {"CPU": 2.0})
    assert two == Resources(2, 1.0, 0.0, 1, 0.0, 0.0) and two.encoder_threads == 1
    wide = plan_resources(replace(cfg, encoder_actors=2), {"CPU": 8.0})
    assert (wide.encoder_cpus, wide.encoder_threads) == (4.0, 4)
    shared = plan_resources(replace(cfg, encoder_actors=4), {"CPU": 2.0})
    assert (shared.encoder_cpus, shared.encoder_threads) == (0.5, 1)
    # GPUs: one encoder per GPU sharing it with the scorer, the CPUs split up to 4 each
    gpu = plan_resources(cfg, {"CPU": 16.0, "GPU": 2.0})
    assert gpu == Resources(2, 4.0, 0.5, 1, 0.0, 0.5)
    assert plan_resources(replace(cfg, scorer_num_cpus=1.0), {"CPU": 2.0}).encoder_cpus == 0.5
    # one slide: one encoder with both CPUs (two torch threads), not an idle second actor
    one = plan_resources(cfg, {"CPU": 2.0}, n_slides=1)
    assert one == Resources(1, 2.0, 0.0, 1, 0.0, 0.0) and one.encoder_threads == 2
    assert plan_resources(cfg, {"CPU": 2.0}, n_slides=5) == two


# -- schemas --------------------------------------------------------------------------------
def test_schemas_hold_the_documented_columns() -> None:
    assert PREDICTIONS.names[:4] == ["slide_id", "source_uri", "patient_id", "n_tiles"]
    for name in (
        "grade_probs",
        "grade_set",
        "hazards",
        "risk",
        "risk_lo",
        "risk_hi",
        "risk_group",
        "risk_cuts",
        "median_survival_group",
        "scored_at",
        "bin_edges",
        "survival",
    ):
        assert name in PREDICTIONS.names
    assert TRANSCRIPTOMES.names[:8] == [
        "slide_id",
        "gene_panel_digest",
        "gene",
        "family",
        "gene_index",
        "mean",
        "std",
        "n_samples",
    ]
    assert TILE_ATTENTION.names[:8] == [
        "slide_id",
        "x",
        "y",
        "size_l0",
        "tile_px",
        "mpp",
        "family",
        "attention",
    ]
    assert FAILURES.names[:8] == [
        "slide_id",
        "source_uri",
        "patient_id",
        "stage",
        "error_type",
        "message",
        "attempt",
        "failed_at",
    ]
    for schema in (PREDICTIONS, TRANSCRIPTOMES, TILE_ATTENTION, FAILURES, RUNS, features_schema(4)):
        assert schema.names[-len(LINEAGE_COLUMNS) :] == list(LINEAGE_COLUMNS)
        assert "run_id" not in schema.names  # the Hive partition column lives in the path
    assert PREDICTIONS.field("scored_at").type == pa.timestamp("us", tz="UTC")
    assert features_schema(4).field("feature").type == pa.list_(pa.float32(), 4)
    with pytest.raises(DataError, match="dim"):
        features_schema(0)


# -- rows -----------------------------------------------------------------------------------
def test_survival_median_bin_and_its_group_by_hand() -> None:
    s = survival_curve(np.array([0.2, 0.5, 0.5, 1.0]))
    np.testing.assert_allclose(s, [0.8, 0.4, 0.2, 0.0])
    assert median_survival_bin(s) == 1 and median_survival_group(1, 4) == "intermediate"
    assert median_survival_bin(survival_curve(np.array([0.6, 0.1]))) == 0
    assert median_survival_group(0, 2) == "high"
    s2 = survival_curve(np.array([0.1, 0.1]))  # 0.9, 0.81: never below one half
    assert median_survival_bin(s2) == 2 and median_survival_group(2, 2) == "low"
    assert median_survival_group(3, 4) == "low"
    assert median_survival_bin(np.array([0.7, 0.5])) == 1  # exactly one half counts


def test_prediction_record_and_table() -> None:
    when = dt.datetime(2025, 1, 2, 3, 4, 5, tzinfo=dt.timezone.utc)
    rec = prediction_record(
        slide_id="S1",
        source_uri="s3://b/S1.svs",
        patient_id="P1",
        n_tiles=12,
        slide_mpp=0.25,
        mpp_source="aperio.MPP",
        grade_classes=["I", "II", "III"],
        grade_probs=np.array([0.2, 0.5, 0.3]),
        grade_set=np.array([False, True, True]),
        grade_set_alpha=0.1,
        bin_edges=np.array([0.0, 10.0, math.inf]),
        hazards=np.array([0.6, 0.5]),
        risk=-0.6,
        risk_lo=-0.9,
        risk_hi=-0.3,
        risk_interval_alpha=0.1,
        risk_cuts=RiskCuts((1 / 3, 2 / 3), (-1.0, -0.7), 30),
        gene_panel_digest="sha256:p",
        lineage=LIN,
        scored_at=when,
    )
    assert rec["grade_pred"] == "II" and rec["grade_pred_index"] == 1
    assert rec["grade_set"] == ["II", "III"]
    np.testing.assert_allclose(rec["survival"], [0.4, 0.2])
    assert rec["median_survival_bin"] == 0 and rec["median_survival_group"] == "high"
    assert rec["risk_group"] == "high" and rec["risk_cuts"] == [-1.0, -0.7]  # -0.6 >= -0.7
    t = records_table([rec], "predictions")
    assert t.schema.equals(PREDICTIONS, check_metadata=False)
    row = t.to_pylist()[0]
    assert row["scored_at"] == when and row["bin_edges"][-1] == math.inf
    assert row["generator_version"] == "3" and row["contract_digest"] == CONTRACT.digest
    no_conformal = {**rec, "grade_set": None, "risk_lo": None, "risk_hi": None}
    assert records_table([no_conformal], "predictions").column("grade_set").null_count == 1
    with pytest.raises(DataError, match=r"grade_probs has shape \(2,\), expected \(3,\)"):
        prediction_record(**{**_pred_args(), "grade_probs": np.array([0.5, 0.5])})
    with pytest.raises(DataError, match="missing value"):
        records_table([{k: v for k, v in rec.items() if k != "risk"}], "predictions")


def _pred_args() -> dict:
    return {
        "slide_id": "S",
        "source_uri": "/s.svs",
        "patient_id": None,
        "n_tiles": 1,
        "slide_mpp": None,
        "mpp_source": None,
        "grade_classes": ["a", "b", "c"],
        "grade_probs": np.array([0.2, 0.3, 0.5]),
        "grade_set": None,
        "grade_set_alpha": None,
        "bin_edges": np.array([0.0, math.inf]),
        "hazards": np.array([0.5]),
        "risk": -0.5,
        "risk_lo": None,
        "risk_hi": None,
        "risk_interval_alpha": None,
        "risk_cuts": None,
        "gene_panel_digest": "sha256:p",
        "lineage": LIN,
    }


def _failure(
    stage: str, error: Exception, attempt: int, slide_id: str = "S", source_uri: str = "/s.svs"
) -> dict:
    slide = {"slide_id": slide_id, "source_uri": source_uri, "patient_id": None}
    return failure_record(**slide, stage=stage, error=error, attempt=attempt, lineage=LIN)


def test_failure_record_keeps_the_first_line() -> None:
    err = ValueError("first line\nsecond line")
    rec = _failure("tiles", err, 2)
    assert (rec["error_type"], rec["message"], rec["attempt"]) == ("ValueError", "first line", 2)
    t = records_table([rec], "failures")
    assert t.column("stage").to_pylist() == ["tiles"]
    with pytest.raises(DataError, match="failure stage"):
        _failure("lunch", err, 1)


def test_per_slide_tables() -> None:
    t = transcriptome_table(
        "S1",
        GENES,
        FAMILIES,
        "sha256:p",
        np.array([1.0, 2.0, 3.0]),
        np.array([0.1, 0.2, 0.3]),
        5,
        LIN,
    )
    assert t.column("gene").to_pylist() == GENES
    assert t.column("gene_index").to_pylist() == [0, 1, 2]
    assert t.column("n_samples").to_pylist() == [5, 5, 5]
    a = attention_table(
        "S1",
        np.array([0, 256]),
        np.array([512, 512]),
        256,
        128,
        0.5,
        ["f1", "f2"],
        np.array([[0.1, 0.9], [0.6, 0.4]]),
        LIN,
    )
    rows = [(r["family"], r["x"], r["y"], round(r["attention"], 6)) for r in a.to_pylist()]
    assert rows == [
        ("f1", 0, 512, 0.1),
        ("f1", 256, 512, 0.9),
        ("f2", 0, 512, 0.6),
        ("f2", 256, 512, 0.4),
    ]
    with pytest.raises(DataError, match=r"attention must be \(F=2, N=2\)"):
        attention_table(
            "S1", np.array([0, 1]), np.array([0, 1]), 1, 1, 0.5, ["f1", "f2"], np.ones((2, 3)), LIN
        )
    feats = np.arange(8, dtype=np.float32).reshape(2, 4)
    f = features_table(
        "S1", np.array([0, 64]), np.array([0, 0]), 64, np.array([0.9, 0.8]), feats, LIN
    )
    x, y, back, size_l0 = bag_from_features(f)
    assert x.tolist() == [0, 64] and y.tolist() == [0, 0] and size_l0 == 64
    np.testing.assert_array_equal(back, feats)


# -- part files and readers -----------------------------------------------------------------
def _tx(slide: str, value: float) -> pa.Table:
    return transcriptome_table(
        slide, GENES, FAMILIES, "sha256:p", np.full(3, value), np.zeros(3), 1, LIN
    )


def test_part_writer_rolls_parts_and_removes_stale_ones(tmp_path: Path) -> None:
    folder = str(tmp_path / "transcriptomes" / "run_id=r")
    w = PartWriter(folder, TRANSCRIPTOMES, "r", part_rows=5, group_rows=2)
    for i in range(4):
        w.write(_tx(f"S{i}", float(i)))  # 3 rows each
    parts = w.close()
    assert [Path(p).name for p in parts] == ["part-00000.parquet", "part-00001.parquet"]
    for p in parts:
        meta = pq.ParquetFile(p).metadata
        assert meta.num_rows == 6 and meta.num_row_groups == 2
        assert pq.read_schema(p).metadata[b"pathgen.run_id"] == b"r"
    w2 = PartWriter(folder, TRANSCRIPTOMES, "r", part_rows=5, group_rows=2)
    w2.write(_tx("S9", 9.0))
    assert [Path(p).name for p in w2.close()] == ["part-00000.parquet"]
    assert sorted(p.name for p in Path(folder).iterdir()) == ["part-00000.parquet"]
    empty = PartWriter(str(tmp_path / "failures" / "run_id=r"), FAILURES, "r")
    (only,) = empty.close()
    assert pq.read_table(only).num_rows == 0
    assert pq.read_schema(only).names == FAILURES.names


def test_readers_see_complete_runs_only(tmp_path: Path) -> None:
    out = str(tmp_path)
    for run, value in (("r1", 1.0), ("r2", 2.0)):
        write_table(partition_uri(out, "transcriptomes", run), _tx("S", value), TRANSCRIPTOMES, run)
    run_row = _runs_record(out)(1, 0, 3)  # one slide scored, 3 tiles
    write_table(
        partition_uri(out, "runs", "r1"),
        records_table([run_row], "runs"),
        RUNS,
        "r1",
        name="run.parquet",
    )
    assert complete_runs(out) == ["r1"]
    t = read_table(out, "transcriptomes")
    assert set(t.column("run_id").to_pylist()) == {"r1"}
    assert t.column("mean").to_pylist() == [1.0, 1.0, 1.0]
    picked = read_table(
        out, "transcriptomes", columns=["gene", "mean"], filter=pc.field("gene").isin(["G2"])
    )
    assert picked.to_pylist() == [{"gene": "G2", "mean": 1.0, "run_id": "r1"}]
    with pytest.raises(DataError, match=r"\['r2'\] are not complete"):
        read_table(out, "transcriptomes", ["r2"])


def test_feature_index_finds_each_slides_row_group(tmp_path: Path) -> None:
    folder = partition_uri(str(tmp_path), "features", "r")
    w = PartWriter(folder, features_schema(4), "r", group_per_write=True, part_rows=5)
    bags = {}
    for i, n in enumerate((3, 2, 4)):
        feats = np.full((n, 4), float(i), dtype=np.float32)
        bags[f"S{i}"] = feats
        w.write(features_table(f"S{i}", np.arange(n) * 64, np.zeros(n), 64, np.ones(n), feats, LIN))
    w.close()
    index = feature_index(str(tmp_path), "r")
    assert sorted(index) == ["S0", "S1", "S2"]
    assert index["S2"][0].endswith("part-00001.parquet")  # the first part filled at 5 rows
    for sid, (uri, group) in index.items():
        _, _, feats, _ = bag_from_features(read_row_group(uri, group))
        np.testing.assert_array_equal(feats, bags[sid])


# -- the commit protocol --------------------------------------------------------------------
def _sources(n: int) -> list[SlideSource]:
    return [SlideSource(f"/archive/S{i}.svs", f"S{i}", 10 + i) for i in range(n)]


IDENT = {"generator": ["gen", "3"], "fusion": ["fus", "7"], "min_tissue": 0.5}


def test_run_state_freezes_inputs_and_identity(tmp_path: Path) -> None:
    layout = cm.RunLayout(str(tmp_path), "run-1")
    calls = []

    def listing() -> list[SlideSource]:
        calls.append(1)
        return _sources(3)

    st = cm.RunState.begin(layout, IDENT, listing, RETRY)
    assert not st.resumed and [s.slide_id for s in st.inputs] == ["S0", "S1", "S2"]
    again = cm.RunState.begin(layout, IDENT, lambda: _sources(5), RETRY)
    assert again.resumed and again.inputs == st.inputs and calls == [1]
    other = {**IDENT, "fusion": ["fus", "8"]}
    with pytest.raises(ConfigError, match=r"other models or settings \(fusion: \['fus', '7'\]"):
        cm.RunState.begin(layout, other, listing, RETRY)
    with pytest.raises(DataError, match="no slides"):
        cm.RunState.begin(cm.RunLayout(str(tmp_path), "run-2"), IDENT, list, RETRY)
    with pytest.raises(DataError, match="run id"):
        cm.RunLayout(str(tmp_path), "../escape")


def _score(layout: cm.RunLayout, src: SlideSource, value: float) -> bool:
    """One scoring attempt of ``src``, the way the scorer stage does it."""
    attempt, attempt_id = cm.begin_attempt(layout, src.slide_id, RETRY)
    cm.write_slide_table(
        layout, src.slide_id, attempt_id, "transcriptomes", _tx(src.slide_id, value), RETRY
    )
    cm.write_slide_table(layout, src.slide_id, attempt_id, "thumbnails", _thumb(src, value), RETRY)
    rec = prediction_record(
        **{**_pred_args(), "slide_id": src.slide_id, "source_uri": src.uri, "n_tiles": 4}
    )
    return cm.commit(
        layout,
        src.slide_id,
        "scored",
        rec,
        attempt=attempt,
        attempt_id=attempt_id,
        tables=["transcriptomes", "thumbnails"],
        retry=RETRY,
    )


def _thumb(src: SlideSource, value: float) -> pa.Table:
    """A 4 x 6 px thumbnail of grey ``value`` and a mask with its left half tissue."""
    mask = np.zeros((2, 3), dtype=bool)
    mask[:, :2] = True
    img = np.full((4, 6, 3), int(value) % 256, dtype=np.uint8)
    return thumbnail_table(src.slide_id, img, (600, 400), 0.5, mask, None, LIN)


def _fail(layout: cm.RunLayout, src: SlideSource, stage: str) -> bool:
    attempt, _ = cm.begin_attempt(layout, src.slide_id, RETRY)
    rec = _failure(stage, OSError("disk"), attempt, src.slide_id, src.uri)
    return cm.commit(
        layout, src.slide_id, "failed", rec, attempt=attempt, attempt_id=None, retry=RETRY
    )


def _runs_record(out: str):
    def make(n_scored: int, n_failed: int, n_tiles: int) -> dict:
        return runs_row(out, LIN, n_scored=n_scored, n_failed=n_failed, n_tiles=n_tiles)

    return make


def test_each_slide_ends_in_exactly_one_table(tmp_path: Path) -> None:
    out = str(tmp_path)
    layout = cm.RunLayout(out, "r")
    srcs = _sources(5)
    st = cm.RunState.begin(layout, IDENT, lambda: srcs, RETRY)
    assert _score(layout, srcs[0], 1.0)
    assert _score(layout, srcs[1], 2.0)
    assert not _score(layout, srcs[1], 99.0)  # a retry after the commit loses: no effect
    assert not _fail(layout, srcs[1], "write")  # and cannot turn it into a failure
    assert _fail(layout, srcs[2], "download")
    assert [s.slide_id for s in st.pending()] == ["S3", "S4"]
    with pytest.raises(DataError, match=r"2 slide\(s\) have no commit yet"):
        cm.consolidate(st, _runs_record(out), None, RETRY)
    assert cm.fail_leftovers(st, LIN, "pass 3 ended on ActorDiedError", RETRY) == ["S3", "S4"]
    assert st.pending() == []
    done = cm.consolidate(st, _runs_record(out), None, RETRY)
    assert (done.n_scored, done.n_failed, done.n_tiles) == (2, 3, 8)
    preds = read_table(out, "predictions").column("slide_id").to_pylist()
    fails = read_table(out, "failures")
    assert preds == ["S0", "S1"]
    assert fails.column("slide_id").to_pylist() == ["S2", "S3", "S4"]
    assert fails.column("stage").to_pylist() == ["download", "pipeline", "pipeline"]
    assert fails.column("attempt").to_pylist() == [1, 1, 1]
    assert sorted(preds + fails.column("slide_id").to_pylist()) == [s.slide_id for s in srcs]
    tx = read_table(out, "transcriptomes")
    means = {(r["slide_id"], r["gene"]): r["mean"] for r in tx.to_pylist()}
    assert means[("S1", "G1")] == 2.0  # the committed attempt's file, not the loser's
    assert len(tx) == 6
    (part,) = tmp_path.glob("transcriptomes/run_id=r/part-*.parquet")
    meta = pq.ParquetFile(part).metadata  # one row group per slide: min == max slide_id
    stats = [meta.row_group(i).column(0).statistics for i in range(meta.num_row_groups)]
    assert [(st.min, st.max) for st in stats] == [("S0", "S0"), ("S1", "S1")]
    thumbs = read_table(out, "thumbnails").to_pylist()
    assert [t["slide_id"] for t in thumbs] == ["S0", "S1"]  # one per scored slide, once
    assert png_array(thumbs[1]["image_png"], "S1")[0, 0, 0] == 2  # the committed attempt's
    np.testing.assert_array_equal(
        png_array(thumbs[1]["mask_png"], "S1"), [[True, True, False], [True, True, False]]
    )
    assert (thumbs[1]["width_l0"], thumbs[1]["height_l0"]) == (600, 400)
    assert thumbs[1]["tissue_fraction"] == pytest.approx(2 / 3)
    assert thumbs[1]["excluded_png"] is None
    assert not (tmp_path / "_runs" / "run_id=r" / "slides").exists()


def test_interrupted_consolidation_reruns_to_the_same_tables(tmp_path: Path) -> None:
    out = str(tmp_path)
    layout = cm.RunLayout(out, "r")
    srcs = _sources(4)
    st = cm.RunState.begin(layout, IDENT, lambda: srcs, RETRY)
    for i, s in enumerate(srcs[:3]):
        _score(layout, s, float(i))
    _fail(layout, srcs[3], "tiles")

    def crash(n_scored: int, n_failed: int, n_tiles: int) -> dict:
        raise KeyboardInterrupt  # the job is killed just before the runs row

    with pytest.raises(KeyboardInterrupt):
        cm.consolidate(st, crash, None, RETRY)
    assert complete_runs(out) == []  # tables written, but the run is not visible yet
    first = {p: p.read_bytes() for p in tmp_path.glob("*/run_id=r/part-*.parquet")}
    assert len(first) == 5  # predictions, failures, transcriptomes, tile_attention, thumbnails
    cm.consolidate(cm.RunState.begin(layout, IDENT, list, RETRY), _runs_record(out), None, RETRY)
    assert complete_runs(out) == ["r"]
    second = {p: p.read_bytes() for p in tmp_path.glob("*/run_id=r/part-*.parquet")}
    assert set(second) == set(first)
    for p, data in first.items():
        assert pq.read_table(pa.BufferReader(data)).equals(
            pq.read_table(pa.BufferReader(second[p]))
        )
    assert read_table(out, "predictions").num_rows == 3


def test_a_new_run_never_touches_an_old_one(tmp_path: Path) -> None:
    out = str(tmp_path)
    srcs = _sources(2)
    old = cm.RunLayout(out, "old")
    st = cm.RunState.begin(old, IDENT, lambda: srcs, RETRY)
    for s in srcs:
        _score(old, s, 1.0)
    cm.consolidate(st, _runs_record(out), None, RETRY)
    snapshot = {
        p: (p.read_bytes(), p.stat().st_mtime_ns) for p in tmp_path.rglob("*") if p.is_file()
    }
    new = cm.RunLayout(out, "new")
    st2 = cm.RunState.begin(new, {**IDENT, "fusion": ["fus", "8"]}, lambda: srcs, RETRY)
    for s in srcs:
        _score(new, s, 5.0)
    cm.consolidate(st2, _runs_record(out), None, RETRY)
    for p, (data, mtime) in snapshot.items():
        assert p.read_bytes() == data and p.stat().st_mtime_ns == mtime
    assert complete_runs(out) == ["new", "old"]
    t = read_table(out, "transcriptomes")
    by_run = {
        r: set(t.filter(pc.equal(t.column("run_id"), r)).column("mean").to_pylist())
        for r in ("old", "new")
    }
    assert by_run == {"old": {1.0}, "new": {5.0}}
