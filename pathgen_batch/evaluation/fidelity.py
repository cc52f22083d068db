"""Fidelity of synthetic transcriptomes: how well generated expression tracks the real one.

Both matrices are (n_patients, n_genes), aligned row by row (same patients) and column by
column (same panel order). The main measure is per gene, across patients: does the synthetic
expression of gene g rank and scale patients as the real one does? Per-gene Pearson and Spearman
correlations come with two-sided p-values and Benjamini-Hochberg q-values over genes; a gene is
"well predicted" when its correlation is positive with q < ``fdr``. Alongside: per-gene mean
absolute error, per-gene 1-D Wasserstein distance between the two distributions over patients,
and the single Spearman correlation of all patients x genes flattened (the number the PathGen
reference reports, which mostly measures whether mean gene levels are reproduced).

A gene that is constant in either matrix has no correlation: NaN, counted in
``n_genes_constant`` and left out of the FDR correction and the means.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from pathgen_batch.errors import DataError
from pathgen_batch.evaluation._checks import float_array
from pathgen_batch.evaluation.multiplicity import benjamini_hochberg

PER_GENE_COLUMNS = (
    "gene",
    "pearson",
    "pearson_p",
    "pearson_q",
    "spearman",
    "spearman_p",
    "spearman_q",
    "mae",
    "wasserstein",
)


def _columnwise_pearson(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pearson r and two-sided p per column of x, y (n, G); NaN for constant columns."""
    n = x.shape[0]
    constant = (np.ptp(x, axis=0) == 0) | (np.ptp(y, axis=0) == 0)  # (G,)
    xc = x - x.mean(axis=0)  # (n, G)
    yc = y - y.mean(axis=0)  # (n, G)
    denom = np.sqrt((xc**2).sum(axis=0) * (yc**2).sum(axis=0))  # (G,)
    safe = np.where(constant, 1.0, denom)
    r = np.clip((xc * yc).sum(axis=0) / safe, -1.0, 1.0)  # (G,)
    r[constant] = np.nan
    df = n - 2
    with np.errstate(divide="ignore", invalid="ignore"):
        t = r * np.sqrt(df / ((1.0 - r) * (1.0 + r)))  # (G,), +-inf at |r| = 1
    p = 2.0 * stats.t.sf(np.abs(t), df)
    p[constant] = np.nan
    return r, p


def mean_per_gene_pearson(real: Any, synthetic: Any) -> float:
    """The mean over genes of the Pearson correlation across patients of ``real`` and
    ``synthetic`` (n_patients, n_genes), constant genes left out (NaN if all are): the
    ``mean_pearson`` of :func:`expression_fidelity` without the rest of its report."""
    x = float_array("real", real, 2)
    y = float_array("synthetic", synthetic, 2)
    if x.shape != y.shape or x.shape[0] < 3:
        raise DataError(
            f"synthetic: expected the shape of real {x.shape} with at least 3 patients, "
            f"got {y.shape}"
        )
    r, _ = _columnwise_pearson(x, y)
    return float(np.nanmean(r)) if np.isfinite(r).any() else float("nan")


@dataclass(frozen=True, eq=False)
class FidelityReport:
    """``summary``: scalar measures; ``per_gene``: one row per gene (``PER_GENE_COLUMNS``)."""

    summary: dict[str, float]
    per_gene: pd.DataFrame


def expression_fidelity(
    real: Any,
    synthetic: Any,
    genes: Sequence[str] | None = None,
    *,
    fdr: float = 0.05,
) -> FidelityReport:
    """Compare synthetic with real expression, both (n_patients, n_genes).

    genes: names of the columns (default: the columns of ``real`` if it is a DataFrame, else
    ``gene_0 ...``). fdr: the q-value threshold for counting significantly predicted genes.

    Summary keys: ``n_patients``, ``n_genes``, ``n_genes_constant``, ``mean_pearson``,
    ``median_pearson``, ``mean_spearman``, ``n_significant_pearson`` and
    ``n_significant_spearman`` (r > 0 and q < fdr), ``fraction_significant_pearson``, ``mae``
    (over all entries), ``mean_wasserstein``, ``flattened_spearman``, ``fdr``.
    """
    if genes is None and isinstance(real, pd.DataFrame):
        genes = [str(c) for c in real.columns]
    x = float_array("real", real, 2)
    y = float_array("synthetic", synthetic, 2)
    if x.shape != y.shape:
        raise DataError(
            f"synthetic: expected the shape of real {x.shape} (patients, genes), got {y.shape}"
        )
    n, g = x.shape
    if n < 3:
        raise DataError(f"real: expected at least 3 patients for correlations, got {n}")
    if g < 1:
        raise DataError("real: expected at least one gene column, got none")
    if not 0.0 < fdr < 1.0:
        raise DataError(f"fdr: expected a number in (0, 1), got {fdr}")
    names = [f"gene_{i}" for i in range(g)] if genes is None else [str(s) for s in genes]
    if len(names) != g:
        raise DataError(f"genes: expected {g} names (one per column), got {len(names)}")

    pearson, pearson_p = _columnwise_pearson(x, y)
    # Spearman is Pearson on (average) ranks, with the same t-distribution p-value.
    spearman, spearman_p = _columnwise_pearson(stats.rankdata(x, axis=0), stats.rankdata(y, axis=0))
    pearson_q = benjamini_hochberg(pearson_p)
    spearman_q = benjamini_hochberg(spearman_p)
    mae = np.abs(y - x).mean(axis=0)  # (G,)
    wasserstein = np.array([stats.wasserstein_distance(x[:, j], y[:, j]) for j in range(g)])

    per_gene = pd.DataFrame(
        {
            "gene": names,
            "pearson": pearson,
            "pearson_p": pearson_p,
            "pearson_q": pearson_q,
            "spearman": spearman,
            "spearman_p": spearman_p,
            "spearman_q": spearman_q,
            "mae": mae,
            "wasserstein": wasserstein,
        },
        columns=list(PER_GENE_COLUMNS),
    )
    constant = np.isnan(pearson)
    sig_pearson = int(np.sum((pearson_q < fdr) & (pearson > 0)))
    sig_spearman = int(np.sum((spearman_q < fdr) & (spearman > 0)))
    scored = int(g - constant.sum())
    flat = _flattened_spearman(x, y)
    summary: dict[str, float] = {
        "n_patients": n,
        "n_genes": g,
        "n_genes_constant": int(constant.sum()),
        "mean_pearson": float(np.nanmean(pearson)) if scored else float("nan"),
        "median_pearson": float(np.nanmedian(pearson)) if scored else float("nan"),
        "mean_spearman": float(np.nanmean(spearman)) if scored else float("nan"),
        "n_significant_pearson": sig_pearson,
        "n_significant_spearman": sig_spearman,
        "fraction_significant_pearson": sig_pearson / g,
        "mae": float(np.abs(y - x).mean()),
        "mean_wasserstein": float(wasserstein.mean()),
        "flattened_spearman": flat,
        "fdr": float(fdr),
    }
    return FidelityReport(summary=summary, per_gene=per_gene)


def _flattened_spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman correlation of all entries flattened; NaN if either matrix is constant."""
    if np.ptp(x) == 0 or np.ptp(y) == 0:
        return float("nan")
    return float(stats.spearmanr(x.ravel(), y.ravel()).statistic)
