"""Repeated cross-validation (R repeats x K folds) with real baselines and corrected tests.

Repeat r runs every fold as :func:`~pathgen_batch.training.cv.run_cv` does, with seed
``cfg.seed + r`` (recorded). With R = 1 the folds are those ``run_cv`` would use (the
cohort's fold column, or ``cfg.folds`` new ones); with R > 1 every repeat draws new
stratified folds (K = ``cfg.folds``, else the number of the cohort's folds). On every fold of
every repeat the baselines of :mod:`pathgen_batch.training.baselines` are fit on the same
training part (train and validation) and scored on the same test fold, the fold's fusion
model is also fed the ridge-predicted expression (``ridge_synthetic``: does the generator
beat a linear map?), and the trained WSI-only comparator (``wsi_trained``: the fusion model
trained with modality dropout on the same train / validation patients, scored with its
absent-transcriptome token, from the slide alone) is trained and scored. The fusion model fed
noise (``wsi_only``) is kept as a labelled diagnostic, outside the tests.

Across the R x K folds (:mod:`pathgen_batch.evaluation.resampling`): for every comparison of
``PROTOCOL_COMPARISONS`` the Nadeau-Bengio corrected resampled t-test, Holm across the whole
table, the minimum detectable difference; TOST equivalence of synthetic vs real with the
declared margins; a seeded patient bootstrap CI of the pooled out-of-fold Harrell C of every
survival condition; the smallest hazard ratio the cohort's events can show.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pathgen_batch.errors import ConfigError
from pathgen_batch.evaluation import (
    DEFAULT_MARGINS,
    compare_conditions,
    detectable_hazard_ratio,
    pooled_c_index_ci,
)
from pathgen_batch.training.baselines import (
    BaselineConfig,
    FoldBaselines,
    SurvivalBaseline,
    fold_baselines,
)
from pathgen_batch.training.config import CVConfig
from pathgen_batch.training.cv import FoldPlan, plan_folds, run_fold
from pathgen_batch.training.cv_result import (
    COMPARED_METRICS,
    METRICS,
    CVResult,
    FoldResult,
    same_patients,
)
from pathgen_batch.training.data import TrainingData
from pathgen_batch.training.fold_pool import map_jobs
from pathgen_batch.training.fold_scoring import condition_metrics
from pathgen_batch.training.loops import Progress
from pathgen_batch.training.repeated_result import (
    FIDELITY_KEYS,
    Repeat,
    RepeatedCVResult,
    stack_repeats,
)
from pathgen_batch.training.trainers import train_predictor

PROTOCOL_COMPARISONS: tuple[tuple[str, str], ...] = (
    ("synthetic", "wsi_trained"),
    ("synthetic", "attention_mil"),
    ("synthetic", "real"),
    ("real", "omics_mlp"),
    ("real", "coxnet"),
    ("synthetic", "coxnet"),
    ("real", "cox_grade"),
    ("synthetic", "ridge_synthetic"),
    ("generator", "ridge"),
)
PAIRED_METRICS = (*COMPARED_METRICS, "mean_pearson", "mae")
EQUIVALENCE = (("synthetic", "real"),)

Echo = Callable[[str], None]


def plan_repeats(data: TrainingData, cfg: CVConfig, repeats: int) -> list[Repeat]:
    """The R repeats' configs and fold plans, all checked before any training starts."""
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
        raise ConfigError(f"repeats: expected an integer >= 1, got {repeats!r}")
    k = cfg.folds if cfg.folds is not None else len({int(f) for f in data.folds})
    out = []
    for r in range(repeats):
        rc = cfg if repeats == 1 else dataclasses.replace(cfg, folds=k, seed=cfg.seed + r)
        out.append(Repeat(r, rc.seed, rc, plan_folds(data, rc)))
    return out


def held_out_patients(data: TrainingData, repeats: list[Repeat]) -> dict[int, list[str]]:
    """Held-out patients per ``repeat * 1000 + fold`` (= fold for R = 1), for the digest."""
    return {
        r.repeat * 1000 + p.fold: [data.patient_ids[i] for i in p.test]
        for r in repeats
        for p in r.plans
    }


def run_repeated_cv(
    data: TrainingData,
    cfg: CVConfig | None = None,
    repeats: int = 1,
    out_dir: str | Path | None = None,
    *,
    baselines: BaselineConfig | None = None,
    n_boot: int = 1000,
    margins: dict[str, float] | None = None,
    device: str = "cpu",
    progress: Progress | None = None,
    echo: Echo | None = None,
    workers: int = 1,
) -> RepeatedCVResult:
    """R x K cross-validation, baselines and the protocol's statistics (see the module doc).

    workers: processes training folds side by side (0 = one per CPU); results do not depend on
    it (:mod:`pathgen_batch.training.fold_pool`).
    """
    cfg = cfg or CVConfig()
    bcfg = baselines or BaselineConfig(seed=cfg.seed)
    plans = plan_repeats(data, cfg, repeats)
    t0 = time.perf_counter()
    # the long jobs (a fold's generator and models) first, then each fold's baselines and
    # trained WSI-only comparator; one list over every repeat so that workers stay busy
    jobs = [
        _Job("fold", r.repeat, p, r.config, bcfg, device, _announce(r, repeats, i))
        for r in plans
        for i, p in enumerate(r.plans)
    ]
    jobs += [_Job("baselines", r.repeat, p, r.config, bcfg, device) for r in plans for p in r.plans]
    done = map_jobs(_run_job, data, jobs, workers, progress, echo)
    by_job = dict(zip(((j.kind, j.repeat, j.plan.fold) for j in jobs), done, strict=True))
    results: list[CVResult] = []
    fold_base: list[list[FoldBaselines]] = []
    for r in plans:
        trained = [by_job["fold", r.repeat, p.fold] for p in r.plans]
        sides = [by_job["baselines", r.repeat, p.fold] for p in r.plans]
        folds = [d.fold_result() for d in trained]
        notes = [n for d in trained for n in d.notes]  # in the order of a serial run
        per_fold = []
        for p, f, side in zip(r.plans, folds, sides, strict=True):
            fb, wsi = side.side_result()
            ridge = fb.expression["ridge"].predicted
            control = ridge_fusion_control(data, p, f, ridge, notes)
            notes += side.notes
            extra = {control.name: control, wsi.name: wsi}
            per_fold.append(FoldBaselines({**fb.survival, **extra}, fb.expression))
        seconds = sum(d.seconds for d in (*trained, *sides))  # summed over the workers
        results.append(CVResult.from_folds(folds, data, r.config, seconds=seconds, notes=notes))
        fold_base.append(per_fold)
    metrics = stack_repeats(
        [
            pd.concat([res.metrics, _baseline_metrics(data, r.plans, fb)], ignore_index=True)
            for r, res, fb in zip(plans, results, fold_base, strict=True)
        ]
    )
    fidelity = stack_repeats(
        [
            _fidelity_rows(res, r.plans, fb)
            for r, res, fb in zip(plans, results, fold_base, strict=True)
        ]
    )
    oof = stack_repeats(
        [_baseline_oof(data, r.plans, fb) for r, fb in zip(plans, fold_base, strict=True)]
    )
    n_train, n_test = (
        float(np.mean([len(p.training_part) for r in plans for p in r.plans])),
        float(np.mean([len(p.test) for r in plans for p in r.plans])),
    )
    present = set(metrics["condition"])
    paired, equiv = compare_conditions(
        _scores(metrics, fidelity),
        same_patients(PROTOCOL_COMPARISONS, present),
        PAIRED_METRICS,
        n_train=n_train,
        n_test=n_test,
        equivalence=same_patients(EQUIVALENCE, present),
        margins=DEFAULT_MARGINS if margins is None else margins,
    )
    pooled = _pooled_c(data, results, oof, n_boot, cfg.seed)
    events = int(data.event.sum())
    power = {"events": float(events), "detectable_hazard_ratio": detectable_hazard_ratio(events)}
    result = RepeatedCVResult(
        plans,
        results,
        fold_base,
        metrics,
        fidelity,
        oof,
        paired,
        equiv,
        pooled,
        power,
        seconds=time.perf_counter() - t0,
    )
    if out_dir is not None:
        result.write(out_dir)
    return result


@dataclasses.dataclass(frozen=True)
class _Job:
    """One job of the CV: a fold's generator and models (``fold``) or its baselines and
    trained WSI-only comparator (``baselines``)."""

    kind: str
    repeat: int
    plan: FoldPlan
    config: CVConfig
    baselines: BaselineConfig
    device: str
    announce: str | None = None  # a line to echo before the job (the first fold of a repeat)


@dataclasses.dataclass
class _Done:
    """What a job returns: its notes, its own wall time and its result."""

    notes: list[str]
    seconds: float
    fold: FoldResult | None = None  # of a ``fold`` job
    baselines: FoldBaselines | None = None  # of a ``baselines`` job
    wsi: SurvivalBaseline | None = None  # of a ``baselines`` job

    def fold_result(self) -> FoldResult:
        if self.fold is None:
            raise TypeError("not the result of a fold job")
        return self.fold

    def side_result(self) -> tuple[FoldBaselines, SurvivalBaseline]:
        if self.baselines is None or self.wsi is None:
            raise TypeError("not the result of a baselines job")
        return self.baselines, self.wsi


def _announce(r: Repeat, repeats: int, i: int) -> str | None:
    return f"repeat {r.repeat + 1}/{repeats} (seed {r.seed})" if repeats > 1 and i == 0 else None


def _run_job(data: TrainingData, job: _Job, progress: Progress | None, echo: Echo | None) -> _Done:
    t0 = time.perf_counter()
    notes: list[str] = []
    p = job.plan
    if job.announce is not None and echo is not None:
        echo(job.announce)
    if job.kind == "fold":
        f = run_fold(
            data, p, job.config, device=job.device, progress=progress, echo=echo, notes=notes
        )
        return _Done(notes, time.perf_counter() - t0, fold=f)
    fb = fold_baselines(data, p.training_part, p.test, job.baselines)
    wsi = wsi_trained_comparator(data, p, job.config, notes, job.device, progress, echo)
    return _Done(notes, time.perf_counter() - t0, baselines=fb, wsi=wsi)


def ridge_fusion_control(
    data: TrainingData,
    plan: FoldPlan,
    fold: FoldResult,
    ridge_expression: np.ndarray,
    notes: list[str],
) -> SurvivalBaseline:
    """The fold's fusion model fed ridge-predicted expression (n_test, G) in place of the
    generator's: scored like the CV's conditions, as condition ``ridge_synthetic``."""
    pred = fold.fusion.predict([data.bags[i] for i in plan.test], ridge_expression)
    trn = plan.training_part
    where = f"fold {plan.fold} ridge_synthetic"
    metrics = condition_metrics(data, trn, plan.test, pred, fold.fusion.bin_edges, notes, where)
    return SurvivalBaseline("ridge_synthetic", metrics, np.asarray(pred.risk, dtype=np.float64))


def wsi_trained_comparator(
    data: TrainingData,
    plan: FoldPlan,
    cfg: CVConfig,
    notes: list[str],
    device: str = "cpu",
    progress: Progress | None = None,
    echo: Echo | None = None,
) -> SurvivalBaseline:
    """The trained WSI-only comparator of one fold (condition ``wsi_trained``).

    The fusion model of ``cfg.wsi_trained`` (modality dropout) is trained on the fold's train
    patients with real transcriptomes (a patient without expression with its
    absent-transcriptome token), early-stopping on its validation patients as the fusion model
    does, and scored on the test fold from the slides alone (absent-transcriptome token).
    """
    t0 = time.perf_counter()
    relabel = None
    if progress is not None:
        prog = progress

        def relabel(e: Any) -> None:
            prog(dataclasses.replace(e, model=f"fold {plan.fold} wsi_trained"))

    model = train_predictor(
        data,
        plan.train,
        plan.val,
        cfg.wsi_trained,
        device=device,
        progress=relabel,
        name=cfg.fusion_name,
    )
    if not model.slide_only:
        raise ConfigError("wsi_trained: the comparator has no absent-transcriptome token")
    pred = model.predict([data.bags[i] for i in plan.test], None)
    trn = np.concatenate([plan.train, plan.val])
    where = f"fold {plan.fold} wsi_trained"
    metrics = condition_metrics(data, trn, plan.test, pred, model.bin_edges, notes, where)
    if echo is not None:
        echo(
            f"fold {plan.fold}: wsi_trained {model.provenance['history']['epochs_run']} epochs "
            f"in {time.perf_counter() - t0:.1f}s; C {metrics['harrell_c']:.3f}"
        )
    chosen = {
        "survival_weight": float(model.train_config["survival_weight"]),
        "best_epoch": float(model.provenance["history"]["best_epoch"]),
    }
    return SurvivalBaseline(
        "wsi_trained", metrics, np.asarray(pred.risk, dtype=np.float64), params=chosen
    )


def _baseline_metrics(
    data: TrainingData, plans: list[FoldPlan], fb: list[FoldBaselines]
) -> pd.DataFrame:
    """One row per (fold, survival baseline): ``METRICS`` (NaN where a baseline has none) and
    the test patients with an outcome / a known grade that they could use (those it predicted:
    CoxNet none without expression)."""
    rows = []
    for p, f in zip(plans, fb, strict=True):
        for name, b in f.survival.items():
            scored = p.test[np.isfinite(b.risk)]
            n_surv = int(data.outcome_known[scored].sum())
            n_grade = int((data.grade[scored] >= 0).sum())
            has_grade = np.isfinite(b.metrics.get("accuracy", np.nan))
            counts = {"n_survival": n_surv, "n_grade": n_grade if has_grade else 0}
            rows.append(
                {"fold": p.fold, "condition": name, **dict.fromkeys(METRICS, np.nan), **b.metrics}
                | counts
            )
    return pd.DataFrame(rows)


def _fidelity_rows(res: CVResult, plans: list[FoldPlan], fb: list[FoldBaselines]) -> pd.DataFrame:
    gen = res.fidelity.assign(model="generator")
    base = pd.DataFrame(
        [
            {"fold": p.fold, "model": name, **b.fidelity}
            for p, f in zip(plans, fb, strict=True)
            for name, b in f.expression.items()
        ]
    )
    return pd.concat([gen, base], ignore_index=True)


def _baseline_oof(
    data: TrainingData, plans: list[FoldPlan], fb: list[FoldBaselines]
) -> pd.DataFrame:
    frames = [
        pd.DataFrame(
            {
                "patient_id": [data.patient_ids[i] for i in p.test],
                "fold": p.fold,
                "condition": name,
                "time": data.time[p.test],
                "event": data.event[p.test],
                "risk": b.risk,
            }
        )
        for p, f in zip(plans, fb, strict=True)
        for name, b in f.survival.items()
    ]
    return pd.concat(frames, ignore_index=True)


def _scores(metrics: pd.DataFrame, fidelity: pd.DataFrame) -> dict[str, dict[str, np.ndarray]]:
    """condition -> metric -> per-fold scores in (repeat, fold) order."""
    out: dict[str, dict[str, np.ndarray]] = {}
    for cond, rows in metrics.groupby("condition", sort=False):
        rows = rows.sort_values(["repeat", "fold"])
        out[str(cond)] = {
            m: rows[m].to_numpy(dtype=np.float64) for m in METRICS if rows[m].notna().any()
        }
    for model, rows in fidelity.groupby("model", sort=False):
        rows = rows.sort_values(["repeat", "fold"])
        out[str(model)] = {k: rows[k].to_numpy(dtype=np.float64) for k in FIDELITY_KEYS}
    return out


def _pooled_c(
    data: TrainingData, results: list[CVResult], base_oof: pd.DataFrame, n_boot: int, seed: int
) -> dict[str, dict[str, Any]]:
    """Bootstrap CI of the pooled out-of-fold C per condition; risks (R, N) by patient, over
    the patients with an outcome that the condition predicted in every repeat (those with
    expression for the real-expression conditions)."""
    cv_oof = stack_repeats([r.oof for r in results])[["repeat", "patient_id", "condition", "risk"]]
    both = pd.concat([cv_oof, base_oof[["repeat", "patient_id", "condition", "risk"]]])
    pos = {p: i for i, p in enumerate(data.patient_ids)}
    out: dict[str, dict[str, Any]] = {}
    for cond, rows in both.groupby("condition", sort=False):
        risk = rows.pivot(index="repeat", columns="patient_id", values="risk")
        risk = risk[[p for p in data.patient_ids if p in risk.columns]].dropna(axis=1)
        idx = np.asarray([pos[p] for p in risk.columns], dtype=np.int64)
        keep = data.outcome_known[idx]
        idx, risk = idx[keep], risk.loc[:, keep]
        ci = pooled_c_index_ci(
            data.event[idx], data.time[idx], risk.to_numpy(), n_boot=n_boot, seed=seed
        )
        out[str(cond)] = ci.to_dict()
    return out


__all__ = [
    "EQUIVALENCE",
    "PAIRED_METRICS",
    "PROTOCOL_COMPARISONS",
    "Repeat",
    "RepeatedCVResult",
    "held_out_patients",
    "plan_repeats",
    "run_repeated_cv",
]
