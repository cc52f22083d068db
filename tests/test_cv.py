"""Cross-validation end to end on a small cohort: every metric, the fold discipline, outputs."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from click.testing import CliRunner
from tiny_training import TINY_CV, build_training_cohort, threads

from pathgen_batch.cohort import load_cohort
from pathgen_batch.config import to_dict
from pathgen_batch.errors import DataError
from pathgen_batch.inference import TrainedFusion, TrainedGenerator
from pathgen_batch.inference.bundle import load_bundle
from pathgen_batch.training.cv import (
    COMPARISONS,
    CONDITIONS,
    METRICS,
    CVResult,
    FoldResult,
    plan_folds,
    run_cv,
    run_fold,
)
from pathgen_batch.training.cv_result import COUNTS
from pathgen_batch.training.data import TrainingData, assemble, load_training_data
from pathgen_batch.training.final import train_final


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny matrices gain nothing from intra-op threads, and lose much on a shared CPU."""
    with threads(1):
        yield


CFG = TINY_CV


@pytest.fixture(scope="session")
def cohort_dirs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    with threads(1):
        return build_training_cohort(tmp_path_factory.getbasetemp())


@pytest.fixture(scope="session")
def data(cohort_dirs) -> TrainingData:
    return load_training_data(*cohort_dirs)


@pytest.fixture(scope="session")
def cv(data: TrainingData, tmp_path_factory: pytest.TempPathFactory) -> tuple[CVResult, Path, list]:
    out = tmp_path_factory.mktemp("cv")
    lines: list = []
    with threads(1):
        result = run_cv(data, CFG, out, progress=lines.append, echo=lines.append)
    return result, out, lines


def test_every_metric_for_every_condition_and_fold(cv, data: TrainingData) -> None:
    result, _, _ = cv
    m = result.to_frame()
    assert sorted(m["condition"].unique()) == sorted(CONDITIONS)
    assert sorted(m["fold"].unique()) == [0, 1] and len(m) == 2 * len(CONDITIONS)
    values = m[list(METRICS)].to_numpy(dtype=float)
    assert np.isfinite(values).all(), m
    for col in ("harrell_c", "uno_c", "td_auc", "accuracy", "balanced_accuracy", "macro_auc"):
        assert ((m[col] >= 0) & (m[col] <= 1)).all()
    assert (m["ibs"] > 0).all() and (m["ibs"] < 1).all()
    f = result.fidelity
    assert list(f["fold"]) == [0, 1]
    for key in ("n_significant_pearson", "mean_pearson", "mae", "flattened_spearman"):
        assert np.isfinite(f[key]).all()
    assert result.pooled_fidelity["n_patients"] == data.n_patients
    c = result.conformal
    assert ((c["grade_coverage"] >= 0) & (c["grade_coverage"] <= 1)).all()
    assert ((c["grade_set_size"] >= 0) & (c["grade_set_size"] <= 3)).all()
    assert ((c["risk_coverage"] >= 0) & (c["risk_coverage"] <= 1)).all()
    assert (c["risk_width"] >= 0).all()
    assert list(c["n_test"]) == [int((data.folds == k).sum()) for k in (0, 1)]
    for k in (0, 1):  # how many patients each metric and loss used
        rows = m[m["fold"] == k]
        test, train = data.folds == k, data.folds != k
        assert (rows["n_survival"] == int(data.outcome_known[test].sum())).all()
        assert (rows["n_grade"] == int((data.grade[test] >= 0).sum())).all()
        assert (rows["n_train_survival"] < int(data.outcome_known[train].sum())).all()  # - val
    summary = result.summary()
    assert summary["metrics"]["synthetic"]["harrell_c"]["n"] == int(data.outcome_known.sum())
    assert summary["metrics"]["omics_mlp"]["accuracy"]["n"] == int((data.grade >= 0).sum())
    assert summary["patients"]["generator_train"] == list(f["n_train"])
    assert all(0 < n < data.n_patients for n in summary["patients"]["generator_train"])


def test_paired_tests_compare_folds(cv) -> None:
    result, _, _ = cv
    assert set(result.paired) == {f"{a} vs {b}" for a, b in COMPARISONS}
    m = result.metrics
    for a, b in COMPARISONS:
        for metric, t in result.paired[f"{a} vs {b}"].items():
            xa = m[m["condition"] == a].sort_values("fold")[metric].to_numpy()
            xb = m[m["condition"] == b].sort_values("fold")[metric].to_numpy()
            assert t["n"] == 2
            assert t["mean_difference"] == pytest.approx(float(np.mean(xa - xb)), abs=1e-12)


def test_outputs_are_written(cv, data: TrainingData) -> None:
    result, out, _ = cv
    for name in (
        "metrics_per_fold.csv",
        "fidelity_per_fold.csv",
        "conformal_per_fold.csv",
        "summary.json",
        "table.txt",
        "oof_predictions.parquet",
        "synthetic_expression.parquet",
        "histories.json",
    ):
        assert (out / name).is_file(), name
    text = (out / "summary.json").read_text()
    assert "NaN" not in text and "Infinity" not in text
    summary = json.loads(text)
    assert summary["folds"] == 2 and set(summary["metrics"]) == set(CONDITIONS)
    assert summary["conformal"]["calibration_disjoint"] is True
    assert "real transcriptome" in summary["conformal"]["risk_interval_covers"]
    for key in ("grade_coverage", "grade_set_size", "risk_coverage", "risk_width"):
        assert 0 <= summary["conformal"][key]["mean"] < 4, key
    fid = summary["fidelity"]
    for key in (
        "mean_pearson_posterior_mean",
        "mean_pearson_n1",
        "mean_pearson_n25",
        "mae_n10",
        "crps",
        "crps_climatology",
        "mae_constant",
        "n_well_predicted_vs_random",
    ):
        assert math.isfinite(fid[key]["mean"]), key
    assert fid["crps"]["mean"] <= fid["mae_n1"]["mean"]  # spread earns credit: CRPS <= MAE
    assert summary["cohort_digest"] == data.digest
    oof = pd.read_parquet(out / "oof_predictions.parquet")
    assert len(oof) == data.n_patients * len(CONDITIONS)
    per_patient = oof.groupby("patient_id")["fold"].nunique()
    assert (per_patient == 1).all() and len(per_patient) == data.n_patients
    fold_of = dict(zip(data.patient_ids, data.folds, strict=True))
    assert all(fold_of[p] == f for p, f in zip(oof["patient_id"], oof["fold"], strict=True))
    probs = oof[[f"p_{c}" for c in data.grade_classes]].to_numpy()
    np.testing.assert_allclose(probs.sum(1), 1.0, rtol=1e-9)
    syn = oof[oof["condition"] == "synthetic"]
    assert syn["risk_lo"].notna().all() and (syn["risk_lo"] <= syn["risk_hi"]).all()
    assert oof[oof["condition"] == "real"]["risk_lo"].isna().all()
    expr = pd.read_parquet(out / "synthetic_expression.parquet")
    assert list(expr["patient_id"]) == list(data.patient_ids)
    table = result.table()
    assert (out / "table.txt").read_text().strip() == table.strip()
    for label in CONDITIONS.values():
        assert label in table
    assert "Wilcoxon" in table and "2-fold patient-level CV, 48 patients" in table
    assert "n surv/grade" in table and "training patients per fold: generator" in table
    assert "posterior-mean estimate" in table and "n=25:" in table and "CRPS" in table
    synthetic_line = next(x for x in table.splitlines() if x.startswith(CONDITIONS["synthetic"]))
    assert synthetic_line.endswith("48/48")


def test_progress_lines_match_the_histories(cv) -> None:
    result, _, lines = cv
    epochs = [e for e in lines if not isinstance(e, str)]
    # each name prefixes MLflow metric keys: alphanumerics, _ - . space : / only
    assert all(re.fullmatch(r"[\w\-. :/]+", e.model) for e in epochs)
    for h in result.histories:
        name = f"fold {h['fold']} {h['model']}"
        if h.get("loss_weights"):  # one fit per candidate weighting, the kept one's epochs in h
            name += f" survival weight {h['survival_weight']:g}"
            fits = {e.model for e in epochs if e.model.startswith(f"fold {h['fold']} fusion surv")}
            assert len(fits) == len(h["loss_weights"]["candidates"]) == 2
        assert sum(e.model == name for e in epochs) == h["epochs_run"], name
    assert any(isinstance(s, str) and s.startswith("fold 1: done") for s in lines)


def test_scalers_and_bins_come_from_the_training_fold(data: TrainingData) -> None:
    plan = plan_folds(data, CFG)[0]
    assert not set(plan.test) & set(plan.training_part)
    assert (data.folds[plan.test] == plan.fold).all()
    assert (data.folds[plan.training_part] != plan.fold).all()
    parts = (set(plan.train), set(plan.val), set(plan.cal))
    assert not (parts[0] & parts[1] or parts[0] & parts[2] or parts[1] & parts[2])
    assert len(plan.training_part) == sum(map(len, parts))
    fold = run_fold(data, plan, CFG)
    assert fold.fold == plan.fold and list(fold.metrics) == list(CONDITIONS)
    assert set(fold.metrics["synthetic"]) == set(METRICS) | set(COUNTS)
    gen, fus = fold.generator, fold.fusion
    tiles = np.concatenate([data.bags[i] for i in plan.train]).astype(np.float64)
    np.testing.assert_allclose(gen.feature_scaler.mean, tiles.mean(0), rtol=1e-10)
    np.testing.assert_allclose(fus.feature_scaler.std, tiles.std(0, ddof=1), rtol=1e-10)
    np.testing.assert_allclose(
        gen.expression_scaler.mean, data.expression[plan.train].mean(0), rtol=1e-10
    )
    events = np.sort(data.time[plan.train][data.event[plan.train]])
    np.testing.assert_allclose(fus.bin_edges[1:-1], np.quantile(events, [1 / 3, 2 / 3]))
    assert fus.grade_conformal is not None and fus.grade_conformal.n_cal == len(plan.cal)
    # calibration patients neither trained nor chose a checkpoint of either model
    ids = data.patient_ids
    cal = set(fus.provenance["conformal"]["cal_patients"])
    assert cal == {ids[i] for i in plan.cal}
    assert cal.isdisjoint(gen.provenance["val_patients"])
    assert cal.isdisjoint(fus.provenance["val_patients"])
    assert cal.isdisjoint({ids[i] for i in plan.train})
    assert gen.provenance["cal_patients"] == fus.provenance["conformal"]["cal_patients"]
    assert fold.conformal["calibration_disjoint"] == 1.0 and fold.conformal["n_cal"] == len(cal)
    # the kept epochs were chosen on the targets, and the curves are kept
    hist = {h["model"]: h for h in fold.histories}
    g = hist["generator"]
    assert g["select_on"] == "pearson" and len(g["val_score"]) == g["epochs_run"]
    assert g["best_epoch"] == 1 + int(np.nanargmax(g["val_score"]))
    f = hist["fusion"]
    assert f["select_on"] == "survival_nll" and len(f["val_c_index"]) == f["epochs_run"]
    assert f["best_epoch"] == 1 + int(np.nanargmin(f["val_score"]))
    assert (
        f["val_score"] == f["val_survival_nll"]
        and f["val_loss"][f["best_epoch"] - 1] == (f["best_val_loss"])
    )


def _altered_test_fold(cohort_dirs, data: TrainingData, fold: int) -> TrainingData:
    """The same cohort with the test fold's expression, features, grades and outcomes changed."""
    cohort = load_cohort(cohort_dirs[0])
    clinical, expression = (
        cohort.clinical.assign(slide_id=cohort.slide_ids),
        cohort.expression.copy(),
    )
    test = data.folds == fold
    expression.loc[test] = expression.loc[test].to_numpy() * 3.0 + 5.0
    clinical.loc[test, "time"] = clinical.loc[test, "time"] * 0.1
    clinical.loc[test, "event"] = ~clinical.loc[test, "event"]
    gi = clinical["grade_index"].astype("Int64")
    clinical["grade_index"] = gi.where(~test, (gi + 1) % 3)
    bags = {
        s: (c, (b * 2.0 + 1.0).astype(np.float32) if t else b)
        for s, c, b, t in zip(data.slide_ids, data.coords, data.bags, test, strict=True)
    }
    return assemble(clinical, expression, cohort.panel, bags, data.contract, data.grade_classes)


def test_the_test_fold_never_influences_training(cohort_dirs, data: TrainingData) -> None:
    altered = _altered_test_fold(cohort_dirs, data, fold=1)
    plan = plan_folds(data, CFG)[1]
    plan_alt = plan_folds(altered, CFG)[1]
    np.testing.assert_array_equal(plan.val, plan_alt.val)
    a = run_fold(data, plan, CFG)
    b = run_fold(altered, plan_alt, CFG)
    for key in ("generator", "fusion"):
        sa, sb = getattr(a, key).model.state_dict(), getattr(b, key).model.state_dict()
        assert all(torch.equal(sa[k], sb[k]) for k in sa), key

    def losses(fold: FoldResult) -> list:
        return [(h["model"], h["train_loss"], h["val_loss"]) for h in fold.histories]

    assert losses(a) == losses(b)
    assert a.fusion.grade_conformal == b.fusion.grade_conformal
    ma = pd.DataFrame(a.metric_rows()).set_index("condition")
    mb = pd.DataFrame(b.metric_rows()).set_index("condition")
    assert not np.allclose(ma["harrell_c"], mb["harrell_c"])  # the test fold is scored


def test_bad_folds_fail_before_training(cohort_dirs, data: TrainingData) -> None:
    cohort = load_cohort(cohort_dirs[0])
    calls: list = []
    train_part = data.folds != 0  # fold 0's training part is fold 1

    one_grade = cohort.clinical.assign(slide_id=cohort.slide_ids)
    one_grade["grade_index"] = one_grade["grade_index"].astype("Int64").where(~train_part, 2)
    d = assemble(
        one_grade, cohort.expression, cohort.panel, _bags(data), data.contract, data.grade_classes
    )
    with pytest.raises(DataError, match=r"fold 0: training part.*at least two grade classes"):
        run_cv(d, CFG, progress=calls.append, echo=calls.append)

    no_events = cohort.clinical.assign(slide_id=cohort.slide_ids)
    no_events.loc[train_part, "event"] = False
    d = assemble(
        no_events, cohort.expression, cohort.panel, _bags(data), data.contract, data.grade_classes
    )
    with pytest.raises(DataError, match=r"fold 0: training part: 24 patient.*no events"):
        run_cv(d, CFG, progress=calls.append, echo=calls.append)
    assert calls == []


def _bags(data: TrainingData) -> dict:
    return {s: (c, b) for s, c, b in zip(data.slide_ids, data.coords, data.bags, strict=True)}


def test_final_models_are_saved_as_bundles(data: TrainingData, tmp_path: Path) -> None:
    gen, _ = train_final(data, CFG, tmp_path)
    g = load_bundle(tmp_path / "generator")
    f = load_bundle(tmp_path / "fusion")
    assert isinstance(g, TrainedGenerator) and isinstance(f, TrainedFusion)
    assert f.grade_conformal is not None and f.risk_conformal is not None
    assert g.provenance["val_patients"] == f.provenance["val_patients"]
    assert g.provenance["cohort_digest"] == data.digest
    assert sorted(g.provenance["train_folds"]) == [0, 1]
    bags = [data.bags[i] for i in range(3)]
    syn, _ = g.generate(bags)
    p = f.predict(bags, syn)
    assert p.grade_sets is not None and p.risk_lo is not None
    np.testing.assert_array_equal(syn, gen.generate(bags)[0])


def test_cli_evaluate(cohort_dirs, tmp_path: Path) -> None:
    from pathgen_batch.cli.evaluate import evaluate

    cfg = tmp_path / "cv.json"
    cfg.write_text(json.dumps(to_dict(CFG)))
    args = ["--cohort", str(cohort_dirs[0]), "--features", str(cohort_dirs[1])]
    r = CliRunner().invoke(
        evaluate, [*args, "--out", str(tmp_path / "cv"), "--config", str(cfg), "--epochs", "2"]
    )
    assert r.exit_code == 0, r.output
    assert "2-fold patient-level CV" in r.stdout and "fold 0 generator epoch 2/2" in r.stderr
    summary = json.loads((tmp_path / "cv" / "summary.json").read_text())
    assert summary["config"]["generator"]["epochs"] == 2
    assert summary["config"]["fusion"]["epochs"] == 2
    r = CliRunner().invoke(evaluate, [*args, "--out", str(tmp_path / "x"), "--folds", "60"])
    assert isinstance(r.exception, DataError) and "cannot fill 60 folds" in str(r.exception)
    assert math.isfinite(summary["metrics"]["synthetic"]["harrell_c"]["mean"])
