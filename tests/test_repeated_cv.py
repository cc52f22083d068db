"""Repeated CV end to end on the tiny cohort (``evaluate --repeats 2``): 2 repeats x 2 folds
with seeds recorded, the baselines on the same folds, corrected tests Holm-adjusted across the
table, TOST, pooled C."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from test_baselines import cohort as synthetic_cohort
from test_cv import CFG as CV_CFG
from tiny_training import build_training_cohort, threads

from pathgen_batch.config import to_dict
from pathgen_batch.errors import ConfigError
from pathgen_batch.evaluation import corrected_resampled_t, holm
from pathgen_batch.training.data import TrainingData, load_training_data
from pathgen_batch.training.repeated_cv import (
    PROTOCOL_COMPARISONS,
    held_out_patients,
    plan_repeats,
)

CFG = dataclasses.replace(CV_CFG, seed=5)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> TrainingData:
    with threads(1):
        return load_training_data(*build_training_cohort(tmp_path_factory.getbasetemp()))


@pytest.fixture(scope="module")
def repeated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``pathgen-batch evaluate --repeats 2`` of the tiny config, seed 5."""
    from pathgen_batch.cli.evaluate import evaluate

    tmp = tmp_path_factory.mktemp("repeated")
    (tmp / "cv.json").write_text(json.dumps(to_dict(CFG)))
    cohort, feats = build_training_cohort(tmp_path_factory.getbasetemp())
    args = ["--cohort", str(cohort), "--features", str(feats), "--config", str(tmp / "cv.json")]
    with threads(1):
        r = CliRunner().invoke(
            evaluate, [*args, "--out", str(tmp / "out"), "--repeats", "2", "--seed", "5"]
        )
    assert r.exit_code == 0, r.output
    assert "2 x 2 CV (4 folds)" in r.stdout and "repeat 2/2 (seed 6)" in r.stderr
    return tmp / "out"


def test_repeats_draw_new_folds_with_recorded_seeds() -> None:
    data = synthetic_cohort()  # 120 patients, the fold column alternates 0, 1
    plans = plan_repeats(data, CFG, 3)
    assert [r.seed for r in plans] == [5, 6, 7]
    assert all(len(r.plans) == 2 for r in plans)  # K = the cohort's number of folds
    for r in plans:  # each repeat covers everyone once
        covered = sorted(np.concatenate([p.test for p in r.plans]).tolist())
        assert covered == list(range(data.n_patients))
    assert [p.test.tolist() for p in plans[0].plans] != [p.test.tolist() for p in plans[1].plans]
    one = plan_repeats(data, CFG, 1)[0]  # R = 1: the cohort's own folds, as run_cv uses
    assert one.seed == 5
    assert one.plans[0].test.tolist() == np.flatnonzero(data.folds == 0).tolist()
    five = plan_repeats(data, dataclasses.replace(CFG, folds=5), 2)
    assert [len(r.plans) for r in five] == [5, 5]
    assert set(held_out_patients(data, plans[:2])) == {0, 1, 1000, 1001}
    with pytest.raises(ConfigError, match="repeats"):
        plan_repeats(data, CFG, 0)


@pytest.mark.slow
def test_repeated_cv_summary(repeated: Path) -> None:
    out = repeated
    summary = json.loads((out / "summary.json").read_text())
    assert summary["repeats"]["n"] == 2 and summary["repeats"]["seeds"] == [5, 6]
    conds = (
        "real", "synthetic", "wsi_trained", "attention_mil", "omics_mlp",
        "coxnet", "cox_grade", "km_null", "ridge_synthetic",
    )  # fmt: skip
    for cond in conds:
        assert summary["metrics"][cond]["harrell_c"]["folds"] == 4  # 2 x 2 folds
        assert cond in summary["conditions"]
    # the trained WSI-only comparator is scored for grade too, and tested against synthetic
    assert summary["metrics"]["wsi_trained"]["macro_auc"]["folds"] == 4
    assert "synthetic vs wsi_trained" in summary["paired"]
    assert "diagnostic" in summary["conditions"]["wsi_only"]
    assert not any("wsi_only" in k for k in summary["paired"])  # the diagnostic is not tested
    gen, ridge = summary["fidelity"]["generator"], summary["fidelity"]["ridge"]
    assert gen["mean_pearson"]["folds"] == ridge["mean_pearson"]["folds"] == 4
    assert summary["metrics"]["km_null"]["harrell_c"]["mean"] == 0.5
    assert set(summary["fidelity"]) == {"generator", "ridge", "mean_expression"}
    assert set(summary["paired"]) == {f"{a} vs {b}" for a, b in PROTOCOL_COMPARISONS}
    # the loss weighting each predictor chose on its fold's validation patients, per fold
    sel = summary["model_selection"]
    assert (
        set(sel["fusion"]["survival_weight"]) <= {0.3, 0.7}
        and len(sel["fusion"]["best_epoch"]) == 4
    )
    assert set(sel) >= {"generator", "fusion", "attention_mil", "omics_mlp"}
    assert "survival_weight" not in sel["generator"]
    assert set(sel["generator"]["sampler_steps"]) <= {3, 5}
    assert len(sel["generator"]["sampler_steps"]) == 4
    assert len(summary["baseline_params"]["wsi_trained"]["survival_weight"]) == 4
    histories = json.loads((out / "histories.json").read_text())
    fus = [h for h in histories if h["model"] == "fusion"]
    assert all(h["loss_weights"]["candidates"] == [0.3, 0.7] for h in fus)
    assert all(len(h["val_grade_ce"]) == h["epochs_run"] for h in fus)
    # p_holm is Holm over every p_corrected of the table; each p_corrected is the corrected t
    cells = [(k, m) for k, per in summary["paired"].items() for m in per]
    np.testing.assert_allclose(
        [summary["paired"][k][m]["p_holm"] for k, m in cells],
        holm([summary["paired"][k][m]["p_corrected"] for k, m in cells]),
    )
    rows = pd.read_csv(out / "metrics_per_fold.csv").sort_values(["repeat", "fold"])
    d = (
        rows[rows["condition"] == "synthetic"]["harrell_c"].to_numpy()
        - rows[rows["condition"] == "real"]["harrell_c"].to_numpy()
    )
    sizes = summary["repeats"]
    want = corrected_resampled_t(d, n_train=sizes["n_train_mean"], n_test=sizes["n_test_mean"])
    got = summary["paired"]["synthetic vs real"]["harrell_c"]
    assert got["p_corrected"] == pytest.approx(want.p)
    eq = summary["equivalence"]["synthetic vs real"]
    assert eq["harrell_c"]["margin"] == 0.03 and eq["macro_auc"]["margin"] == 0.03
    assert eq["harrell_c"]["p_tost"] == pytest.approx(
        max(eq["harrell_c"]["p_lower"], eq["harrell_c"]["p_upper"])
    )
    ci = summary["pooled_c"]["synthetic"]
    assert ci["lo"] <= ci["estimate"] <= ci["hi"] and ci["n_boot"] == 1000
    assert summary["power"]["detectable_hazard_ratio"] > 1
    for name in ("metrics_per_fold.csv", "baseline_oof.parquet", "repeat_1/summary.json"):
        assert (out / name).exists()
    table = (out / "table.txt").read_text()
    assert "corrected resampled t" in table
    assert "chosen on each fold's validation patients" in table
    assert "  fusion survival weight: " in table and "  generator sampler steps: " in table


@pytest.mark.slow
def test_two_workers_write_the_results_of_one(
    repeated: Path, tmp_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """``evaluate --workers 2`` (folds, baselines and comparators of both repeats in two
    processes) writes every per-fold table and every statistic as the serial run does."""
    from pathgen_batch.cli.evaluate import evaluate

    cohort, feats = build_training_cohort(tmp_path_factory.getbasetemp())
    cfg = repeated.parent / "cv.json"
    args = ["--cohort", str(cohort), "--features", str(feats), "--config", str(cfg)]
    with threads(1):
        r = CliRunner().invoke(
            evaluate,
            [*args, "--out", str(tmp_path), "--repeats", "2", "--seed", "5", "--workers", "2"],
        )
    assert r.exit_code == 0, r.output
    assert "repeat 2/2 (seed 6)" in r.stderr  # the workers' lines reach the parent's echo
    assert "fold 1: wsi_trained" in r.stderr
    files = sorted(p.relative_to(repeated) for p in repeated.rglob("*") if p.is_file())
    assert len(files) >= 20 and Path("summary.json") in files
    for rel in files:
        assert _timeless(tmp_path / rel) == _timeless(repeated / rel), rel


def _timeless(path: Path) -> object:
    """A result file without the wall times it records (the rest must match exactly)."""
    raw = path.read_bytes()
    if path.suffix == ".txt":  # the table's first line ends with the wall time
        return re.sub(rb", \d+ s\n", b"\n", raw, count=1)
    if path.name == "histories.json":
        return [{**h, "seconds": 0} for h in json.loads(raw)]
    if path.name == "summary.json":
        return {k: v for k, v in json.loads(raw).items() if k not in ("seconds", "fold_seconds")}
    return raw
