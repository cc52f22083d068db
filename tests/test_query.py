"""Querying the output tables: views over complete runs, shortcuts, formats, one-line errors."""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from output_fixtures import CONTRACT, runs_row

from pathgen_batch.cli.query import query as query_cli
from pathgen_batch.errors import DataError
from pathgen_batch.tables import (
    FAILURES,
    PREDICTIONS,
    RUNS,
    TILE_ATTENTION,
    TRANSCRIPTOMES,
    Lineage,
    attention_table,
    failure_record,
    partition_uri,
    prediction_record,
    records_table,
    transcriptome_table,
)
from pathgen_batch.tables.io import write_table
from pathgen_batch.tables.query import OutputStore, connect, parse_model_version, query

GENES, FAMILIES = ["G1", "G2", "G3"], ["fa", "fa", "fb"]
# run -> fusion version; r0 never gets its runs row (an interrupted run)
FUSION = {"r1": "7", "r2": "8", "r0": "7"}
# (run, slide) -> risk
RISK = {("r1", "S1"): -0.5, ("r1", "S2"): -1.2, ("r1", "S3"): -0.1, ("r2", "S1"): -0.3}
RISK_R0 = {("r0", "S9"): 5.0}
FB = [0.7, 0.1, 0.1, 0.1]  # family fb attention over S1's four tiles in r1


def _lin(run: str) -> Lineage:
    return Lineage("gen", "3", "fus", FUSION[run], CONTRACT.to_json(), CONTRACT.digest)


def _means(slide: str, run: str) -> np.ndarray:
    """Hand-chosen expression: G1 = slide number, G2 = 10 + run number, G3 = 100."""
    return np.array([float(slide[1:]), 10.0 + float(run[1:]), 100.0])


def _stds(slide: str) -> np.ndarray:
    return np.array([0.5, 0.25, float(slide[1:])])


def _prediction(run: str, slide: str, risk: float) -> dict:
    return prediction_record(
        slide_id=slide,
        source_uri=f"/archive/{slide}.svs",
        patient_id=f"P{slide[1:]}",
        n_tiles=4,
        slide_mpp=0.5,
        mpp_source="aperio.MPP",
        grade_classes=["I", "II", "III"],
        grade_probs=np.array([0.2, 0.5, 0.3]),
        grade_set=None,
        grade_set_alpha=None,
        bin_edges=np.array([0.0, 12.0, math.inf]),
        hazards=np.array([0.6, 0.5]),
        risk=risk,
        risk_lo=None,
        risk_hi=None,
        risk_interval_alpha=None,
        risk_cuts=None,
        gene_panel_digest="sha256:p",
        lineage=_lin(run),
    )


def _runs_row(run: str, root: str, n: int) -> dict:
    day = run[1:] or 1
    return runs_row(
        root,
        _lin(run),
        n_scored=n,
        n_tiles=4 * n,
        started_at=f"2025-01-0{day}T00:00:00+00:00",
        finished_at=f"2025-01-0{day}T01:00:00+00:00",
    )


def build_output(root: str) -> None:
    """Two complete runs (r1, r2) and one without its runs row (r0), written with the tables
    writers: known risks, expression, attention and one failure."""
    for run, risks in (("r1", RISK), ("r2", RISK), ("r0", RISK_R0)):
        slides = sorted(s for r, s in risks if r == run)
        preds = [_prediction(run, s, risks[(run, s)]) for s in slides]
        write_table(
            partition_uri(root, "predictions", run),
            records_table(preds, "predictions"),
            PREDICTIONS,
            run,
        )
        tx = pa.concat_tables(
            [
                transcriptome_table(
                    s, GENES, FAMILIES, "sha256:p", _means(s, run), _stds(s), 8, _lin(run)
                )
                for s in slides
            ]
        )
        write_table(partition_uri(root, "transcriptomes", run), tx, TRANSCRIPTOMES, run)
        fails = []
        if run == "r1":
            err = OSError("truncated file")
            fails = [
                failure_record(
                    slide_id="S4",
                    source_uri="/archive/S4.svs",
                    patient_id=None,
                    stage="open",
                    error=err,
                    attempt=2,
                    lineage=_lin(run),
                )
            ]
            att = np.array([[0.25] * 4, FB])  # (F=2, N=4)
            write_table(
                partition_uri(root, "tile_attention", run),
                attention_table(
                    "S1",
                    np.array([0, 64, 0, 64]),
                    np.array([0, 0, 64, 64]),
                    64,
                    64,
                    0.5,
                    ["fa", "fb"],
                    att,
                    _lin(run),
                ),
                TILE_ATTENTION,
                run,
            )
        write_table(
            partition_uri(root, "failures", run),
            records_table(fails, "failures") if fails else FAILURES.empty_table(),
            FAILURES,
            run,
        )
        if run != "r0":
            write_table(
                partition_uri(root, "runs", run),
                records_table([_runs_row(run, root, len(slides))], "runs"),
                RUNS,
                run,
                name="run.parquet",
            )


@pytest.fixture(scope="module")
def out(tmp_path_factory: pytest.TempPathFactory) -> str:
    root = str(tmp_path_factory.mktemp("scores"))
    build_output(root)
    return root


@pytest.fixture(scope="module")
def store(out: str):
    with OutputStore(out) as s:
        yield s


def _invoke(*args: str) -> tuple[int, str, str]:
    res = CliRunner().invoke(query_cli, list(args))
    if res.exception is not None and not isinstance(res.exception, SystemExit):
        raise res.exception
    return res.exit_code, res.stdout, res.stderr


def _one_line_error(args: list[str], match: str) -> str:
    code, stdout, stderr = _invoke(*args)
    assert code == 2 and stdout == ""
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), stderr
    assert "Traceback" not in stderr and match in lines[0], lines[0]
    return lines[0]


# -- views ----------------------------------------------------------------------------------
def test_views_hold_complete_runs_only(store: OutputStore) -> None:
    assert store.views == ["predictions", "transcriptomes", "tile_attention", "failures", "runs"]
    assert store.run_ids == ["r1", "r2"]
    counts = dict(store.tables().itertuples(index=False))
    assert counts == {
        "predictions": 4,
        "transcriptomes": 12,
        "tile_attention": 8,
        "failures": 1,
        "runs": 2,
    }
    assert store.runs()["run_id"].tolist() == ["r1", "r2"]
    seen = store.query("SELECT DISTINCT run_id FROM transcriptomes ORDER BY 1")["run_id"]
    assert seen.tolist() == ["r1", "r2"]  # r0 wrote tables but has no runs row
    assert store.query("SELECT * FROM predictions WHERE slide_id = 'S9'").empty


def test_sql_results_equal_what_was_written(store: OutputStore) -> None:
    got = store.query("SELECT run_id, slide_id, risk, bin_edges FROM predictions ORDER BY ALL")
    assert {(r, s): x for r, s, x, _ in got.itertuples(index=False)} == RISK
    assert list(got["bin_edges"][0]) == [0.0, 12.0, math.inf]
    tx = store.arrow("SELECT run_id, slide_id, gene, mean, std FROM transcriptomes")
    for row in tx.to_pylist():
        i = GENES.index(row["gene"])
        assert row["mean"] == _means(row["slide_id"], row["run_id"])[i]
        assert row["std"] == _stds(row["slide_id"])[i]
    assert store.arrow("SELECT * FROM predictions", limit=3).num_rows == 3


def test_duckdb_pandas_and_pyarrow_read_the_same_rows(out: str, store: OutputStore) -> None:
    cols = ["run_id", "slide_id", "gene", "mean", "std"]
    key = ["run_id", "slide_id", "gene"]
    duck = store.query(f"SELECT {', '.join(cols)} FROM transcriptomes").sort_values(key)
    pdf = pd.read_parquet(
        Path(out) / "transcriptomes", filters=[("run_id", "in", ["r1", "r2"])], columns=cols
    ).sort_values(key)
    arrow = (
        pads.dataset(Path(out) / "transcriptomes", partitioning="hive")
        .to_table(columns=cols, filter=pads.field("run_id").isin(["r1", "r2"]))
        .to_pandas()
        .sort_values(key)
    )
    for other in (pdf, arrow):
        assert [tuple(map(str, r)) for r in other.itertuples(index=False)] == [
            tuple(map(str, r)) for r in duck.itertuples(index=False)
        ]
    assert len(duck) == 12


def test_polars_reads_the_same_rows_as_duckdb_and_pandas(out: str, store: OutputStore) -> None:
    pl = pytest.importorskip("polars")  # in the test extra
    for table, cols, key in (
        (
            "transcriptomes",
            ["run_id", "slide_id", "gene", "mean", "std"],
            ["run_id", "slide_id", "gene"],
        ),
        (
            "predictions",
            ["run_id", "slide_id", "risk", "grade_pred", "hazards"],
            ["run_id", "slide_id"],
        ),
    ):
        duck = store.query(f"SELECT {', '.join(cols)} FROM {table}").sort_values(key)
        pdf = pd.read_parquet(
            Path(out) / table, filters=[("run_id", "in", ["r1", "r2"])], columns=cols
        ).sort_values(key)
        polars = (
            pl.scan_parquet(f"{out}/{table}/*/*.parquet", hive_partitioning=True)
            .filter(pl.col("run_id").is_in(["r1", "r2"]))
            .select(cols)
            .collect()
            .to_pandas()
            .sort_values(key)
        )
        want = [tuple(map(str, r)) for r in duck.itertuples(index=False)]
        assert want, table
        for other in (pdf, polars):
            assert [tuple(map(str, r)) for r in other.itertuples(index=False)] == want, table


def test_run_and_model_version_filters(out: str) -> None:
    with OutputStore(out, run_id="r2") as s:
        assert s.query("SELECT slide_id FROM predictions")["slide_id"].tolist() == ["S1"]
        assert "tile_attention" not in s.views  # r2 wrote none: no view
    with OutputStore(out, model_version="fus:8") as s:
        rows = s.query("SELECT run_id, risk FROM predictions")
        assert rows.values.tolist() == [["r2", -0.3]]
    with OutputStore(out, model_version="gen:3") as s:
        assert s.tables()["rows"].tolist()[0] == 4
    assert parse_model_version("pathgen-fusion:bundle:sha256:ab") == (
        "pathgen-fusion",
        "bundle:sha256:ab",
    )
    with pytest.raises(DataError, match=r"models used: \['fus:7', 'fus:8', 'gen:3'\]"):
        OutputStore(out, model_version="fus:9")
    with pytest.raises(DataError, match="NAME:VERSION"):
        OutputStore(out, model_version="fus")
    with pytest.raises(
        DataError, match=r"run 'r0' is not a complete run; complete: \['r1', 'r2'\]"
    ):
        OutputStore(out, run_id="r0")
    assert query(out, "SELECT count(*) AS n FROM runs")["n"].tolist() == [2]
    con = connect(out, run_id="r1")
    assert con.sql("SELECT count(*) FROM predictions").fetchall() == [(3,)]
    con.close()


# -- shortcuts ------------------------------------------------------------------------------
def test_top_risk_orders_by_risk(store: OutputStore) -> None:
    top = store.top_risk(2)
    assert top[["slide_id", "run_id", "risk"]].values.tolist() == [
        ["S3", "r1", -0.1],
        ["S1", "r2", -0.3],
    ]
    assert len(store.top_risk(20)) == 4
    with pytest.raises(DataError, match="positive integer"):
        store.top_risk(0)


def test_genes_frame_has_mean_and_spread(store: OutputStore) -> None:
    g = store.genes(["G3", "G1"], slides=["S2", "S1"])
    assert g.columns.tolist() == ["slide_id", "run_id", "G3.mean", "G3.std", "G1.mean", "G1.std"]
    assert g[["slide_id", "run_id"]].values.tolist() == [["S1", "r1"], ["S1", "r2"], ["S2", "r1"]]
    assert g["G1.mean"].tolist() == [1.0, 1.0, 2.0]
    assert g["G3.std"].tolist() == [1.0, 1.0, 2.0]
    assert g["G3.mean"].tolist() == [100.0] * 3
    assert len(store.genes(["G2"])) == 4
    with pytest.raises(DataError, match=r"genes: \['NOPE'\] not in the transcriptomes"):
        store.genes(["G1", "NOPE"])
    with pytest.raises(DataError, match=r"slides: \['S7'\] not in"):
        store.genes(["G1"], slides=["S7"])
    with pytest.raises(DataError, match="list of names"):
        store.genes("G1")


def test_slide_summary(store: OutputStore) -> None:
    s = store.slide("S1", top=2)
    assert s.prediction["run_id"].tolist() == ["r1", "r2"]
    assert s.prediction["risk"].tolist() == [-0.5, -0.3]
    assert s.top_genes[["run_id", "gene"]].values.tolist() == [
        ["r1", "G3"],
        ["r1", "G2"],
        ["r2", "G3"],
        ["r2", "G2"],
    ]
    att = s.attention.set_index("family")
    assert att.loc["fa", "n_tiles"] == 4
    assert att.loc["fa", "effective_tiles"] == pytest.approx(4.0, rel=1e-6)  # uniform: exp(ln 4)
    entropy = -sum(a * math.log(a) for a in FB)
    assert att.loc["fb", "effective_tiles"] == pytest.approx(math.exp(entropy), rel=1e-6)
    assert att.loc["fb", "max_attention"] == pytest.approx(0.7)
    assert (att.loc["fb", "x_max"], att.loc["fb", "y_max"]) == (0, 0)
    assert s.failures.empty
    failed = store.slide("S4")
    assert failed.prediction.empty and failed.failures["stage"].tolist() == ["open"]
    assert failed.failures["message"].tolist() == ["truncated file"]
    with pytest.raises(DataError, match=r"slide 'S9': not in the predictions or failures"):
        store.slide("S9")  # only in the incomplete run


# -- the command line -----------------------------------------------------------------------
def test_query_root_sql_and_formats(out: str, tmp_path: Path) -> None:
    sql = "SELECT slide_id, risk, bin_edges, scored_at FROM predictions ORDER BY risk DESC"
    code, text, _ = _invoke(out, sql, "--run", "r1")  # the shorthand for `query sql`
    assert code == 0
    lines = text.strip().splitlines()
    assert lines[0].split()[:2] == ["slide_id", "risk"]
    assert [ln.split()[0] for ln in lines[1:]] == ["S3", "S1", "S2"]
    code, text, _ = _invoke("sql", out, sql, "--format", "csv", "--run", "r1")
    frame = pd.read_csv(io.StringIO(text))
    assert code == 0 and frame["slide_id"].tolist() == ["S3", "S1", "S2"]
    assert frame["risk"].tolist() == [-0.1, -0.5, -1.2]
    code, text, _ = _invoke(
        out, sql, "--format", "json", "--limit", "2", "--model-version", "fus:7"
    )
    rows = json.loads(text)
    assert code == 0 and [r["slide_id"] for r in rows] == ["S3", "S1"]
    assert rows[0]["bin_edges"] == [0.0, 12.0, None]  # +inf has no JSON form
    assert rows[0]["scored_at"].endswith("+00:00")
    target = tmp_path / "top.parquet"
    code, _, err = _invoke(out, sql, "--format", "parquet", "--output", str(target))
    assert code == 0 and "wrote 4 row(s)" in err
    back = pq.read_table(target)
    assert back.column("slide_id").to_pylist() == ["S3", "S1", "S1", "S2"]
    assert pd.read_parquet(target)["risk"].tolist() == [-0.1, -0.3, -0.5, -1.2]
    assert back.column("bin_edges").to_pylist()[0] == [0.0, 12.0, math.inf]
    csv_file = tmp_path / "top.csv"
    assert _invoke(out, sql, "--format", "csv", "-o", str(csv_file))[0] == 0
    assert pd.read_csv(csv_file)["slide_id"].tolist() == ["S3", "S1", "S1", "S2"]


def test_shortcut_commands(out: str) -> None:
    code, text, _ = _invoke("top-risk", out, "-n", "1", "--format", "csv")
    assert code == 0 and pd.read_csv(io.StringIO(text))["slide_id"].tolist() == ["S3"]
    code, text, _ = _invoke("genes", out, "--genes", "G1,G2", "--slides", "S2", "--format", "csv")
    frame = pd.read_csv(io.StringIO(text))
    assert code == 0 and frame.values.tolist() == [["S2", "r1", 2.0, 0.5, 11.0, 0.25]]
    code, text, _ = _invoke("slide", out, "S1", "--format", "json")
    doc = json.loads(text)
    assert code == 0 and [p["risk"] for p in doc["prediction"]] == [-0.5, -0.3]
    assert {a["family"] for a in doc["attention"]} == {"fa", "fb"} and doc["failures"] == []
    code, text, _ = _invoke("slide", out, "S4")
    assert code == 0 and "== failures ==" in text and "truncated file" in text
    code, text, _ = _invoke("tables", out)
    assert code == 0 and "transcriptomes" in text and "r2" in text and "r0" not in text


def test_errors_are_one_line(out: str, tmp_path: Path) -> None:
    _one_line_error([out, "SELEC 1"], "query failed: Parser Error")
    line = _one_line_error([out, "SELECT * FROM features"], "available views: ['predictions'")
    assert "features" in line
    _one_line_error([out, "SELECT 1", "--format", "parquet"], "give --output FILE")
    _one_line_error(["slide", out, "S9"], "slide 'S9'")
    _one_line_error(["genes", out, "--genes", "G1,XX"], "['XX'] not in")
    _one_line_error([out, "SELECT 1", "--run", "r0"], "not a complete run")
    _one_line_error(["tables", str(tmp_path / "empty")], "no complete runs")
    code, _, err = _invoke(out, "SELECT 1", "--format", "xml")
    assert code == 2 and "Traceback" not in err


def test_every_command_has_help() -> None:
    code, text, _ = _invoke("--help")
    assert code == 0 and 'query OUTPUT_ROOT "SELECT' in text
    for name in ("sql", "tables", "slide", "genes", "top-risk"):
        code, text, _ = _invoke(name, "--help")
        assert code == 0 and "Usage:" in text, name


# -- S3 -------------------------------------------------------------------------------------
@pytest.mark.servers
def test_queries_on_s3_match_local(s3_server, s3_bucket: str, out: str, store: OutputStore) -> None:
    root = f"s3://{s3_bucket}/scores"
    build_output(root)
    sql = "SELECT run_id, slide_id, gene, mean, std FROM transcriptomes ORDER BY ALL"
    with OutputStore(root) as remote:
        assert remote.views == store.views and remote.run_ids == ["r1", "r2"]
        assert remote.query(sql).equals(store.query(sql))
        assert remote.top_risk(2)["slide_id"].tolist() == ["S3", "S1"]
        g = remote.genes(["G1"], ["S2"])
        assert g.values.tolist() == [["S2", "r1", 2.0, 0.5]]
    sql = "SELECT slide_id FROM predictions ORDER BY risk DESC"
    code, _, _ = _invoke(root, sql, "-o", f"{root}/q.json", "--format", "json")
    body = s3_server.client().get_object(Bucket=s3_bucket, Key="scores/q.json")["Body"]
    assert code == 0 and json.loads(body.read()) == [
        {"slide_id": s} for s in ["S3", "S1", "S1", "S2"]
    ]
    target = f"s3://{s3_bucket}/scores/top.parquet"
    code, _, _ = _invoke(root, "SELECT * FROM predictions", "--format", "parquet", "-o", target)
    assert code == 0
    body = s3_server.client().get_object(Bucket=s3_bucket, Key="scores/top.parquet")["Body"]
    back = pq.read_table(pa.BufferReader(body.read()))
    assert sorted(back.column("slide_id").to_pylist()) == ["S1", "S1", "S2", "S3"]


def test_user_sql_cannot_reach_files_or_unlock_the_engine(out: str, tmp_path: Path) -> None:
    secret = tmp_path / "secret.csv"
    secret.write_text("a\n1\n")
    _one_line_error([out, f"SELECT * FROM read_csv('{secret}')"], "file system operations")
    _one_line_error([out, "SET enable_external_access = true"], "configuration has been locked")
    code, stdout, _ = _invoke(out, "SELECT count(*) AS n FROM predictions", "--format", "csv")
    assert code == 0 and stdout.splitlines()[0] == "n"
