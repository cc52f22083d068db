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

For a sampling generator, :func:`generator_fidelity` adds what a point score cannot show: the
posterior-mean estimate beside n-sample means (an n sweep: how much Monte-Carlo noise the mean
of few samples keeps), the CRPS of the samples (a proper score of the whole predictive
distribution, per gene averaged, in expression units) beside the CRPS of the training
patients' expression as a forecast (climatology), the MAE of the constant training-mean
predictor, and the genes predicted better than a random model (:func:`random_model_test`).
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


def crps_from_samples(real: Any, samples: Any) -> np.ndarray:
    """CRPS per gene, averaged over patients, of the ensembles ``samples`` (n, S, G) for the
    observations ``real`` (n, G), in the units of the data; lower is better.

    CRPS(F, y) = E|X - y| - E|X - X'| / 2 with X, X' independent draws of F, estimated from
    the S members without bias (the "fair" CRPS: E|X - X'| over the S (S - 1) distinct pairs),
    so ensembles of different sizes are comparable. One member gives the absolute error.
    """
    y = float_array("real", real, 2)
    x = float_array("samples", samples, 3)
    if x.shape[0] != y.shape[0] or x.shape[2] != y.shape[1] or x.shape[1] < 1:
        raise DataError(
            f"samples: expected (n, S, G) with (n, G) = {y.shape} and S >= 1, got {x.shape}"
        )
    skill = np.abs(x - y[:, None, :]).mean(axis=1)  # (n, G)
    xs = np.sort(x, axis=1)  # (n, S, G)
    S = x.shape[1]
    # sum_{s,s'} |x_s - x_s'| = 2 sum_k (2k - S - 1) x_(k), k = 1..S on sorted members
    w = (2.0 * np.arange(1, S + 1) - S - 1.0)[None, :, None]  # (1, S, 1)
    pairs = S * (S - 1) if S > 1 else 1
    spread = (2.0 * (w * xs).sum(axis=1)) / pairs  # (n, G) = E|X - X'| (0 for S = 1)
    return (skill - 0.5 * spread).mean(axis=0)  # (G,)


def random_model_test(
    real: Any, predicted: Any, *, n_perm: int = 1000, seed: int = 0, fdr: float = 0.05
) -> dict[str, Any]:
    """Genes predicted better than a random model, with BH-FDR over genes.

    The random model gives every patient the prediction of another patient drawn at random
    (the rows of ``predicted`` permuted): it has the same predictions, so the same marginal
    distribution per gene, and no link to the patient. A gene's one-sided p-value is
    ``(1 + #{r_perm >= r}) / (1 + n_perm)`` over ``n_perm`` seeded permutations (the same
    permutation for every gene, so gene-gene correlation is kept); it is well predicted when
    its Pearson r > 0 and its BH q < ``fdr``. Returns ``n_well_predicted``, ``p`` and ``q``
    (G,), constant genes NaN and left out.
    """
    x = float_array("real", real, 2)
    y = float_array("predicted", predicted, 2)
    if x.shape != y.shape or x.shape[0] < 3:
        raise DataError(f"predicted: expected the shape of real {x.shape}, got {y.shape}")
    if isinstance(n_perm, bool) or not isinstance(n_perm, int) or n_perm < 1:
        raise DataError(f"n_perm: expected an integer >= 1, got {n_perm!r}")
    r, _ = _columnwise_pearson(x, y)
    ok = np.isfinite(r)
    xc = x - x.mean(axis=0)
    yc = y - y.mean(axis=0)
    xn = xc / np.where(ok, np.sqrt((xc**2).sum(axis=0)), 1.0)  # (n, G), unit columns
    yn = yc / np.where(ok, np.sqrt((yc**2).sum(axis=0)), 1.0)
    rng = np.random.default_rng(seed)
    exceed = np.zeros(x.shape[1])
    for _ in range(n_perm):
        rp = (xn * yn[rng.permutation(x.shape[0])]).sum(axis=0)  # (G,)
        exceed += rp >= r - 1e-12
    p = (1.0 + exceed) / (1.0 + n_perm)
    p[~ok] = np.nan
    q = benjamini_hochberg(p)
    return {"n_well_predicted": int(np.sum((q < fdr) & (r > 0))), "p": p, "q": q}


def generator_fidelity(
    real: Any,
    samples: Any,
    posterior_mean: Any,
    train_expression: Any,
    sweep: Sequence[int],
    *,
    n_default: int,
    fdr: float = 0.05,
    n_perm: int = 1000,
    seed: int = 0,
) -> dict[str, float]:
    """A generator's fidelity on test patients, all in expression units.

    real (n, G); samples (n, S, G) with S >= max(sweep) and S >= n_default; posterior_mean
    (n, G): the deterministic estimate; train_expression (m, G): the training patients'
    expression (the constant predictor is its mean, the climatological forecast its rows).
    Keys: ``mean_pearson_posterior_mean``, ``mae_posterior_mean``,
    ``n_significant_pearson_posterior_mean``; per n in ``sweep``: ``mean_pearson_n<n>``,
    ``mae_n<n>`` of the mean of the first n samples; ``crps`` (all S samples, per gene
    averaged), ``crps_climatology``; ``mae_constant``; ``n_well_predicted_vs_random`` for the
    mean of the first ``n_default`` samples (the synthetic transcriptome the fusion model is
    given) and ``n_well_predicted_vs_random_posterior_mean``.
    """
    y = float_array("real", real, 2)
    x = float_array("samples", samples, 3)
    pm = float_array("posterior_mean", posterior_mean, 2)
    tr = float_array("train_expression", train_expression, 2)
    ns = [int(n) for n in sweep]
    if x.shape[1] < max([*ns, n_default]):
        raise DataError(f"samples: {x.shape[1]} per patient, the sweep needs {max(ns)}")
    if pm.shape != y.shape or tr.shape[1] != y.shape[1]:
        raise DataError(
            f"posterior_mean {pm.shape} and train_expression {tr.shape}: expected (n, G) and "
            f"(m, G) with (n, G) = {y.shape}"
        )
    pm_rep = expression_fidelity(y, pm, fdr=fdr).summary
    out: dict[str, float] = {
        "mean_pearson_posterior_mean": pm_rep["mean_pearson"],
        "mae_posterior_mean": pm_rep["mae"],
        "n_significant_pearson_posterior_mean": pm_rep["n_significant_pearson"],
    }
    for n in ns:
        m = x[:, :n].mean(axis=1)
        out[f"mean_pearson_n{n}"] = mean_per_gene_pearson(y, m)
        out[f"mae_n{n}"] = float(np.abs(m - y).mean())
    out["crps"] = float(crps_from_samples(y, x).mean())
    clim = np.broadcast_to(tr[None], (y.shape[0], *tr.shape))  # (n, m, G)
    out["crps_climatology"] = float(crps_from_samples(y, clim).mean())
    out["mae_constant"] = float(np.abs(tr.mean(axis=0)[None] - y).mean())
    default = x[:, :n_default].mean(axis=1)
    for key, pred in (("", default), ("_posterior_mean", pm)):
        test = random_model_test(y, pred, n_perm=n_perm, seed=seed, fdr=fdr)
        out[f"n_well_predicted_vs_random{key}"] = test["n_well_predicted"]
    return out
