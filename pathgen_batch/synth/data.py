"""Patients of a cohort: expression, grade, outcome, gene families, programs and folds.

Two sources:

- ``semi``: scikit-survival's breast cancer cohort (Desmedt et al. 2007; 198 patients, 76
  expression probes, grade, time to distant metastasis ``t.tdm`` with event ``e.tdm``, age, ER).
  Expression programs are a non-negative factorisation (sklearn NMF) of the per-gene min-max
  scaled expression; gene families are a Ward hierarchical clustering of the genes' correlation
  profiles.
- ``synthetic``: a latent program model. Each patient has program activities
  ``A ~ Dirichlet(0.7)``; each family of genes loads mainly on one program; expression is
  ``base + amp * log2(1 + 4 * A @ L) + noise``. Grade is cut from a linear score of the programs
  and survival times are Weibull with a proportional-hazards score of programs and grade,
  censored uniformly and administratively at ten years.

Programs are ordered by their Spearman correlation with grade (ascending), so the last program
is the one most tied to high grade; the renderer ties program k to morphology class k.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd

from pathgen_batch.cohort.splits import grade_event_strata
from pathgen_batch.omics.families import cluster_families, family_names
from pathgen_batch.omics.panel import GenePanel
from pathgen_batch.synth.config import CohortConfig

GRADE_CLASSES = ("well differentiated", "intermediate", "poorly differentiated")
DAYS_PER_YEAR = 365.25


@dataclass
class CohortData:
    """Per-patient tables before slides are rendered.

    clinical: patient_id, grade (str or None), grade_index (Int64, <NA> when unknown), time,
    event, age, er. expression: (N, G) floats indexed by patient_id, columns in panel order.
    programs: (N, K) non-negative, rows sum to 1, ordered by correlation with grade.
    """

    clinical: pd.DataFrame
    expression: pd.DataFrame
    panel: GenePanel
    programs: np.ndarray
    source: str


def patient_ids(indices: np.ndarray) -> list[str]:
    return [f"P{i + 1:04d}" for i in indices]


def grade_index(grades: pd.Series) -> pd.Series:
    """Grade labels -> nullable Int64 (0 well, 1 intermediate, 2 poorly differentiated)."""
    return grades.map({g: i for i, g in enumerate(GRADE_CLASSES)}).astype("Int64")


def order_by_grade(programs: np.ndarray, grade_idx: np.ndarray) -> np.ndarray:
    """Column order of (N, K) programs by Spearman correlation with grade, ascending."""
    from scipy.stats import spearmanr

    ok = ~np.isnan(grade_idx)
    rho = np.zeros(programs.shape[1])
    if ok.sum() > 2 and np.unique(grade_idx[ok]).size > 1:
        for k in range(programs.shape[1]):
            if programs[ok, k].std() > 0:
                rho[k] = float(spearmanr(programs[ok, k], grade_idx[ok])[0])
    return np.argsort(rho, kind="stable")


def expression_programs(
    expression: np.ndarray, k: int, seed: int, contrast: float = 1.0
) -> np.ndarray:
    """(N, G) expression -> (N, K) program shares (rows sum to 1).

    Each gene is min-max scaled to [0, 1] across patients and factorised with NMF,
    ``X ~ W H``. Each program's weights are divided by their cohort mean (programs comparable),
    raised to ``contrast`` and renormalised per patient.
    """
    from sklearn.decomposition import NMF
    from sklearn.exceptions import ConvergenceWarning
    from threadpoolctl import threadpool_limits

    lo, hi = expression.min(0), expression.max(0)
    x = (expression - lo) / np.where(hi > lo, hi - lo, 1.0)  # (N, G) in [0, 1]
    with warnings.catch_warnings(), threadpool_limits(1):
        # the factorisation is used as is when it stops at max_iter
        warnings.simplefilter("ignore", ConvergenceWarning)
        w = NMF(n_components=k, init="nndsvda", random_state=seed, max_iter=3000).fit_transform(x)
    w = w / np.maximum(w.mean(0), 1e-12)  # (N, K)
    w = np.power(w, contrast) + 1e-9
    return w / w.sum(1, keepdims=True)


def semi_data(cfg: CohortConfig) -> CohortData:
    """Real patients of scikit-survival's breast cancer cohort (all or a seeded subset)."""
    from sksurv.datasets import load_breast_cancer

    x, y = load_breast_cancer()
    clinical_cols = ["age", "er", "grade", "size"]
    expr = x.drop(columns=clinical_cols).astype(np.float64)  # (198, 76)
    n_genes = cfg.resolved_genes
    if n_genes < expr.shape[1]:
        keep = np.sort(np.argsort(-expr.var(0).to_numpy(), kind="stable")[:n_genes])
        expr = expr.iloc[:, keep]
    values = expr.to_numpy()
    fam = cluster_families(values, cfg.n_families)
    panel = GenePanel(tuple(expr.columns), family_names(fam))

    grades = x["grade"].astype(object).where(x["grade"].isin(GRADE_CLASSES), None)
    gidx = grade_index(grades)
    programs = expression_programs(values, cfg.n_programs, cfg.seed, cfg.program_contrast)
    programs = programs[:, order_by_grade(programs, gidx.to_numpy(dtype=float, na_value=np.nan))]

    n_all = len(x)
    rng = np.random.default_rng([cfg.seed, 11])
    n = cfg.resolved_patients
    rows = np.arange(n_all) if n == n_all else np.sort(rng.choice(n_all, n, replace=False))
    ids = patient_ids(rows)
    clinical = pd.DataFrame(
        {
            "patient_id": ids,
            "grade": pd.Series(grades.to_numpy()[rows], dtype=object),
            "grade_index": gidx.to_numpy()[rows],
            "time": y["t.tdm"][rows].astype(np.float64),
            "event": y["e.tdm"][rows].astype(bool),
            "age": x["age"].to_numpy(dtype=np.float64)[rows],
            "er": pd.Series(x["er"].astype(str).to_numpy()[rows], dtype=object),
        }
    )
    clinical["grade_index"] = clinical["grade_index"].astype("Int64")
    expression = pd.DataFrame(
        values[rows], index=pd.Index(ids, name="patient_id"), columns=list(panel.genes)
    )
    return CohortData(clinical, expression, panel, programs[rows], "sksurv.load_breast_cancer")


def synthetic_data(cfg: CohortConfig) -> CohortData:
    """Patients simulated from a latent program model (see the module docstring)."""
    rng = np.random.default_rng([cfg.seed, 12])
    n, g, f, k = cfg.resolved_patients, cfg.resolved_genes, cfg.n_families, cfg.n_programs
    a = rng.dirichlet(np.full(k, 0.7), size=n)  # (N, K) program activities

    fam = np.sort(np.arange(g) % f)  # (G,) families of near-equal size, contiguous
    home = fam % k  # (G,) main program of each gene
    load = rng.gamma(0.5, 0.2, size=(k, g))  # (K, G) background loadings
    load[home, np.arange(g)] = rng.gamma(4.0, 0.5, size=g)
    base = rng.uniform(6.0, 11.0, g)
    amp = rng.uniform(0.5, 2.0, g)
    expr = base + amp * np.log2(1.0 + 4.0 * a @ load) + rng.normal(0.0, 0.3, (n, g))  # (N, G)
    genes = tuple(f"G{i + 1:05d}" for i in range(g))
    panel = GenePanel(genes, family_names(fam))

    score = 3.0 * a[:, -1] - 1.5 * a[:, 0] + rng.normal(0.0, 0.4, n)  # (N,)
    cuts = np.quantile(score, [0.2, 0.6]) if n > 1 else np.array([np.inf, np.inf])
    gidx = np.searchsorted(cuts, score, side="right")  # (N,) 0, 1, 2
    hazard = 2.0 * a[:, -1] - 1.0 * a[:, 0] + 0.4 * gidx  # (N,) log relative hazard
    shape, scale = 1.3, 16.0 * DAYS_PER_YEAR
    t_event = scale * (rng.exponential(size=n) / np.exp(hazard)) ** (1.0 / shape)
    t_censor = np.minimum(rng.uniform(1.0, 15.0, n) * DAYS_PER_YEAR, 10.0 * DAYS_PER_YEAR)
    event = t_event <= t_censor
    time = np.maximum(np.round(np.minimum(t_event, t_censor)), 1.0)
    p_er = np.array([0.85, 0.7, 0.5])[gidx]
    er = np.where(rng.uniform(size=n) < p_er, "positive", "negative")
    age = np.clip(np.round(rng.normal(55.0, 11.0, n)), 25.0, 90.0)

    programs = a[:, order_by_grade(a, gidx.astype(float))]
    ids = patient_ids(np.arange(n))
    clinical = pd.DataFrame(
        {
            "patient_id": ids,
            "grade": pd.Series([GRADE_CLASSES[i] for i in gidx], dtype=object),
            "grade_index": pd.array(gidx, dtype="Int64"),
            "time": time.astype(np.float64),
            "event": event.astype(bool),
            "age": age.astype(np.float64),
            "er": pd.Series(er, dtype=object),
        }
    )
    expression = pd.DataFrame(expr, index=pd.Index(ids, name="patient_id"), columns=list(genes))
    return CohortData(clinical, expression, panel, programs, "latent program model")


def cohort_data(cfg: CohortConfig) -> CohortData:
    return semi_data(cfg) if cfg.mode == "semi" else synthetic_data(cfg)


def fold_strata(clinical: pd.DataFrame) -> list[str]:
    """Stratum of each patient: grade index (or 'na') and event."""
    g = clinical["grade_index"].astype("Int64")
    return grade_event_strata(
        [None if pd.isna(gi) else int(gi) for gi in g], list(clinical["event"])
    )
