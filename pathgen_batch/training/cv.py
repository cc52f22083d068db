"""Patient-level cross-validation of the PathGen protocol, and the final models.

For every outer fold (the cohort's ``fold`` column, or new stratified folds):

1. the training part is split three ways (stratified by grade x event): train, early stopping
   (validation) and calibration; every scaler and time-bin edge is fit on train, early stopping
   of every model uses validation, the calibration patients serve conformal calibration only
   (they choose no checkpoint), and the test fold is touched only to score the finished models;
2. the generator is trained (its kept epoch: the best validation per-gene Pearson of its
   posterior-mean estimate); synthetic transcriptomes (mean of n samples) are generated for the
   calibration and test patients;
3. the fusion model is trained on REAL transcriptomes, as are the attention-MIL (slides only)
   and omics-MLP (real transcriptome only) baselines (kept epoch: best validation survival NLL
   by default);
4. conformal grade sets and risk intervals are calibrated on the calibration patients with
   SYNTHETIC transcriptomes (the risk interval targets the risk of the real transcriptome);
5. on the test fold: the fusion model with the real, the synthetic and a standard-normal
   ("WSI only") transcriptome, and both baselines, are scored for survival (Harrell and Uno
   C-index, mean time-dependent AUC, integrated Brier score) and grade (accuracy, balanced
   accuracy, macro AUC, macro F1, QWK); synthetic vs real expression fidelity (with the
   posterior-mean estimate, the n-samples sweep, CRPS, the constant predictor and the random
   model test of :func:`~pathgen_batch.evaluation.generator_fidelity`); conformal coverage and
   set size.

Across folds: mean +- sd, and paired tests (Wilcoxon signed-rank, paired t) of the synthetic
condition against WSI only, real and attention MIL.

Patients without expression (``TrainingData.expression_known``) train and score no model that
reads a real transcriptome: the generator, the fusion model's training, the omics MLP and the
real condition use the patients with expression only (train, early stopping and test); the
synthetic, WSI-only and attention-MIL conditions are scored on every test patient (a patient
without expression gets its synthetic transcriptome like any slide), the attention-MIL baseline
and a fusion model with modality dropout train on all (the absent-transcriptome token standing
in for a missing one), and the conformal grade sets are calibrated on every calibration patient (the
risk intervals, which cover the risk of the real transcriptome, on those with expression).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypedDict, Unpack

import numpy as np
import pandas as pd

from pathgen_batch.cohort.splits import stratified_folds, three_way_split
from pathgen_batch.errors import DataError
from pathgen_batch.evaluation import (
    expression_fidelity,
    generator_fidelity,
    min_calibration_size,
)
from pathgen_batch.inference.fusion import TrainedFusion
from pathgen_batch.inference.generator import TrainedGenerator
from pathgen_batch.training.config import CVConfig
from pathgen_batch.training.cv_result import COMPARISONS, CONDITIONS, METRICS, CVResult, FoldResult
from pathgen_batch.training.data import TrainingData, check_training_part
from pathgen_batch.training.fold_scoring import (
    condition_metrics,
    conformal_row,
    loss_counts,
    oof_rows,
)
from pathgen_batch.training.loops import Progress
from pathgen_batch.training.trainers import (
    calibrate_fusion,
    train_generator,
    train_predictor,
)

log = logging.getLogger(__name__)

MIN_TEST_EXPRESSION = 3  # test patients with expression a fold's fidelity needs (correlations)
# conditions scored on the test patients with expression only (they read the real transcriptome)
REAL_EXPRESSION = ("real", "omics_mlp")

Echo = Callable[[str], None]


class RunOptions(TypedDict, total=False):
    """How :func:`run_cv` and :func:`train_final` run: ``device`` (default "cpu"), a
    per-epoch ``progress`` callback and an ``echo`` for one-line notes (default: the log)."""

    device: str
    progress: Progress | None
    echo: Echo | None


@dataclass(frozen=True)
class FoldPlan:
    """Index arrays of one outer fold: train, val (early stopping) and cal (conformal
    calibration), three disjoint parts of the training part, and test."""

    fold: int
    train: np.ndarray
    val: np.ndarray
    cal: np.ndarray
    test: np.ndarray

    @property
    def training_part(self) -> np.ndarray:
        """Every patient outside the test fold: train, val and cal (sorted)."""
        return np.sort(np.concatenate([self.train, self.val, self.cal]))


def calibration_disjoint(
    fold: FoldPlan, gen: TrainedGenerator, fusion: TrainedFusion, ids: list[str]
) -> bool:
    """True when the patients that calibrated ``fusion`` (its ``conformal.cal_patients``) are
    none of the training or early-stopping patients of ``fusion`` or ``gen``."""
    cal = set(fusion.provenance.get("conformal", {}).get("cal_patients", []))
    chose = set(gen.provenance.get("val_patients", [])) | set(
        fusion.provenance.get("val_patients", [])
    )
    trained = {ids[i] for i in fold.train}
    return bool(cal) and not cal & (chose | trained)


def plan_folds(data: TrainingData, cfg: CVConfig) -> list[FoldPlan]:
    """Outer folds and inner splits, checked before any training starts.

    Each training part needs two grade classes and events; its inner training part needs
    enough events for the time bins; its calibration part enough known grades for conformal
    calibration at ``cfg.alpha``. Of the patients with expression, the inner training part
    needs the same (the fusion model trains on them), and two at least, and so does the
    validation part; the calibration part enough for the risk intervals at ``cfg.alpha``; the
    test fold ``MIN_TEST_EXPRESSION`` (its fidelity).
    """
    strata = data.strata()
    folds = data.folds if cfg.folds is None else stratified_folds(strata, cfg.folds, cfg.seed)
    ids = sorted({int(f) for f in folds})
    if len(ids) < 2:
        raise DataError(f"folds: cross-validation needs at least 2 folds, got {ids}")
    n_bins = max(cfg.fusion.n_bins, cfg.attention_mil.n_bins, cfg.omics_mlp.n_bins)
    need = min_calibration_size(cfg.alpha)
    plans = []
    for k in ids:
        test = np.flatnonzero(folds == k)
        rest = np.flatnonzero(folds != k)
        check_training_part(data, rest, f"fold {k}: training part")
        tr, va, cal = three_way_split(
            [strata[i] for i in rest], cfg.val_fraction, cfg.cal_fraction, cfg.seed + k
        )
        tr, va, cal = rest[tr], rest[va], rest[cal]
        check_training_part(data, tr, f"fold {k}: inner training part", n_bins)
        known = int((data.grade[cal] >= 0).sum())
        if known < need:
            raise DataError(
                f"fold {k}: {known} calibration patient(s) with a known grade; conformal "
                f"calibration at alpha={cfg.alpha:g} needs at least {need}"
            )
        _check_expression(data, k, tr, va, cal, test, n_bins, need)
        plans.append(FoldPlan(k, tr, va, cal, test))
    return plans


def _check_expression(
    data: TrainingData,
    k: int,
    tr: np.ndarray,
    va: np.ndarray,
    cal: np.ndarray,
    test: np.ndarray,
    n_bins: int,
    need: int,
) -> None:
    """DataError unless the parts of fold ``k`` keep enough patients with expression."""
    tr_e = data.with_expression(tr)
    what = f"fold {k}: inner training part, patients with expression"
    check_training_part(data, tr_e, what, n_bins)
    for part, idx, least in (
        ("inner training part", tr, 2),
        ("validation part", va, 2),
        ("calibration part", cal, need),
        ("test fold", test, MIN_TEST_EXPRESSION),
    ):
        n = int(data.expression_known[idx].sum())
        if n < least:
            raise DataError(
                f"fold {k}: {n} of {len(idx)} patient(s) of its {part} have expression; it "
                f"needs at least {least}"
            )


def _relabel(progress: Progress | None, prefix: str) -> Progress | None:
    if progress is None:
        return None
    return lambda e: progress(dataclasses.replace(e, model=f"{prefix} {e.model}"))


def run_fold(
    data: TrainingData,
    plan: FoldPlan,
    cfg: CVConfig,
    *,
    device: str = "cpu",
    progress: Progress | None = None,
    echo: Echo | None = None,
    notes: list[str] | None = None,
) -> FoldResult:
    """Train and score everything for one outer fold."""
    notes = notes if notes is not None else []
    say = echo or (lambda s: log.info("%s", s))
    tag = f"fold {plan.fold}"
    t0 = time.perf_counter()
    bags = data.bags
    cal_bags = [bags[i] for i in plan.cal]
    test_bags = [bags[i] for i in plan.test]
    gen = train_generator(
        data,
        plan.train,
        plan.val,
        cfg.generator,
        device=device,
        progress=_relabel(progress, tag),
        name=cfg.generator_name,
        cal_idx=plan.cal,
    )
    t_gen = time.perf_counter() - t0
    syn_cal, _ = gen.generate(cal_bags)
    n_default = gen.sampler.n_samples
    draws = gen.samples(test_bags, n_samples=max([*cfg.fidelity_samples, n_default]))  # (n, S, G)
    syn_test = draws[:, :n_default].mean(axis=1)
    spread_test = draws[:, :n_default].std(axis=1, ddof=1) if n_default > 1 else 0 * syn_test
    pm_test = gen.posterior_mean(test_bags)
    t_sample = time.perf_counter() - t0 - t_gen
    say(
        f"{tag}: generator {gen.provenance['history']['epochs_run']} epochs in {t_gen:.1f}s, "
        f"sampling {len(plan.cal) + len(plan.test)} slides in {t_sample:.1f}s"
    )
    models: dict[str, TrainedFusion] = {}
    for key, mcfg in (
        ("fusion", cfg.fusion),
        ("attention_mil", cfg.attention_mil),
        ("omics_mlp", cfg.omics_mlp),
    ):
        tm = time.perf_counter()
        models[key] = train_predictor(
            data,
            plan.train,
            plan.val,
            mcfg,
            device=device,
            progress=_relabel(progress, tag),
            name=cfg.fusion_name,
        )
        say(
            f"{tag}: {key} {models[key].provenance['history']['epochs_run']} epochs in "
            f"{time.perf_counter() - tm:.1f}s"
        )
    fusion = calibrate_fusion(
        models["fusion"],
        cal_bags,
        syn_cal,
        data.expression[plan.cal],  # NaN rows: no real transcriptome, grade sets only
        data.grade[plan.cal],
        cfg.alpha,
        cfg.conformal_method,
        patient_ids=[data.patient_ids[i] for i in plan.cal],
    )
    has = data.expression_known[plan.test]  # (n_test,)
    te_e = plan.test[has]  # the test patients with expression
    real_test = data.expression[te_e]
    real_bags = [bags[i] for i in te_e]
    preds = {
        "real": fusion.predict(real_bags, real_test),
        "synthetic": fusion.predict(test_bags, syn_test),
        "wsi_only": fusion.predict(test_bags, None, noise_seed=cfg.noise_seed + plan.fold),
        "attention_mil": models["attention_mil"].predict(test_bags),
        "omics_mlp": models["omics_mlp"].predict(None, real_test),
    }
    if not data.expression_known.all():  # synthetic on the real condition's patients too
        preds["synthetic_rna"] = fusion.predict(real_bags, syn_test[has])
    tests = {c: te_e if c in (*REAL_EXPRESSION, "synthetic_rna") else plan.test for c in preds}
    edges = {c: models["fusion"].bin_edges for c in ("real", "synthetic", "wsi_only")}
    edges["synthetic_rna"] = models["fusion"].bin_edges
    edges["attention_mil"] = models["attention_mil"].bin_edges
    edges["omics_mlp"] = models["omics_mlp"].bin_edges
    trn = plan.training_part
    model_of = dict.fromkeys(("real", "synthetic", "wsi_only", "synthetic_rna"), "fusion")
    metrics = {
        cond: {
            **condition_metrics(data, trn, tests[cond], pred, edges[cond], notes, f"{tag} {cond}"),
            **loss_counts(data, plan.train, models[model_of.get(cond, cond)]),
        }
        for cond, pred in preds.items()
    }
    oof = {  # synthetic_rna repeats rows of synthetic: none of its own
        cond: oof_rows(data, plan.fold, tests[cond], cond, pred)
        for cond, pred in preds.items()
        if cond in CONDITIONS
    }
    for cond in ("real", "wsi_only"):  # sets are calibrated for synthetic inputs only
        oof[cond]["grade_set"] = None
        oof[cond]["risk_lo"] = np.nan
        oof[cond]["risk_hi"] = np.nan
    fid = expression_fidelity(real_test, syn_test[has], data.panel.genes)
    extra = generator_fidelity(
        real_test,
        draws[has],
        pm_test[has],
        data.expression[data.with_expression(plan.train)],
        cfg.fidelity_samples,
        n_default=n_default,
        seed=cfg.seed + plan.fold,
    )
    fid_row = {
        "fold": plan.fold,
        "n_train": int(gen.provenance["n_train"]),  # the generator's (with expression)
        "n_test": len(te_e),  # the test patients with expression, that fidelity used
        **{k: float(fid.summary[k]) for k in fid.summary},
        **{k: float(v) for k, v in extra.items()},
    }
    conf_row = conformal_row(
        data, plan.fold, plan.test, len(plan.cal), preds["synthetic"], preds["real"].risk, has
    )
    conf_row["calibration_disjoint"] = float(
        calibration_disjoint(plan, gen, fusion, list(data.patient_ids))
    )
    synth = pd.DataFrame(syn_test, columns=list(data.panel.genes))
    synth.insert(0, "patient_id", [data.patient_ids[i] for i in plan.test])
    synth.insert(1, "fold", plan.fold)
    synth["mean_spread"] = spread_test.mean(axis=1)
    histories = [
        {
            "fold": plan.fold,
            "model": "generator",
            "sampler_steps": gen.sampler.steps,
            "sampler_choice": gen.provenance.get("sampler_steps"),
            **gen.provenance["history"],
        },
        *(
            {
                "fold": plan.fold,
                "model": key,
                "survival_weight": tm.train_config["survival_weight"],
                "loss_weights": tm.provenance.get("loss_weights"),
                **tm.provenance["history"],
            }
            for key, tm in models.items()
        ),
    ]
    seconds = time.perf_counter() - t0
    say(
        f"{tag}: done in {seconds:.1f}s; synthetic C {metrics['synthetic']['harrell_c']:.3f}, "
        f"real C {metrics['real']['harrell_c']:.3f}, mean per-gene Pearson "
        f"{fid.summary['mean_pearson']:.3f}"
    )
    return FoldResult(
        fold=plan.fold,
        metrics=metrics,
        oof=pd.concat(list(oof.values()), ignore_index=True),
        fidelity=fid_row,
        conformal=conf_row,
        synthetic=synth,
        histories=histories,
        seconds=seconds,
        generator=gen,
        fusion=fusion,
    )


def run_cv(
    data: TrainingData,
    cfg: CVConfig | None = None,
    out_dir: str | Path | None = None,
    **run: Unpack[RunOptions],
) -> CVResult:
    """Cross-validate generator, fusion model and baselines (see the module docstring).

    Every fold is planned and checked before training starts. With ``out_dir`` the results
    are written there (see :meth:`CVResult.write`).
    """
    cfg = cfg or CVConfig()
    plans = plan_folds(data, cfg)
    t0 = time.perf_counter()
    notes: list[str] = []
    folds = [run_fold(data, p, cfg, notes=notes, **run) for p in plans]
    result = CVResult.from_folds(folds, data, cfg, seconds=time.perf_counter() - t0, notes=notes)
    if out_dir is not None:
        result.write(out_dir)
    return result


__all__ = [
    "COMPARISONS",
    "CONDITIONS",
    "METRICS",
    "CVResult",
    "FoldPlan",
    "FoldResult",
    "calibration_disjoint",
    "plan_folds",
    "run_cv",
    "run_fold",
]
