"""The report's charts: matplotlib figures rendered with the Agg canvas (no pyplot state)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from pathgen_batch.report.outcomes import SurvivalSummary

GROUP_COLOURS = {
    "high": "#c0392b",
    "intermediate": "#e69f00",
    "low": "#0072b2",
    "above median": "#c0392b",
    "at or below median": "#0072b2",
}


def _figure(w: float, h: float) -> Figure:
    fig = Figure(figsize=(w, h), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def save(fig: Figure, path: Path) -> Path:
    """Write ``fig`` as a PNG at ``path``."""
    fig.savefig(path, format="png", facecolor="white")
    return path


def grade_probs(classes: Sequence[str], probs: Sequence[float], in_set: Sequence[bool]) -> Figure:
    """Horizontal bars of one slide's grade probabilities; prediction-set members dark."""
    fig = _figure(3.6, 0.35 + 0.38 * len(classes))
    ax = fig.add_subplot()
    y = np.arange(len(classes))
    colours = ["#2c3e50" if s else "#b0bec5" for s in in_set]
    ax.barh(y, probs, color=colours)
    ax.set_yticks(y, [str(c) for c in classes], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.tick_params(axis="x", labelsize=7)
    for yi, p in zip(y, probs, strict=True):
        ax.text(min(float(p) + 0.02, 0.85), float(yi), f"{float(p):.2f}", va="center", fontsize=7)
    return fig


def risk_distribution(risk: np.ndarray, groups: np.ndarray, cuts: Sequence[float] = ()) -> Figure:
    """Histogram of risk (N,), stacked by risk group, with the groups' cut points as lines."""
    fig = _figure(5.5, 3.2)
    ax = fig.add_subplot()
    r = np.asarray(risk, dtype=np.float64)
    g = np.asarray(groups, dtype=object)
    bins = np.histogram_bin_edges(r, bins=min(30, max(5, r.size // 2)))
    names = [k for k in GROUP_COLOURS if k in set(g.tolist())]
    names += sorted(set(g.tolist()) - set(names))
    ax.hist(
        [r[g == k] for k in names],
        bins=[float(b) for b in bins],
        stacked=True,
        label=names,
        color=[GROUP_COLOURS.get(k, "#7f8c8d") for k in names],
    )
    for c in cuts:
        ax.axvline(float(c), color="#333333", linestyle="--", linewidth=1)
    ax.set_xlabel("risk (higher is worse); dashed: risk-group cut points")
    ax.set_ylabel("slides")
    ax.legend(title="risk group", fontsize=8)
    return fig


def grade_distribution(classes: Sequence[str], counts: np.ndarray) -> Figure:
    """Bars of predicted grade counts (C,)."""
    fig = _figure(5.5, 3.2)
    ax = fig.add_subplot()
    x = np.arange(len(classes))
    ax.bar(x, counts, color="#34495e")
    ax.set_xticks(x, [str(c) for c in classes], fontsize=8)
    ax.set_ylabel("slides")
    ax.set_title("predicted grade", fontsize=10)
    return fig


def kaplan_meier(summary: SurvivalSummary) -> Figure:
    """KM step curves per risk group, with the log-rank p-value and C-index in the title."""
    fig = _figure(6.0, 4.0)
    ax = fig.add_subplot()
    for c in summary.curves:
        ax.step(
            c.time,
            c.survival,
            where="post",
            color=GROUP_COLOURS.get(c.group),
            label=f"{c.group} (n={c.n}, events={c.n_events})",
        )
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("time")
    ax.set_ylabel("survival probability")
    ax.set_title(
        f"log-rank p = {summary.logrank_p:.3g}   Harrell C = {summary.c_index:.3f}", fontsize=10
    )
    ax.legend(fontsize=8)
    return fig


def confusion(classes: Sequence[str], counts: np.ndarray) -> Figure:
    """(C, C) counts as an annotated matrix (rows true, columns predicted)."""
    fig = _figure(5.0, 4.2)
    ax = fig.add_subplot()
    ax.imshow(counts, cmap="Blues")
    k = len(classes)
    labels = [str(c) for c in classes]
    ax.set_xticks(range(k), labels, rotation=20, ha="right", fontsize=8)
    ax.set_yticks(range(k), labels, fontsize=8)
    ax.set_xlabel("predicted grade")
    ax.set_ylabel("true grade")
    top = counts.max() if counts.size else 0
    for i in range(k):
        for j in range(k):
            colour = "white" if top and counts[i, j] > top / 2 else "black"
            ax.text(j, i, str(int(counts[i, j])), ha="center", va="center", color=colour)
    return fig


def fidelity(genes: Sequence[str], pearson: np.ndarray) -> Figure:
    """Per-gene Pearson r (G,) as bars sorted from highest to lowest (NaN genes left out)."""
    r = np.asarray(pearson, dtype=np.float64)
    ok = np.isfinite(r)
    names = np.asarray(list(genes), dtype=object)[ok]
    r = r[ok]
    order = np.argsort(-r, kind="stable")
    fig = _figure(max(6.0, min(16.0, 0.12 * r.size + 2.0)), 3.6)
    ax = fig.add_subplot()
    ax.bar(np.arange(r.size), r[order], color=np.where(r[order] > 0, "#27ae60", "#c0392b"))
    ax.axhline(0.0, color="black", linewidth=0.6)
    ax.set_ylim(-1, 1)
    ax.set_ylabel("Pearson r (synthetic vs real)")
    ax.set_xlabel(f"genes, sorted ({r.size})")
    if r.size <= 40:
        ax.set_xticks(np.arange(r.size), [str(n) for n in names[order]], rotation=90, fontsize=6)
    else:
        ax.set_xticks([])
    return fig
