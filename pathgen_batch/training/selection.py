"""Choices made on a fold's validation patients, after or around the fit loops: the loss
weighting of a predictor (``FusionTrainConfig.survival_weights``) and the step count of the
generator's sampler (``GeneratorTrainConfig.sampler_steps``). The test fold never enters."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import numpy as np

from pathgen_batch.evaluation import mean_per_gene_pearson
from pathgen_batch.inference.generator import TrainedGenerator
from pathgen_batch.training.config import FusionTrainConfig
from pathgen_batch.training.loops import FitHistory, Progress

M = TypeVar("M")


def selection_score(hist: FitHistory) -> float:
    """Validation survival NLL + grade cross-entropy at the kept epoch (a part that is NaN,
    for want of outcomes or grades among the validation patients, counts 0; both: inf)."""
    at = hist.best_epoch - 1
    parts = [hist.val_scores.get(k, ())[at : at + 1] for k in ("survival_nll", "grade_ce")]
    vals = [float(p[0]) for p in parts if p and not math.isnan(float(p[0]))]
    return sum(vals) if vals else math.inf


def select_loss_weights(
    cfg: FusionTrainConfig,
    fit: Callable[[FusionTrainConfig, Progress | None], tuple[M, FitHistory]],
    progress: Progress | None = None,
) -> tuple[M, FitHistory, FusionTrainConfig, dict[str, Any] | None]:
    """``fit(cfg, progress)`` once, or once per candidate of ``cfg.survival_weights``
    (survival share s, grade share 1 - s; its epochs reported as ``<model> survival weight s``,
    a name MLflow takes as a metric prefix) keeping the lowest :func:`selection_score` (the
    first on ties).

    Returns (model, history, the config it was trained with, the selection record or None).
    """
    if not cfg.survival_weights:
        model, hist = fit(cfg, progress)
        return model, hist, cfg, None
    best: tuple[M, FitHistory, FusionTrainConfig] | None = None
    scores, epochs = [], []
    for s in cfg.survival_weights:
        c = dataclasses.replace(cfg, survival_weight=float(s), grade_weight=1.0 - float(s))
        model, hist = fit(c, _tagged(progress, f" survival weight {float(s):g}"))
        scores.append(selection_score(hist))
        epochs.append(hist.best_epoch)
        if best is None or scores[-1] < min(scores[:-1], default=math.inf):
            best = (model, hist, c)
    assert best is not None
    record = {
        "candidates": [float(s) for s in cfg.survival_weights],
        "val_scores": [v if math.isfinite(v) else None for v in scores],
        "best_epochs": epochs,
        "chosen": best[2].survival_weight,
        "criterion": "validation survival NLL + grade cross-entropy at the kept epoch",
    }
    return best[0], best[1], best[2], record


def _tagged(progress: Progress | None, tag: str) -> Progress | None:
    if progress is None:
        return None
    return lambda e: progress(dataclasses.replace(e, model=e.model + tag))


def select_sampler_steps(
    gen: TrainedGenerator,
    candidates: Sequence[int],
    val_bags: Sequence[np.ndarray],
    val_expression: np.ndarray,
    seed: int,
) -> TrainedGenerator:
    """``gen`` with the sampler step count of ``candidates`` whose n-sample mean (the stored
    sampler's n, drawn with ``seed``) of the validation patients correlates best with their
    real expression (mean per-gene Pearson; the first on ties), recorded in its provenance
    as ``sampler_steps``. No candidates, or under 3 validation patients (no correlation):
    ``gen`` as it is."""
    if not candidates or len(val_bags) < 3:
        return gen
    scores = []
    for k in candidates:
        sampler = dataclasses.replace(gen.sampler, steps=int(k))
        pred, _ = gen.generate(val_bags, sampler=sampler, seed=seed)
        scores.append(mean_per_gene_pearson(val_expression, pred))  # NaN: every gene constant
    i = int(np.argmax([-math.inf if math.isnan(r) else r for r in scores]))
    record = {
        "candidates": [int(k) for k in candidates],
        "val_pearson": [None if math.isnan(r) else r for r in scores],
        "chosen": int(candidates[i]),
        "criterion": "validation mean per-gene Pearson of the n-sample mean",
    }
    return dataclasses.replace(
        gen,
        sampler=dataclasses.replace(gen.sampler, steps=int(candidates[i])),
        provenance={**gen.provenance, "sampler_steps": record},
    )
