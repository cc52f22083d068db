"""Repeated cross-validation (R repeats x K folds) with real baselines and corrected tests.

Repeat r runs :func:`~pathgen_batch.training.cv.run_cv` with seed ``cfg.seed + r`` (recorded):
with R = 1 the folds are those ``run_cv`` would use (the cohort's fold column, or ``cfg.folds``
new ones); with R > 1 every repeat draws new stratified folds (K = ``cfg.folds``, else the
number of the cohort's folds). On every fold of every repeat the baselines of
:mod:`pathgen_batch.training.baselines` are fit on the same training part (train and
validation) and scored on the same test fold.

Across the R x K folds (:mod:`pathgen_batch.evaluation.resampling`): for every comparison of
``PROTOCOL_COMPARISONS`` the Nadeau-Bengio corrected resampled t-test, Holm across the whole
table, the minimum detectable difference; TOST equivalence of synthetic vs real with the
declared margins; a seeded patient bootstrap CI of the pooled out-of-fold Harrell C of every
survival condition; the smallest hazard ratio the cohort's events can show.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
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
from pathgen_batch.inference.bundle import json_safe
from pathgen_batch.training.baselines import (
    EXPRESSION_BASELINES,
    SURVIVAL_BASELINES,
    BaselineConfig,
    FoldBaselines,
    fold_baselines,
)
from pathgen_batch.training.config import CVConfig
from pathgen_batch.training.cv import FoldPlan, plan_folds, run_cv
from pathgen_batch.training.cv_result import (
    COMPARED_METRICS,
    COMPARISONS,
    METRICS,
    CVResult,
    _p,
    _pm,
)
from pathgen_batch.training.data import TrainingData
from pathgen_batch.training.loops import Progress

PROTOCOL_COMPARISONS: tuple[tuple[str, str], ...] = (
    *COMPARISONS,
    ("real", "coxnet"),
    ("synthetic", "coxnet"),
    ("real", "cox_grade"),
    ("generator", "ridge"),
)
PAIRED_METRICS = (*COMPARED_METRICS, "mean_pearson", "mae")
EQUIVALENCE = (("synthetic", "real"),)
FIDELITY_KEYS = ("mean_pearson", "mae")

Echo = Callable[[str], None]


@dataclass(frozen=True, eq=False)
class Repeat:
    """One repeat: its index, seed, the config it ran with and its checked fold plans."""

    repeat: int
    seed: int
    config: CVConfig
    plans: list[FoldPlan]


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


@dataclass(eq=False)
class RepeatedCVResult:
    """R cross-validations, their baselines and the statistics across all R x K folds.

    metrics: one row per (repeat, fold, condition) with ``METRICS``, for the CV's conditions
    and the survival baselines (grade metrics NaN); fidelity: one row per (repeat, fold,
    model) for the generator and the expression baselines; baseline_oof: one row per (repeat,
    test patient, survival baseline) with its risk.
    """

    repeats: list[Repeat]
    results: list[CVResult]
    baselines: list[list[FoldBaselines]]
    metrics: pd.DataFrame
    fidelity: pd.DataFrame
    baseline_oof: pd.DataFrame
    paired: dict[str, dict[str, dict[str, Any]]]
    equivalence: dict[str, dict[str, dict[str, Any]]]
    pooled_c: dict[str, dict[str, Any]]
    power: dict[str, float]
    seconds: float

    def summary(self) -> dict[str, Any]:
        """The first repeat's summary (data, config, ...) with every cross-fold key over all
        R x K folds: ``repeats``, ``metrics`` (baselines included), ``fidelity`` (generator),
        ``fidelity_baselines``, ``conformal``, ``paired``, ``equivalence``, ``pooled_c``,
        ``power``."""
        base = self.results[0].summary()
        conformal = pd.concat([r.conformal for r in self.results], ignore_index=True)
        gen = self.fidelity[self.fidelity["model"] == "generator"]
        pooled = pd.DataFrame([r.pooled_fidelity for r in self.results]).mean()
        return {
            **base,
            "folds": len(self.repeats[0].plans),
            "repeats": {
                "n": len(self.repeats),
                "folds": len(self.repeats[0].plans),
                "seeds": [r.seed for r in self.repeats],
                "n_train_mean": self._sizes()[0],
                "n_test_mean": self._sizes()[1],
            },
            "metrics": {
                cond: _agg(self.metrics[self.metrics["condition"] == cond], METRICS)
                for cond in dict.fromkeys(self.metrics["condition"])
            },
            "fidelity": _agg(gen, [c for c in gen.columns if c not in ("repeat", "fold", "model")]),
            "fidelity_baselines": {
                name: _agg(self.fidelity[self.fidelity["model"] == name], FIDELITY_KEYS)
                for name in EXPRESSION_BASELINES
            },
            "pooled_fidelity": {k: float(v) for k, v in pooled.items()},
            "conformal": _agg(conformal, [c for c in conformal.columns if c != "fold"]),
            "paired": self.paired,
            "equivalence": self.equivalence,
            "pooled_c": self.pooled_c,
            "power": self.power,
            "baseline_params": self._params(),
            "seconds": self.seconds,
            "fold_seconds": [s for r in self.results for s in r.fold_seconds],
            "notes": [n for r in self.results for n in r.notes]
            + [n for fb in self.baselines for b in fb for n in b.notes()],
        }

    def to_json(self) -> str:
        return json.dumps(json_safe(self.summary()), indent=2, allow_nan=False)

    def table(self) -> str:
        """The first repeat's table (R = 1) or the R x K means, then baselines and tests."""
        lines = [self.results[0].table()] if len(self.repeats) == 1 else [self._means_table()]
        lines += ["", "baselines on the same folds (mean +- sd over folds):"]
        for name, label in SURVIVAL_BASELINES.items():
            rows = self.metrics[self.metrics["condition"] == name]
            cells = "; ".join(f"{METRICS[m]} {_pm(rows[m])}" for m in ("harrell_c", "ibs"))
            lines.append(f"  {label:<28} {cells}")
        for name, label in EXPRESSION_BASELINES.items():
            rows = self.fidelity[self.fidelity["model"] == name]
            lines.append(
                f"  {label:<28} mean per-gene Pearson {_pm(rows['mean_pearson'])}; "
                f"MAE {_pm(rows['mae'])}"
            )
        lines += ["", "pooled out-of-fold Harrell C (95% patient bootstrap):"]
        for cond, ci in self.pooled_c.items():
            lines.append(f"  {cond:<28} {ci['estimate']:.3f} [{ci['lo']:.3f}, {ci['hi']:.3f}]")
        j = len(self.repeats) * len(self.repeats[0].plans)
        lines += ["", f"corrected resampled t over {j} folds (Holm across the table):"]
        for key, per in self.paired.items():
            parts = [
                f"{m} {t['mean_difference']:+.3f} (p={_p(t['p_corrected'])}, "
                f"Holm {_p(t['p_holm'])}, MDD {t['mdd']:.3f})"
                for m, t in per.items()
            ]
            lines.append(f"  {key:<28} " + "; ".join(parts))
        lines += ["", "equivalence by TOST on the corrected se:"]
        for key, per in self.equivalence.items():
            parts = [
                f"{m} margin {t['margin']:g}: p_tost={_p(t['p_tost'])}"
                f"{' (equivalent)' if t['equivalent'] else ''}"
                for m, t in per.items()
            ]
            lines.append(f"  {key:<28} " + "; ".join(parts))
        hr = self.power["detectable_hazard_ratio"]
        lines.append(f"\n{int(self.power['events'])} events: detectable hazard ratio {hr:.2f}")
        return "\n".join(lines)

    def write(self, out_dir: str | Path) -> Path:
        """The files of :meth:`CVResult.write` (first repeat's for R = 1, all repeats stacked
        with a ``repeat`` column otherwise; each repeat's own in ``repeat_<r>/``), with
        metrics_per_fold.csv holding the baselines too, fidelity_baselines_per_fold.csv and
        baseline_oof.parquet."""
        out = Path(out_dir)
        if len(self.repeats) == 1:
            self.results[0].write(out)
        else:
            for r, res in zip(self.repeats, self.results, strict=True):
                res.write(out / f"repeat_{r.repeat}")
            out.mkdir(parents=True, exist_ok=True)
            for name in ("fidelity", "conformal"):
                stacked = _stack([getattr(res, name) for res in self.results])
                stacked.to_csv(out / f"{name}_per_fold.csv", index=False)
            _stack([r.oof for r in self.results]).to_parquet(out / "oof_predictions.parquet")
            _stack([r.synthetic for r in self.results]).to_parquet(
                out / "synthetic_expression.parquet"
            )
            hist = [{"repeat": i, **h} for i, r in enumerate(self.results) for h in r.histories]
            (out / "histories.json").write_text(json.dumps(json_safe(hist)) + "\n")
        self.metrics.to_csv(out / "metrics_per_fold.csv", index=False)
        self.fidelity.to_csv(out / "fidelity_baselines_per_fold.csv", index=False)
        self.baseline_oof.to_parquet(out / "baseline_oof.parquet", index=False)
        (out / "summary.json").write_text(self.to_json() + "\n")
        (out / "table.txt").write_text(self.table() + "\n")
        return out

    def _sizes(self) -> tuple[float, float]:
        plans = [p for r in self.repeats for p in r.plans]
        return (
            float(np.mean([len(p.train) + len(p.val) for p in plans])),
            float(np.mean([len(p.test) for p in plans])),
        )

    def _params(self) -> dict[str, dict[str, list[float]]]:
        """Each baseline's chosen hyper-parameters, one value per fold (repeat-major)."""
        out: dict[str, dict[str, list[float]]] = {}
        for fb in (b for per in self.baselines for b in per):
            named: list[tuple[str, dict[str, float]]] = [
                *((k, b.params) for k, b in fb.survival.items()),
                *((k, b.params) for k, b in fb.expression.items()),
            ]
            for name, params in named:
                for k, v in params.items():
                    out.setdefault(name, {}).setdefault(k, []).append(v)
        return out

    def _means_table(self) -> str:
        j = len(self.metrics[["repeat", "fold"]].drop_duplicates())
        head = f"{len(self.repeats)} x {len(self.repeats[0].plans)} CV ({j} folds)"
        lines = [head, f"{'condition':<20}" + "".join(f"{v:>15}" for v in METRICS.values())]
        for cond in dict.fromkeys(self.results[0].metrics["condition"]):
            rows = self.metrics[self.metrics["condition"] == cond]
            lines.append(f"{cond:<20}" + "".join(f"{_pm(rows[m]):>15}" for m in METRICS))
        return "\n".join(lines)


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
) -> RepeatedCVResult:
    """R x K cross-validation, baselines and the protocol's statistics (see the module doc)."""
    cfg = cfg or CVConfig()
    bcfg = baselines or BaselineConfig(seed=cfg.seed)
    plans = plan_repeats(data, cfg, repeats)
    t0 = time.perf_counter()
    results, fold_base = [], []
    for r in plans:
        if echo is not None and repeats > 1:
            echo(f"repeat {r.repeat + 1}/{repeats} (seed {r.seed})")
        results.append(run_cv(data, r.config, device=device, progress=progress, echo=echo))
        fold_base.append(
            [fold_baselines(data, np.concatenate([p.train, p.val]), p.test, bcfg) for p in r.plans]
        )
    metrics = _stack(
        [
            pd.concat([res.metrics, _baseline_metrics(r.plans, fb)], ignore_index=True)
            for r, res, fb in zip(plans, results, fold_base, strict=True)
        ]
    )
    fidelity = _stack(
        [
            _fidelity_rows(res, r.plans, fb)
            for r, res, fb in zip(plans, results, fold_base, strict=True)
        ]
    )
    oof = _stack([_baseline_oof(data, r.plans, fb) for r, fb in zip(plans, fold_base, strict=True)])
    n_train, n_test = (
        float(np.mean([len(p.train) + len(p.val) for r in plans for p in r.plans])),
        float(np.mean([len(p.test) for r in plans for p in r.plans])),
    )
    paired, equiv = compare_conditions(
        _scores(metrics, fidelity),
        PROTOCOL_COMPARISONS,
        PAIRED_METRICS,
        n_train=n_train,
        n_test=n_test,
        equivalence=EQUIVALENCE,
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


def _baseline_metrics(plans: list[FoldPlan], fb: list[FoldBaselines]) -> pd.DataFrame:
    rows = [
        {"fold": p.fold, "condition": name, **dict.fromkeys(METRICS, np.nan), **b.metrics}
        for p, f in zip(plans, fb, strict=True)
        for name, b in f.survival.items()
    ]
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
    """Bootstrap CI of the pooled out-of-fold C per condition; risks (R, N) by patient."""
    cv_oof = _stack([r.oof for r in results])[["repeat", "patient_id", "condition", "risk"]]
    both = pd.concat([cv_oof, base_oof[["repeat", "patient_id", "condition", "risk"]]])
    known = [p for p, ok in zip(data.patient_ids, data.outcome_known, strict=True) if ok]
    idx = np.flatnonzero(data.outcome_known)
    out: dict[str, dict[str, Any]] = {}
    for cond, rows in both.groupby("condition", sort=False):
        risk = rows.pivot(index="repeat", columns="patient_id", values="risk")[known]
        ci = pooled_c_index_ci(
            data.event[idx], data.time[idx], risk.to_numpy(), n_boot=n_boot, seed=seed
        )
        out[str(cond)] = ci.to_dict()
    return out


def _stack(frames: list[pd.DataFrame]) -> pd.DataFrame:
    """Frames of the repeats, one after the other, each with its ``repeat`` as first column."""
    tagged = [f.assign(repeat=i) for i, f in enumerate(frames)]
    out = pd.concat(tagged, ignore_index=True)
    return out[["repeat", *[c for c in out.columns if c != "repeat"]]]


def _agg(rows: pd.DataFrame, keys: Any) -> dict[str, dict[str, float]]:
    return {
        k: {
            "mean": float(rows[k].mean()),
            "sd": float(rows[k].std(ddof=1)),
            "n": int(rows[k].notna().sum()),
        }
        for k in keys
    }


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
