"""The results of a repeated cross-validation: R :class:`CVResult`, the baselines of every
fold, and the statistics across all R x K folds (summary, printed table, files)."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pathgen_batch.inference.bundle import json_safe
from pathgen_batch.training.baselines import (
    EXPRESSION_BASELINES,
    SURVIVAL_BASELINES,
    SURVIVAL_METRICS,
    FoldBaselines,
)
from pathgen_batch.training.config import CVConfig
from pathgen_batch.training.cv import FoldPlan
from pathgen_batch.training.cv_result import (
    CONDITIONS,
    METRICS,
    SYNTHETIC_ON_RNA,
    CVResult,
    _p,
    _pm,
    conformal_summary,
)

FIDELITY_KEYS = ("mean_pearson", "mae")
CONTROLS: dict[str, str] = {
    "wsi_trained": "fusion, trained WSI only",
    "ridge_synthetic": "fusion + ridge expression",
}


@dataclass(frozen=True, eq=False)
class Repeat:
    """One repeat: its index, seed, the config it ran with and its checked fold plans."""

    repeat: int
    seed: int
    config: CVConfig
    plans: list[FoldPlan]


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
        R x K folds: ``repeats``, ``conditions`` (condition -> label), ``metrics`` (baselines
        included), ``fidelity`` (``generator``, ``ridge``, ``mean_expression``), ``conformal``,
        ``paired``, ``equivalence``, ``pooled_c``, ``power``."""
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
                cond: _metric_agg(self.metrics[self.metrics["condition"] == cond])
                for cond in dict.fromkeys(self.metrics["condition"])
            },
            "conditions": {**CONDITIONS, **SYNTHETIC_ON_RNA, **SURVIVAL_BASELINES, **CONTROLS},
            "fidelity": {
                "generator": _agg(
                    gen, [c for c in gen.columns if c not in ("repeat", "fold", "model")]
                ),
                **{
                    name: _agg(self.fidelity[self.fidelity["model"] == name], FIDELITY_KEYS)
                    for name in EXPRESSION_BASELINES
                },
            },
            "pooled_fidelity": {k: float(v) for k, v in pooled.items()},
            "conformal": conformal_summary(
                conformal, lambda c: _agg(c.to_frame(), [c.name])[c.name]
            ),
            "paired": self.paired,
            "equivalence": self.equivalence,
            "pooled_c": self.pooled_c,
            "power": self.power,
            "baseline_params": self._params(),
            "model_selection": self._selection(),
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
        for name, label in {**SURVIVAL_BASELINES, **CONTROLS}.items():
            rows = self.metrics[self.metrics["condition"] == name]
            shown = ("harrell_c", "ibs", "macro_auc")
            cells = "; ".join(f"{METRICS[m]} {_pm(rows[m])}" for m in shown)
            n = int(rows["n_survival"][rows["harrell_c"].notna()].sum())
            lines.append(f"  {label:<28} {cells}; n surv {n}")
        for name, label in EXPRESSION_BASELINES.items():
            rows = self.fidelity[self.fidelity["model"] == name]
            lines.append(
                f"  {label:<28} mean per-gene Pearson {_pm(rows['mean_pearson'])}; "
                f"MAE {_pm(rows['mae'])}; n {int(rows['n_patients'].sum())}"
            )
        lines.append(
            "  n: test patients over all folds (R x K) that the numbers used (those with "
            "expression for CoxNet, ridge and the training mean)"
        )
        lines += ["", "pooled out-of-fold Harrell C (95% patient bootstrap):"]
        for cond, ci in self.pooled_c.items():
            lines.append(f"  {cond:<28} {ci['estimate']:.3f} [{ci['lo']:.3f}, {ci['hi']:.3f}]")
        j = len(self.repeats) * len(self.repeats[0].plans)
        lines += ["", f"corrected resampled t over {j} folds (Holm across the table):"]
        lines += _per_comparison(
            self.paired,
            lambda m, t: (
                f"{m} {t['mean_difference']:+.3f} (p={_p(t['p_corrected'])}, "
                f"Holm {_p(t['p_holm'])}, MDD {t['mdd']:.3f})"
            ),
        )
        lines += ["", "equivalence by TOST on the corrected se:"]
        lines += _per_comparison(
            self.equivalence,
            lambda m, t: (
                f"{m} margin {t['margin']:g}: p_tost={_p(t['p_tost'])}"
                f"{' (equivalent)' if t['equivalent'] else ''}"
            ),
        )
        hr = self.power["detectable_hazard_ratio"]
        lines.append(f"\n{int(self.power['events'])} events: detectable hazard ratio {hr:.2f}")
        chosen = {**self._selection(), **self._params()}
        picks = [
            f"  {model} {k.replace('_', ' ')}: "
            + ", ".join(f"{v:g} x {n}" for v, n in sorted(Counter(chosen[model][k]).items()))
            for model in ("generator", "fusion", "wsi_trained", "attention_mil", "omics_mlp")
            for k in ("sampler_steps", "survival_weight")
            if k in chosen.get(model, {})
        ]
        if picks:
            lines += ["", "chosen on each fold's validation patients (value x folds):", *picks]
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
                stacked = stack_repeats([getattr(res, name) for res in self.results])
                stacked.to_csv(out / f"{name}_per_fold.csv", index=False)
            stack_repeats([r.oof for r in self.results]).to_parquet(out / "oof_predictions.parquet")
            stack_repeats([r.synthetic for r in self.results]).to_parquet(
                out / "synthetic_expression.parquet"
            )
            hist = [{"repeat": i, **h} for i, r in enumerate(self.results) for h in r.histories]
            (out / "histories.json").write_text(json.dumps(json_safe(hist), allow_nan=False) + "\n")
        self.metrics.to_csv(out / "metrics_per_fold.csv", index=False)
        self.fidelity.to_csv(out / "fidelity_baselines_per_fold.csv", index=False)
        self.baseline_oof.to_parquet(out / "baseline_oof.parquet", index=False)
        (out / "summary.json").write_text(self.to_json() + "\n")
        (out / "table.txt").write_text(self.table() + "\n")
        return out

    def _sizes(self) -> tuple[float, float]:
        plans = [p for r in self.repeats for p in r.plans]
        return (
            float(np.mean([len(p.training_part) for p in plans])),
            float(np.mean([len(p.test) for p in plans])),
        )

    def _selection(self) -> dict[str, dict[str, list[float]]]:
        """The kept epoch of each trained model, the loss weighting each predictor and the
        sampler steps the generator chose on its validation patients, one value per fold
        (repeat-major; ``wsi_trained``'s are in ``baseline_params``)."""
        out: dict[str, dict[str, list[float]]] = {}
        for h in (h for r in self.results for h in r.histories):
            got = out.setdefault(h["model"], {})
            for k in ("best_epoch", "survival_weight", "sampler_steps"):
                if h.get(k) is not None:
                    got.setdefault(k, []).append(float(h[k]))
        return out

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
        gen = self.fidelity[self.fidelity["model"] == "generator"]
        conf = pd.concat([r.conformal for r in self.results], ignore_index=True)
        lines += [
            f"generator, synthetic vs real: mean per-gene Pearson {_pm(gen['mean_pearson'])}; "
            f"MAE {_pm(gen['mae'])}",
            f"conformal: grade-set coverage {_pm(conf['grade_coverage'])}, size "
            f"{_pm(conf['grade_set_size'])}; risk-interval coverage {_pm(conf['risk_coverage'])}",
        ]
        return "\n".join(lines)


def stack_repeats(frames: list[pd.DataFrame]) -> pd.DataFrame:
    """Frames of the repeats, one after the other, each with its ``repeat`` as first column."""
    tagged = [f.assign(repeat=i) for i, f in enumerate(frames)]
    out = pd.concat(tagged, ignore_index=True)
    return out[["repeat", *[c for c in out.columns if c != "repeat"]]]


def _agg(rows: pd.DataFrame, keys: Any) -> dict[str, dict[str, float]]:
    """Mean, sd and the number of folds with a value, per column ``keys`` of ``rows``."""
    return {
        k: {
            "mean": float(rows[k].mean()),
            "sd": float(rows[k].std(ddof=1)),
            "folds": int(rows[k].notna().sum()),
        }
        for k in keys
    }


def _metric_agg(rows: pd.DataFrame) -> dict[str, dict[str, float]]:
    """:func:`_agg` of ``METRICS``, with ``n`` (the test patients a metric used, over the
    folds where it was computed) where every row carries the counts ``n_survival``/``n_grade``."""
    out = _agg(rows, METRICS)
    for m in METRICS:
        col = "n_survival" if m in SURVIVAL_METRICS else "n_grade"
        if col in rows.columns and rows[col].notna().all():
            out[m]["n"] = int(rows[col][rows[m].notna()].sum())
    return out


def _per_comparison(
    table: dict[str, dict[str, dict[str, Any]]], cell: Callable[[str, dict[str, Any]], str]
) -> list[str]:
    """One summary line per comparison of ``table``: each metric's ``cell``, joined by '; '."""
    return [
        f"  {key:<28} " + "; ".join(cell(m, t) for m, t in per.items())
        for key, per in table.items()
    ]
