"""The results of a cross-validation run: one :class:`FoldResult` per outer fold, and the
:class:`CVResult` across folds (per-fold tables, summary, paired tests, printed table, files)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pathgen_batch.config import to_dict
from pathgen_batch.evaluation import expression_fidelity, paired_comparison
from pathgen_batch.inference.bundle import json_safe
from pathgen_batch.inference.fusion import TrainedFusion
from pathgen_batch.inference.generator import TrainedGenerator
from pathgen_batch.training.config import CVConfig
from pathgen_batch.training.data import TrainingData, describe

CONDITIONS: dict[str, str] = {
    "real": "fusion + real transcriptome",
    "synthetic": "fusion + synthetic transcriptome",
    "wsi_only": "fusion + noise (diagnostic)",
    "attention_mil": "attention MIL (WSI only)",
    "omics_mlp": "omics MLP (real transcriptome)",
}
METRICS: dict[str, str] = {
    "harrell_c": "Harrell C",
    "uno_c": "Uno C",
    "td_auc": "td-AUC",
    "ibs": "IBS",
    "accuracy": "acc",
    "balanced_accuracy": "bal acc",
    "macro_auc": "macro AUC",
    "macro_f1": "macro F1",
    "qwk": "QWK",
}
# how many patients each condition's metrics and models used, per fold (beside ``METRICS``)
COUNTS: dict[str, str] = {
    "n_survival": "test patients with an outcome (survival metrics)",
    "n_grade": "test patients with a known grade (grade metrics)",
    "n_train_survival": "training patients with an outcome (survival loss)",
    "n_train_grade": "training patients with a known grade (grade loss)",
}
SURVIVAL_METRICS = ("harrell_c", "uno_c", "td_auc", "ibs")
# when some patients have no expression: the synthetic condition scored on the test patients
# with expression, the same patients as the conditions that read the real transcriptome
SYNTHETIC_ON_RNA: dict[str, str] = {"synthetic_rna": "fusion + synthetic, RNA patients"}
READS_EXPRESSION = ("real", "omics_mlp", "coxnet")
COMPARISONS = (("synthetic", "wsi_only"), ("synthetic", "real"), ("synthetic", "attention_mil"))


def same_patients(
    pairs: tuple[tuple[str, str], ...], conditions: set[str]
) -> tuple[tuple[str, str], ...]:
    """``pairs`` with the synthetic condition replaced by ``synthetic_rna`` where it is
    compared with one that reads the real transcriptome and ``synthetic_rna`` was scored
    (some patients have no expression): paired tests on the same patients."""
    if not set(SYNTHETIC_ON_RNA) & conditions:
        return pairs
    rna = next(iter(SYNTHETIC_ON_RNA))
    return tuple((rna if a == "synthetic" and b in READS_EXPRESSION else a, b) for a, b in pairs)


def conditions_of(metrics: pd.DataFrame) -> dict[str, str]:
    """The CV's conditions with their labels, ``synthetic_rna`` after ``synthetic`` when the
    per-fold ``metrics`` hold it."""
    out: dict[str, str] = {}
    present = set(metrics["condition"])
    for cond, label in CONDITIONS.items():
        out[cond] = label
        if cond == "synthetic":
            out.update({k: v for k, v in SYNTHETIC_ON_RNA.items() if k in present})
    return out


COMPARED_METRICS = ("harrell_c", "macro_auc", "balanced_accuracy")


@dataclass(frozen=True, eq=False)
class FoldResult:
    """Everything one outer fold produced.

    metrics: condition (``CONDITIONS``) -> metric (``METRICS``) -> value, NaN where it could
    not be computed, and the patient counts ``COUNTS``; oof: one row per (test patient,
    condition); fidelity, conformal: the fold's synthetic-vs-real fidelity summary (with the
    generator's ``n_train``) and conformal coverage (each with ``fold``); synthetic: the test
    patients' synthetic expression (mean over samples) and mean spread; histories: one fit
    history per model; generator, fusion: the fold's trained models (the fusion model
    calibrated on the validation patients).
    """

    fold: int
    metrics: dict[str, dict[str, float]]
    oof: pd.DataFrame
    fidelity: dict[str, float]
    conformal: dict[str, float]
    synthetic: pd.DataFrame
    histories: list[dict[str, Any]]
    seconds: float
    generator: TrainedGenerator
    fusion: TrainedFusion

    def metric_rows(self) -> list[dict[str, Any]]:
        """One row per condition: fold, condition and the metrics."""
        return [{"fold": self.fold, "condition": c, **m} for c, m in self.metrics.items()]


@dataclass(eq=False)
class CVResult:
    """Everything a cross-validation run measured.

    metrics: one row per (fold, condition) with ``METRICS`` and ``COUNTS``; fidelity (with the
    generator's ``n_train``), conformal: one row per fold; pooled_fidelity: synthetic vs real
    over all out-of-fold patients; paired: tests across folds; oof: one row per (patient,
    condition); synthetic: out-of-fold synthetic expression (mean over samples) per patient.
    """

    config: CVConfig
    data_summary: dict[str, Any]
    cohort_digest: str
    metrics: pd.DataFrame
    fidelity: pd.DataFrame
    pooled_fidelity: dict[str, float]
    conformal: pd.DataFrame
    paired: dict[str, dict[str, dict[str, Any]]]
    oof: pd.DataFrame
    synthetic: pd.DataFrame
    histories: list[dict[str, Any]]
    fold_seconds: list[float]
    seconds: float
    notes: list[str] = field(default_factory=list)

    @classmethod
    def from_folds(
        cls,
        folds: list[FoldResult],
        data: TrainingData,
        cfg: CVConfig,
        *,
        seconds: float,
        notes: list[str],
    ) -> CVResult:
        """The cross-fold result: fold tables stacked, out-of-fold synthetic expression in the
        cohort's patient order with its pooled fidelity, paired tests of ``COMPARISONS``."""
        metrics = pd.DataFrame([r for f in folds for r in f.metric_rows()])
        fidelity = pd.DataFrame([f.fidelity for f in folds])
        fidelity = fidelity[["fold", *[c for c in fidelity.columns if c != "fold"]]]
        order = {p: i for i, p in enumerate(data.patient_ids)}
        synthetic = pd.concat([f.synthetic for f in folds], ignore_index=True)
        synthetic = synthetic.sort_values("patient_id", key=lambda s: s.map(order)).reset_index(
            drop=True
        )
        idx = np.asarray([order[p] for p in synthetic["patient_id"]])
        has = data.expression_known[idx]  # pooled fidelity: the patients with expression
        genes = list(data.panel.genes)
        pooled = expression_fidelity(
            data.expression[idx[has]], synthetic[genes].to_numpy()[has], data.panel.genes
        ).summary
        paired: dict[str, dict[str, dict[str, Any]]] = {}
        for a, b in same_patients(COMPARISONS, set(metrics["condition"])):
            paired[f"{a} vs {b}"] = {
                m: paired_comparison(
                    metrics[metrics["condition"] == a].sort_values("fold")[m].to_numpy(),
                    metrics[metrics["condition"] == b].sort_values("fold")[m].to_numpy(),
                ).to_dict()
                for m in COMPARED_METRICS
            }
        return cls(
            config=cfg,
            data_summary=describe(data),
            cohort_digest=data.digest,
            metrics=metrics,
            fidelity=fidelity,
            pooled_fidelity={k: float(v) for k, v in pooled.items()},
            conformal=pd.DataFrame([f.conformal for f in folds]),
            paired=paired,
            oof=pd.concat([f.oof for f in folds], ignore_index=True),
            synthetic=synthetic,
            histories=[h for f in folds for h in f.histories],
            fold_seconds=[float(f.seconds) for f in folds],
            seconds=seconds,
            notes=notes,
        )

    def to_frame(self) -> pd.DataFrame:
        """Per-fold metrics: columns fold, condition, and one per metric."""
        return self.metrics.copy()

    def patients_used(self, cond: str, metric: str) -> int:
        """Test patients, summed over folds, that ``metric`` of ``cond`` was computed on (the
        folds where it could not be computed count none)."""
        rows = self.metrics[self.metrics["condition"] == cond]
        n = rows["n_survival" if metric in SURVIVAL_METRICS else "n_grade"]
        return int(n[rows[metric].notna()].sum())

    def train_counts(self, cond: str) -> dict[str, list[int]]:
        """Per fold, the training patients of ``cond``'s model with an outcome and with a
        known grade (``n_train_survival``, ``n_train_grade``)."""
        rows = self.metrics[self.metrics["condition"] == cond].sort_values("fold")
        return {k: [int(v) for v in rows[k]] for k in ("n_train_survival", "n_train_grade")}

    def summary(self) -> dict[str, Any]:
        """Mean and sd across folds of every metric (with ``n``: the test patients it used,
        over all folds), fidelity, conformal; the training patients of each model per fold
        (``patients``: the generator's, the fusion model's and, per condition, those of the
        condition's model); paired tests."""
        agg: dict[str, Any] = {}
        for cond in conditions_of(self.metrics):
            rows = self.metrics[self.metrics["condition"] == cond]
            agg[cond] = {
                m: {
                    "mean": float(rows[m].mean()),
                    "sd": float(rows[m].std(ddof=1)),
                    "n": self.patients_used(cond, m),
                }
                for m in METRICS
            }
        patients = {
            "generator_train": [int(v) for v in self.fidelity.sort_values("fold")["n_train"]],
            **self.train_counts("synthetic"),
            "conditions": {cond: self.train_counts(cond) for cond in conditions_of(self.metrics)},
        }
        fid = {
            k: {"mean": float(self.fidelity[k].mean()), "sd": float(self.fidelity[k].std(ddof=1))}
            for k in self.fidelity.columns
            if k != "fold"
        }
        conf = conformal_summary(
            self.conformal,
            lambda c: {"mean": float(c.mean()), "sd": float(c.std(ddof=1))},
        )
        return {
            "folds": int(self.metrics["fold"].nunique()),
            "data": self.data_summary,
            "cohort_digest": self.cohort_digest,
            "metrics": agg,
            "patients": patients,
            "fidelity": fid,
            "pooled_fidelity": self.pooled_fidelity,
            "conformal": conf,
            "paired": self.paired,
            "seconds": self.seconds,
            "fold_seconds": self.fold_seconds,
            "notes": self.notes,
            "config": to_dict(self.config),
        }

    def to_json(self) -> str:
        return json.dumps(json_safe(self.summary()), indent=2, allow_nan=False)

    def table(self) -> str:
        """The printed summary: mean +- sd across folds, fidelity, conformal, paired tests."""
        k = int(self.metrics["fold"].nunique())
        sizes = self.conformal["n_test"].astype(int).tolist()
        n = self.data_summary["patients"]
        n_rna = self.data_summary.get("expression_known", n)
        rna = "" if n_rna == n else f", {n_rna} with expression"
        lines = [
            f"{k}-fold patient-level CV, {n} patients{rna} (test folds "
            f"{'/'.join(map(str, sizes))}), {self.seconds:.0f} s",
            "",
        ]
        head = (
            f"{'condition':<34}"
            + "".join(f"{v:>15}" for v in METRICS.values())
            + f"{'n surv/grade':>15}"
        )
        lines += [head, "-" * len(head)]
        for cond, label in conditions_of(self.metrics).items():
            rows = self.metrics[self.metrics["condition"] == cond]
            cells = [_pm(rows[m]) for m in METRICS]
            used = f"{self.patients_used(cond, 'harrell_c')}/{self.patients_used(cond, 'accuracy')}"
            lines.append(f"{label:<34}" + "".join(f"{c:>15}" for c in cells) + f"{used:>15}")
        fus, mil = self.train_counts("synthetic"), self.train_counts("attention_mil")

        def losses(c: dict[str, list[int]]) -> str:
            return (
                f"survival loss {'/'.join(map(str, c['n_train_survival']))}, grade loss "
                f"{'/'.join(map(str, c['n_train_grade']))}"
            )

        lines += [
            "n surv/grade: test patients, over all folds, that the survival and the grade "
            "metrics used (those with an outcome, with a known grade"
            + ("; with expression too for the real-transcriptome rows)" if n_rna != n else ")"),
            "training patients per fold: generator "
            + "/".join(str(int(v)) for v in self.fidelity.sort_values("fold")["n_train"])
            + (" (with expression)" if n_rna != n else "")
            + f"; fusion and omics MLP {losses(fus)}"
            + ("" if fus == mil else f"; attention MIL {losses(mil)}"),
        ]
        g = self.data_summary["genes"]
        f = self.fidelity
        p = self.pooled_fidelity
        lines += [
            "",
            "fidelity, synthetic vs real on the test folds (per fold, mean +- sd):",
            f"  genes significant (Pearson r > 0, BH q < 0.05): "
            f"{_pm(f['n_significant_pearson'], 1)} of {g}; mean per-gene Pearson "
            f"{_pm(f['mean_pearson'])}; MAE {_pm(f['mae'])}; flattened Spearman "
            f"{_pm(f['flattened_spearman'])}",
            f"  pooled out-of-fold ({int(p['n_patients'])} patients): "
            f"{int(p['n_significant_pearson'])} of {g} genes significant; mean per-gene Pearson "
            f"{p['mean_pearson']:.3f}; MAE {p['mae']:.3f}; flattened Spearman "
            f"{p['flattened_spearman']:.3f}",
            *_generator_lines(f, g),
            "",
            f"conformal (alpha {self.config.alpha:g}, calibrated with synthetic transcriptomes "
            "on calibration patients that neither trained nor early-stopped any model: "
            f"{_disjoint(self.conformal)}), test folds:",
            f"  grade sets: coverage {_pm(self.conformal['grade_coverage'])}, mean size "
            f"{_pm(self.conformal['grade_set_size'])} of {len(self._classes())}",
            f"  risk intervals (cover the risk predicted with the real transcriptome, not the "
            f"event time): coverage "
            f"{_pm(self.conformal['risk_coverage'])}, mean width "
            f"{_pm(self.conformal['risk_width'])}",
            "",
            "paired tests across folds (synthetic minus other; Wilcoxon signed-rank, paired t):",
        ]
        for key, per_metric in self.paired.items():
            parts = []
            for m, t in per_metric.items():
                parts.append(
                    f"{METRICS[m]} {t['mean_difference']:+.3f} "
                    f"(W p={_p(t['wilcoxon_p'])}, t p={_p(t['t_p'])})"
                )
            lines.append(f"  {key:<28} " + "; ".join(parts))
        return "\n".join(lines)

    def _classes(self) -> list[str]:
        return [c[2:] for c in self.oof.columns if c.startswith("p_")]

    def write(self, out_dir: str | Path) -> Path:
        """metrics_per_fold.csv, fidelity_per_fold.csv, conformal_per_fold.csv, summary.json,
        table.txt, oof_predictions.parquet, synthetic_expression.parquet, histories.json."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        self.metrics.to_csv(out / "metrics_per_fold.csv", index=False)
        self.fidelity.to_csv(out / "fidelity_per_fold.csv", index=False)
        self.conformal.to_csv(out / "conformal_per_fold.csv", index=False)
        (out / "summary.json").write_text(self.to_json() + "\n")
        (out / "table.txt").write_text(self.table() + "\n")
        self.oof.to_parquet(out / "oof_predictions.parquet", index=False)
        self.synthetic.to_parquet(out / "synthetic_expression.parquet", index=False)
        (out / "histories.json").write_text(
            json.dumps(json_safe(self.histories), allow_nan=False) + "\n"
        )
        return out


RISK_INTERVAL_COVERS = (
    "the risk the fusion model predicts from the same slide with the patient's real "
    "transcriptome (not the event time)"
)


def conformal_summary(conformal: pd.DataFrame, agg: Any) -> dict[str, Any]:
    """``agg`` (a column -> summary function) of every per-fold conformal column, with
    ``calibration_disjoint`` (True when, in every fold, no calibration patient trained or
    early-stopped a model), what the risk interval covers and how the sets were calibrated."""
    out: dict[str, Any] = {
        k: agg(conformal[k]) for k in conformal.columns if k not in ("fold", "calibration_disjoint")
    }
    flags = conformal.get("calibration_disjoint")
    out["calibration_disjoint"] = bool(flags is not None and len(flags) and (flags == 1).all())
    out["calibration"] = (
        "split conformal on the calibration part of each training fold (a third set beside "
        "train and early stopping), with synthetic transcriptomes"
    )
    out["risk_interval_covers"] = RISK_INTERVAL_COVERS
    return out


def _generator_lines(f: pd.DataFrame, g: int) -> list[str]:
    """The posterior-mean estimate, the n-samples sweep, CRPS, the constant predictor and the
    random-model count (expression units), where the fidelity table has them."""
    if "mean_pearson_posterior_mean" not in f.columns:
        return []
    ns = sorted(
        int(c[len("mean_pearson_n") :]) for c in f.columns if c.startswith("mean_pearson_n")
    )
    sweep = ", ".join(f"n={n}: {_pm(f[f'mean_pearson_n{n}'])} / {_pm(f[f'mae_n{n}'])}" for n in ns)
    return [
        f"  posterior-mean estimate: mean per-gene Pearson {_pm(f['mean_pearson_posterior_mean'])}"
        f"; MAE {_pm(f['mae_posterior_mean'])}; mean of n samples (Pearson / MAE): {sweep}",
        f"  CRPS of the samples {_pm(f['crps'])} (training expression as the forecast "
        f"{_pm(f['crps_climatology'])}); MAE of the constant training mean "
        f"{_pm(f['mae_constant'])} (expression units)",
        f"  well predicted against a random model (r > 0, BH q < 0.05): "
        f"{_pm(f['n_well_predicted_vs_random'], 1)} of {g} (posterior mean "
        f"{_pm(f['n_well_predicted_vs_random_posterior_mean'], 1)})",
    ]


def _disjoint(conformal: pd.DataFrame) -> str:
    flags = conformal.get("calibration_disjoint")
    ok = flags is not None and len(flags) and (flags == 1).all()
    return "checked, disjoint" if ok else "NOT disjoint in every fold"


def _pm(values: pd.Series, digits: int = 3) -> str:
    v = values.to_numpy(dtype=np.float64)
    if np.isnan(v).all():
        return "n/a"
    m, s = np.nanmean(v), (np.nanstd(v, ddof=1) if np.sum(~np.isnan(v)) > 1 else np.nan)
    return f"{m:.{digits}f}" + ("" if np.isnan(s) else f" ± {s:.{digits}f}")


def _p(p: float) -> str:
    return "n/a" if p is None or p != p else f"{p:.3g}"
