"""The ``patients`` table of a scoring run: a manifest with patient ids (two patients with two
slides, one of them with a slide that fails, one whose only slide fails, one slide without a
patient) -> one row per patient, predicted from the union bag of its slides, exactly once."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from pathgen_batch.batch import ScoreConfig, score_archive
from pathgen_batch.batch import commit as cm
from pathgen_batch.batch import patients as pt
from pathgen_batch.batch.encode_stage import TileEncoder
from pathgen_batch.batch.pipeline import run_serial
from pathgen_batch.batch.prepare import list_inputs, prepare, worker_context
from pathgen_batch.batch.score_stage import SlideScorer, union_predictor
from pathgen_batch.errors import DataError
from pathgen_batch.features.contract import FeatureContract
from pathgen_batch.storage import SlideSource
from pathgen_batch.tables import PATIENTS, Lineage, patient_record, read_table, records_table
from pathgen_batch.tables.query import query
from pathgen_batch.tables.schemas import PATIENT_PREDICTION_COLUMNS

CONTRACT = FeatureContract("stain-texture", "v1", 4, 64, 0.5)
LIN = Lineage("g", "1", "f", "1", CONTRACT.to_json(), CONTRACT.digest)


# -- fast: rows and groups ------------------------------------------------------------------
def test_patient_groups_keep_input_order_and_share_only_multi_slide_patients() -> None:
    inputs = [
        SlideSource("/a", "a", 1, "P2"),
        SlideSource("/b", "b", 1, None),
        SlideSource("/c", "c", 1, "P1"),
        SlideSource("/d", "d", 1, "P2"),
    ]
    assert pt.patient_groups(inputs) == {"P2": ["a", "d"], "P1": ["c"]}
    assert pt.shared_slides(inputs) == {"a", "d"}


def test_patient_record_says_what_a_patient_got() -> None:
    pred = {n: None for n in PATIENT_PREDICTION_COLUMNS} | {
        "grade_classes": ["I", "II"],
        "grade_probs": [0.3, 0.7],
        "grade_pred": "II",
        "grade_pred_index": 1,
        "bin_edges": [0.0, math.inf],
        "hazards": [0.5],
        "survival": [0.5],
        "risk": -0.5,
        "median_survival_bin": 0,
        "risk_group": "high",
    }
    rec = patient_record(
        patient_id="P",
        slide_ids=["a", "b"],
        failed_slide_ids=["b"],
        n_tiles=7,
        prediction=pred,
        message=None,
        gene_panel_digest="sha256:p",
        lineage=LIN,
    )
    row = records_table([rec], "patients").to_pylist()[0]
    assert (row["status"], row["n_slides"], row["n_slides_scored"], row["n_slides_failed"]) == (
        "scored",
        2,
        1,
        1,
    )
    assert row["grade_pred"] == "II" and row["failed_slide_ids"] == ["b"]
    failed = patient_record(
        patient_id="Q",
        slide_ids=["c"],
        failed_slide_ids=["c"],
        n_tiles=0,
        prediction=None,
        message="no slide of the patient was scored",
        gene_panel_digest="sha256:p",
        lineage=LIN,
    )
    t = records_table([failed], "patients")
    assert t.schema.equals(PATIENTS, check_metadata=False)
    assert t.column("status").to_pylist() == ["failed"] and t.column("risk").null_count == 1
    with pytest.raises(DataError, match="at least one scored slide"):
        patient_record(**{**_args(), "failed_slide_ids": ["c"], "prediction": pred})
    with pytest.raises(DataError, match="must be unique"):
        patient_record(**{**_args(), "failed_slide_ids": ["x"]})


def _args() -> dict:
    return {
        "patient_id": "Q",
        "slide_ids": ["c"],
        "failed_slide_ids": [],
        "n_tiles": 1,
        "prediction": None,
        "message": None,
        "gene_panel_digest": "sha256:p",
        "lineage": LIN,
    }


# -- slow: real models, real slides ---------------------------------------------------------
@dataclass(frozen=True)
class Trained:
    gen: Path
    fus: Path
    slides: list[Path]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Trained:
    from tiny_training import tiny_bundles

    root = tmp_path_factory.getbasetemp() / "tiny-bundles"  # shared by the modules that use it
    cohort, gen, fus = tiny_bundles(root)
    return Trained(gen, fus, [cohort.slide_path(s) for s in cohort.slide_ids])


def _manifest(trained: Trained, folder: Path) -> Path:
    """P-A: two good slides; P-B: a good slide and a text file; P-C: one good slide; P-D: only
    a text file; one good slide without a patient."""
    folder.mkdir(parents=True, exist_ok=True)
    bad = folder / "notes.svs"
    bad.write_text("patient D, slide 1: see the report\n")
    s = trained.slides
    rows = [
        ("a1", s[0], "P-A"),
        ("b1", s[1], "P-B"),
        ("a2", s[2], "P-A"),
        ("c1", s[3], "P-C"),
        ("b2", bad, "P-B"),
        ("d1", bad, "P-D"),
        ("x1", s[4], ""),
    ]
    path = folder / "manifest.csv"
    path.write_text(
        "uri,slide_id,patient_id\n" + "".join(f"{p},{sid},{pid}\n" for sid, p, pid in rows)
    )
    return path


def _config(trained: Trained, manifest: Path, out: Path, run_id: str) -> ScoreConfig:
    return ScoreConfig(
        archive=str(manifest),
        output=str(out),
        run_id=run_id,
        generator=str(trained.gen),
        fusion=str(trained.fus),
        scratch_dir=str(out.parent / "scratch"),
    )


def _by_patient(out: Path, run_id: str) -> dict[str, dict]:
    return {r["patient_id"]: r for r in read_table(str(out), "patients", [run_id]).to_pylist()}


def test_patients_are_predicted_from_their_union_bags(trained: Trained, tmp_path: Path) -> None:
    from pathgen_batch.features import build_encoder, extract_slide
    from pathgen_batch.inference.bundle import load_bundle

    out = tmp_path / "out"
    cfg = _config(trained, _manifest(trained, tmp_path / "in"), out, "serial")
    p = prepare(cfg)
    state = cm.RunState.begin(p.layout, p.identity(), list_inputs(p), cfg.retry)
    ctx = worker_context(p)
    list(run_serial(TileEncoder(ctx), SlideScorer(ctx), state.inputs))
    with pytest.raises(DataError, match="patient 'P-A' has no commit yet"):
        list(pt.patient_records(state, cfg.retry))

    batches: list[list[str]] = []

    def predictor() -> pt.UnionPredictor:
        predict = union_predictor(ctx)

        def counted(items):  # the real models; the patients of each call noted
            batches.append([pid for pid, _ in items])
            return predict(items)

        return counted

    def score() -> int:
        return pt.score_patients(state, predictor, p.lineage, p.pair.panel.digest, cfg.retry)

    assert score() == 4 and score() == 0  # a second driver finds every commit
    assert batches == [["P-A"]]  # only a patient with two scored slides needs the models
    records = list(pt.patient_records(state, cfg.retry))

    def runs_record(n_scored: int, n_failed: int, n_tiles: int) -> dict:
        return {
            "status": "complete",
            "started_at": "2026-01-01T00:00:00+00:00",
            "finished_at": "2026-01-01T00:00:01+00:00",
            "archive": cfg.archive,
            "output": cfg.output,
            "n_slides": len(state.inputs),
            "n_scored": n_scored,
            "n_failed": n_failed,
            "n_tiles": n_tiles,
            "gene_panel_digest": p.pair.panel.digest,
            "features_written": False,
            "features_source_run": None,
            "timings_json": "{}",
            "config_json": "{}",
            "code_version": "test",
            **p.lineage.to_dict(),
        }

    done = cm.consolidate(state, runs_record, None, cfg.retry, patients=records)
    assert (done.n_scored, done.n_failed, done.n_patients) == (5, 2, 4)
    assert not (out / "features").exists()  # the kept bags are not a features table
    got = _by_patient(out, "serial")
    assert list(got) == ["P-A", "P-B", "P-C", "P-D"]  # first appearance in the manifest
    a, b, c, d = (got[k] for k in ("P-A", "P-B", "P-C", "P-D"))
    assert (a["status"], a["slide_ids"], a["n_slides_scored"], a["n_slides_failed"]) == (
        "scored",
        ["a1", "a2"],
        2,
        0,
    )
    assert (b["status"], b["failed_slide_ids"], b["n_slides_scored"]) == ("scored", ["b2"], 1)
    assert (d["status"], d["n_slides"], d["risk"], d["grade_probs"]) == ("failed", 1, None, None)
    assert "no slide of the patient was scored" in d["message"] and "d1" in d["message"]
    assert all(r["generator_version"] == p.lineage.generator_version for r in got.values())

    # the models applied directly to each patient's concatenated bag
    gen, fus = load_bundle(trained.gen), load_bundle(trained.fus)
    enc = build_encoder("stain-texture", options={"tile_px": 64, "scales": 2})
    s = trained.slides
    bags = {
        k: [extract_slide(s[i], enc).feats for i in idx]
        for k, idx in {"P-A": (0, 2), "P-B": (1,), "P-C": (3,)}.items()
    }
    union = [np.concatenate(v) for v in bags.values()]
    mean, _ = gen.generate(union, seed=cfg.seed)
    ref = fus.predict(union, mean)
    rows = [got[k] for k in bags]
    np.testing.assert_allclose(
        [r["grade_probs"] for r in rows], ref.grade_probs, rtol=1e-4, atol=1e-6
    )
    np.testing.assert_allclose([r["risk"] for r in rows], ref.risk, rtol=1e-4, atol=1e-6)
    assert [r["n_tiles"] for r in rows] == [len(u) for u in union]
    preds = {r["slide_id"]: r for r in read_table(str(out), "predictions", ["serial"]).to_pylist()}
    for col in ("grade_probs", "risk", "risk_lo", "grade_set", "risk_group"):
        assert c[col] == preds["c1"][col] and b[col] == preds["b1"][col]  # one scored slide
    assert a["risk"] != preds["a1"]["risk"]  # two slides: a prediction of its own
    sql = "SELECT patient_id, n_slides_failed FROM patients WHERE status = 'scored' ORDER BY 1"
    assert query(str(out), sql).values.tolist() == [["P-A", 0], ["P-B", 1], ["P-C", 0]]


@pytest.mark.ray
def test_score_archive_adds_the_patients_table_once(trained: Trained, tmp_path: Path) -> None:
    out = tmp_path / "out"
    cfg = _config(trained, _manifest(trained, tmp_path / "in"), out, "ray")
    first = score_archive(cfg)
    assert (first.n_scored, first.n_failed) == (5, 2)
    assert first.tables["patients"].endswith("patients/run_id=ray")
    before = read_table(str(out), "patients", ["ray"])
    assert before.num_rows == 4
    got = _by_patient(out, "ray")
    assert got["P-A"]["n_slides_scored"] == 2 and got["P-D"]["status"] == "failed"
    again = score_archive(cfg)
    assert again.already_complete and "patients" in again.tables
    assert read_table(str(out), "patients", ["ray"]).equals(before)
