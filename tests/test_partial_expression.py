"""Patients without expression: RNA for only some patients, H&E for all.

They train and score no model that reads a real transcriptome (the generator, the fusion
model's training, the omics MLP, the real condition, CoxNet, ridge), and every slide-only or
synthetic-transcriptome model uses them; ``evaluate`` says how many patients each number used.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from test_baselines import CFG as BASE_CFG
from test_baselines import TEST, TRAIN
from test_baselines import cohort as baseline_cohort
from tiny_training import TINY_CV, build_training_cohort, threads

from pathgen_batch.cli import main
from pathgen_batch.config import to_dict
from pathgen_batch.errors import DataError
from pathgen_batch.training.baselines import (
    coxnet_expression,
    mean_expression,
    ridge_expression,
)
from pathgen_batch.training.data import TrainingData, load_training_data
from pathgen_batch.training.final import train_final
from pathgen_batch.training.trainers import train_predictor


def _without_expression(data: TrainingData, rows: np.ndarray) -> TrainingData:
    """``data`` with the expression rows ``rows`` missing (NaN)."""
    x = data.expression.copy()
    x[rows] = np.nan
    return TrainingData(**{**_fields(data), "expression": x})


def _fields(data: TrainingData) -> dict:
    keys = TrainingData.__dataclass_fields__
    return {k: getattr(data, k) for k in keys if k != "digest"}


def test_a_missing_expression_row_is_all_nan_and_a_partial_one_an_error() -> None:
    data = baseline_cohort()
    gone = np.arange(0, data.n_patients, 3)
    part = _without_expression(data, gone)
    assert part.expression_known.sum() == data.n_patients - len(gone)
    assert not part.expression_known[gone].any()
    np.testing.assert_array_equal(part.with_expression([0, 1, 2, 3]), [1, 2])
    assert part.subset([0, 1]).expression_known.tolist() == [False, True]
    assert part.digest != data.digest
    x = data.expression.copy()
    x[4, 2] = np.nan  # one gene of a patient that has the others
    with pytest.raises(DataError, match=r"rows that are not wholly missing.*patient p004 gene g2"):
        TrainingData(**{**_fields(data), "expression": x})
    x[4] = np.nan
    x[5, 0] = np.inf
    with pytest.raises(DataError, match="first for patient p005 gene g0"):
        TrainingData(**{**_fields(data), "expression": x})


def test_expression_baselines_use_only_the_patients_with_expression() -> None:
    data = baseline_cohort()
    gone = np.arange(0, data.n_patients, 3)  # a third of the patients, in both folds
    part = _without_expression(data, gone)
    keep = np.flatnonzero(part.expression_known)
    sub = data.subset(keep)  # the same patients with expression, as a cohort of their own
    where = {p: i for i, p in enumerate(keep)}
    tr_sub = np.asarray([where[i] for i in TRAIN if i in where])
    te_sub = np.asarray([where[i] for i in TEST if i in where])
    has = part.expression_known[TEST]
    cox = coxnet_expression(part, TRAIN, TEST, BASE_CFG)
    assert cox.risk.shape == (len(TEST),)
    assert np.isnan(cox.risk[~has]).all() and np.isfinite(cox.risk[has]).all()
    alone = coxnet_expression(sub, tr_sub, te_sub, BASE_CFG)
    np.testing.assert_allclose(cox.risk[has], alone.risk, rtol=1e-9)
    assert cox.metrics == pytest.approx(alone.metrics, rel=1e-9)
    ridge = ridge_expression(part, TRAIN, TEST, BASE_CFG)
    assert ridge.predicted.shape == (len(TEST), data.n_genes)  # every slide gets one
    assert np.isfinite(ridge.predicted).all()
    assert ridge.fidelity["n_patients"] == int(has.sum())
    ridge_alone = ridge_expression(sub, tr_sub, te_sub, BASE_CFG)
    assert ridge.params == ridge_alone.params
    np.testing.assert_allclose(ridge.predicted[has], ridge_alone.predicted, rtol=1e-9)
    mean = mean_expression(part, TRAIN, TEST)
    np.testing.assert_allclose(
        mean.predicted[0], data.expression[TRAIN[part.expression_known[TRAIN]]].mean(0)
    )
    assert mean.fidelity["n_patients"] == int(has.sum())


# -- a cohort with a third of its patients' expression removed, trained and evaluated ----------


@pytest.fixture(scope="module")
def partial_cohort(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, list[str]]:
    """(cohort, features, the patients without expression): the shared tiny cohort with the
    expression rows of every third patient removed."""
    with threads(1):
        cohort, feats = build_training_cohort(tmp_path_factory.getbasetemp())
    root = tmp_path_factory.mktemp("partial") / "cohort"
    shutil.copytree(cohort, root)
    (root / "cohort.json").unlink()
    expr = pd.read_parquet(root / "expression.parquet")
    gone = expr["patient_id"].iloc[::3].tolist()
    expr[~expr["patient_id"].isin(gone)].to_parquet(root / "expression.parquet", index=False)
    return root, feats, gone


def test_validate_reports_the_patients_without_expression(partial_cohort) -> None:
    root, _, gone = partial_cohort
    r = CliRunner().invoke(main, ["cohort", "validate", str(root), "--no-open-slides"])
    assert r.exit_code == 0, r.output
    assert f"  patients without expression: {len(gone)} (warning; e.g. {gone[:3]})" in r.output


def test_a_cohort_without_any_expression_is_one_line_naming_the_file(
    partial_cohort, tmp_path: Path
) -> None:
    root, feats, _ = partial_cohort
    none = tmp_path / "none"
    shutil.copytree(root, none)
    expr = pd.read_parquet(none / "expression.parquet")
    expr.iloc[:0].to_parquet(none / "expression.parquet", index=False)
    r = CliRunner().invoke(main, ["cohort", "validate", str(none), "--no-open-slides"])
    assert r.exit_code == 2
    problems = [line for line in r.output.splitlines() if not line.startswith("Error:")]
    assert problems == [
        "expression.parquet column patient_id: no patient has expression (none of the 48 "
        "patient(s) of clinical.parquet); the generator needs some"
    ], r.output
    with pytest.raises(DataError, match=r"expression\.parquet column patient_id: no patient has"):
        load_training_data(none, feats)


@pytest.mark.slow
def test_evaluate_uses_the_patients_with_expression_where_a_model_reads_it(
    partial_cohort, tmp_path: Path
) -> None:
    root, feats, gone = partial_cohort
    data = load_training_data(root, feats)
    assert int(data.expression_known.sum()) == data.n_patients - len(gone)
    (tmp_path / "cv.json").write_text(json.dumps(to_dict(TINY_CV)))
    out = tmp_path / "out"
    args = ["--cohort", str(root), "--features", str(feats), "--config", str(tmp_path / "cv.json")]
    with threads(1):
        r = CliRunner().invoke(main, ["evaluate", *args, "--out", str(out)])
    assert r.exit_code == 0, r.output
    m = pd.read_csv(out / "metrics_per_fold.csv")
    fid = pd.read_csv(out / "fidelity_per_fold.csv")
    has = data.expression_known
    for k in (0, 1):
        test = data.folds == k
        rows = m[m["fold"] == k].set_index("condition")
        for cond in ("real", "omics_mlp", "coxnet", "synthetic_rna"):  # the patients with RNA
            assert rows.loc[cond, "n_survival"] == int((data.outcome_known & test & has).sum())
        for cond in ("real", "omics_mlp"):
            assert rows.loc[cond, "n_grade"] == int(((data.grade >= 0) & test & has).sum())
        for cond in ("synthetic", "wsi_only", "attention_mil", "wsi_trained", "cox_grade"):
            assert rows.loc[cond, "n_survival"] == int((data.outcome_known & test).sum()), cond
        assert rows.loc["synthetic", "n_grade"] == int(((data.grade >= 0) & test).sum())
        # the fusion model trained on patients with expression, attention MIL on all
        assert rows.loc["attention_mil", "n_train_grade"] > rows.loc["real", "n_train_grade"]
        f = fid[fid["fold"] == k].iloc[0]
        assert f["n_test"] == int((test & has).sum()) and f["n_patients"] == f["n_test"]
    assert np.isfinite(m[m["condition"] == "synthetic"]["harrell_c"]).all()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["data"]["expression_known"] == int(has.sum())
    real_c = summary["metrics"]["real"]["harrell_c"]
    assert real_c["n"] == int((data.outcome_known & has).sum())
    assert summary["metrics"]["synthetic"]["harrell_c"]["n"] == int(data.outcome_known.sum())
    # synthetic vs the real-expression conditions: on the same patients
    assert {"synthetic_rna vs real", "synthetic_rna vs coxnet", "synthetic vs wsi_trained"} <= set(
        summary["paired"]
    )
    assert set(summary["equivalence"]) == {"synthetic_rna vs real"}
    assert summary["metrics"]["synthetic_rna"]["harrell_c"]["n"] == real_c["n"]
    gen_train = summary["patients"]["generator_train"]
    assert all(0 < n < int(has.sum()) for n in gen_train)
    oof = pd.read_parquet(out / "oof_predictions.parquet")
    no_rna = set(gone)
    assert not set(oof[oof["condition"] == "real"]["patient_id"]) & no_rna
    assert no_rna <= set(oof[oof["condition"] == "synthetic"]["patient_id"])
    syn = pd.read_parquet(out / "synthetic_expression.parquet")
    assert len(syn) == data.n_patients  # every slide gets its synthetic transcriptome
    table = r.stdout
    assert f"{data.n_patients} patients, {int(has.sum())} with expression" in table
    n_real = f"{int((data.outcome_known & has).sum())}/{int(((data.grade >= 0) & has).sum())}"
    real_line = next(x for x in table.splitlines() if x.startswith("fusion + real"))
    assert real_line.endswith(n_real)
    assert "generator" in table and "(with expression)" in table
    cox_line = next(x for x in table.splitlines() if "CoxNet (expression)" in x)
    assert cox_line.endswith(f"n surv {int((data.outcome_known & has).sum())}")
    ridge_line = next(x for x in table.splitlines() if "ridge (mean-pooled tiles)" in x)
    assert ridge_line.endswith(f"; n {int(has.sum())}")


@pytest.mark.slow
def test_final_models_train_the_generator_on_patients_with_expression(partial_cohort) -> None:
    root, feats, gone = partial_cohort
    data = load_training_data(root, feats)
    with threads(1):
        gen, fus = train_final(data, TINY_CV)
    no_rna = set(gone)
    ids = list(data.patient_ids)
    val = gen.provenance["val_patients"]
    assert val and not set(val) & no_rna
    assert gen.provenance["n_left_out_without_expression"] > 0
    left = gen.provenance["n_train"] + len(val) + gen.provenance["n_left_out_without_expression"]
    assert left == data.n_patients - len(gen.provenance["cal_patients"])
    conformal = fus.provenance["conformal"]
    cal = gen.provenance["cal_patients"]
    assert conformal["n_cal"] == len(cal)  # the grade sets: every calibration patient
    assert conformal["n_cal_risk"] == sum(p not in no_rna for p in cal) < len(cal)
    assert not set(fus.provenance["val_patients"]) & no_rna
    assert fus.provenance["n_train"] == sum(
        data.expression_known[ids.index(p)] for p in ids if p not in set(val) | set(cal)
    )


@pytest.mark.slow
def test_slide_only_models_train_on_every_patient(partial_cohort) -> None:
    root, feats, _ = partial_cohort
    data = load_training_data(root, feats)
    tr, va = np.flatnonzero(data.folds == 0), np.flatnonzero(data.folds == 1)
    with threads(1):
        wsi = train_predictor(data, tr, va, TINY_CV.wsi_trained)  # absent token for no RNA
        mil = train_predictor(data, tr, va, TINY_CV.attention_mil)
        fus = train_predictor(data, tr, va, TINY_CV.fusion)
    for model in (wsi, mil):
        assert model.provenance["n_train"] == len(tr) and model.provenance["n_val"] == len(va)
        assert model.provenance["n_left_out_without_expression"] == 0
    assert fus.provenance["n_train"] == int(data.expression_known[tr].sum())
    assert fus.provenance["n_left_out_without_expression"] == int(
        (~data.expression_known[np.concatenate([tr, va])]).sum()
    )
    known = data.with_expression(tr)  # the expression scaler of each: those with expression
    for model in (wsi, mil, fus):
        np.testing.assert_allclose(
            model.expression_scaler.mean, data.expression[known].mean(0), rtol=1e-10
        )
    assert np.isfinite(wsi.provenance["history"]["train_loss"]).all()


@pytest.mark.slow
def test_train_commands_say_how_many_patients_were_left_out(partial_cohort, tmp_path) -> None:
    root, feats, _ = partial_cohort
    (tmp_path / "cv.json").write_text(json.dumps(to_dict(TINY_CV)))
    args = ["--cohort", str(root), "--features", str(feats), "--config", str(tmp_path / "cv.json")]
    runner = CliRunner()
    with threads(1):
        gen = runner.invoke(main, ["train", "generator", *args, "--out", str(tmp_path / "g")])
        fus = runner.invoke(
            main,
            [
                "train",
                "fusion",
                *args,
                "--generator",
                str(tmp_path / "g"),
                "--out",
                str(tmp_path / "f"),
            ],
        )
    assert gen.exit_code == 0 and fus.exit_code == 0, gen.output + fus.output
    data = load_training_data(root, feats)
    gen_line = next(x for x in gen.output.splitlines() if x.startswith("generator bundle"))
    n = json.loads((tmp_path / "g" / "bundle.json").read_text())["provenance"]["n_train"]
    assert f": {n} training / " in gen_line and "more left out: no expression" in gen_line
    assert n < int(data.expression_known.sum()) < data.n_patients
    assert "more left out: no expression" in fus.output
