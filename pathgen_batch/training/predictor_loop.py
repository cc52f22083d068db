"""The fit loop of the predictors: the fusion model and its single-modality baselines.

The loss is ``survival_weight`` x survival NLL + ``grade_weight`` x grade cross-entropy; the
kept epoch is chosen on the validation patients by ``select_on`` (survival NLL by default,
Harrell's C, or the loss itself), with the loop machinery of :mod:`pathgen_batch.training.loops`.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pathgen_batch.errors import DataError
from pathgen_batch.evaluation.survival import harrell_c_index
from pathgen_batch.features.bags import padded
from pathgen_batch.models.fusion import FusionOutput
from pathgen_batch.models.survival import hazards_from_logits, risk_from_hazards, survival_nll
from pathgen_batch.training.config import FusionTrainConfig
from pathgen_batch.training.loops import (
    EVAL_BATCH,
    Examples,
    FitHistory,
    Progress,
    _check_sets,
    _chunks,
    _optimizer,
    _run,
    _train_epoch,
    seeded,
)


def prediction_loss(
    out: FusionOutput,
    bins: torch.Tensor,
    censored: torch.Tensor,
    grade: torch.Tensor,
    survival_weight: float,
    grade_weight: float,
) -> torch.Tensor:
    """survival_weight x survival NLL + grade_weight x grade cross-entropy; scalar.

    bins (B,) int64 with -1 = outcome unknown, censored (B,) bool, grade (B,) int64 with -1 =
    unknown: unknown outcomes are left out of the survival NLL and unknown grades out of the
    cross-entropy (each 0 when nothing in the batch is known).
    """
    has = bins >= 0  # (B,)
    if bool(has.any()):
        surv = survival_nll(out.hazard_logits[has], bins[has], censored[has])
    else:
        surv = out.hazard_logits.sum() * 0.0
    ce = _grade_ce(out, grade)
    if ce is None:
        ce = out.grade_logits.sum() * 0.0
    return survival_weight * surv + grade_weight * ce


def _grade_ce(out: FusionOutput, grade: torch.Tensor) -> torch.Tensor | None:
    """Mean grade cross-entropy over the patients of a known grade (``grade`` (B,), -1 =
    unknown); None when none is known."""
    known = grade >= 0  # (B,)
    if not bool(known.any()):
        return None
    return F.cross_entropy(out.grade_logits[known], grade[known])


def predictor_inputs(
    model_name: str,
    ex: Examples,
    idx: np.ndarray,
    dev: torch.device,
    max_tiles: int | None,
    rng: np.random.Generator | None,
) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """(omics (B, G) | None, feats (B, N, D) | None, mask (B, N) | None) for a predictor."""
    omics = None
    if model_name != "attention_mil":
        omics = torch.from_numpy(ex.need("omics")[idx].astype(np.float32)).to(dev)
    if model_name == "omics_mlp":
        return omics, None, None
    feats, mask = padded(ex.bags, idx, dev, max_tiles, rng)
    return omics, feats, mask


def fit_predictor(
    model: nn.Module,
    model_name: str,
    train: Examples,
    val: Examples,
    cfg: FusionTrainConfig,
    *,
    device: str | torch.device = "cpu",
    progress: Progress | None = None,
    name: str | None = None,
) -> FitHistory:
    """Train a fusion model or baseline on 0.3 x survival NLL + 0.7 x grade CE (by default)."""
    _check_sets(train, val)
    dev = torch.device(device)
    if cfg.validate_slide_only:  # validated as scored: the absent token for every patient
        val = dataclasses.replace(val, omics=np.full_like(val.need("omics"), np.nan))

    def labels(ex: Examples, idx: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        bins = torch.from_numpy(ex.need("bins")[idx].astype(np.int64)).to(dev)
        cens = torch.from_numpy(ex.need("censored")[idx].astype(bool)).to(dev)
        grade = torch.from_numpy(ex.need("grade")[idx].astype(np.int64)).to(dev)
        return bins, cens, grade

    with seeded(cfg.seed, dev):
        model.to(dev)
        opt = _optimizer(model, cfg.optim)
        rng = np.random.default_rng([cfg.seed, 2])

        def batch_loss(idx: np.ndarray) -> torch.Tensor:
            out = model(*predictor_inputs(model_name, train, idx, dev, cfg.max_tiles, rng))
            return prediction_loss(out, *labels(train, idx), cfg.survival_weight, cfg.grade_weight)

        def train_epoch(epoch: int) -> float:
            batches = _chunks(rng.permutation(len(train)), cfg.batch_size)
            return _train_epoch(model, opt, batches, batch_loss, cfg.grad_clip)

        def validate() -> tuple[float, dict[str, float]]:
            outs = []
            allv = np.arange(len(val))
            for idx in _chunks(allv, EVAL_BATCH):
                outs.append(model(*predictor_inputs(model_name, val, idx, dev, None, None)))
            out = FusionOutput(
                torch.cat([o.hazard_logits for o in outs]),
                torch.cat([o.grade_logits for o in outs]),
                None,
            )
            bins, cens, grade = labels(val, allv)
            loss = prediction_loss(out, bins, cens, grade, cfg.survival_weight, cfg.grade_weight)
            scores = survival_scores(out, bins, cens, val.time)
            return float(loss.item()), {**scores, "grade_ce": grade_cross_entropy(out, grade)}

        return _run(
            name or model_name,
            model,
            cfg.optim,
            train_epoch,
            validate,
            progress,
            cfg.select_on,
            maximize=cfg.select_on == "c_index",
        )


def grade_cross_entropy(out: FusionOutput, grade: torch.Tensor) -> float:
    """:func:`_grade_ce` as a float, NaN when no grade is known."""
    ce = _grade_ce(out, grade)
    return float("nan") if ce is None else float(ce.item())


def survival_scores(
    out: FusionOutput, bins: torch.Tensor, censored: torch.Tensor, time: np.ndarray | None
) -> dict[str, float]:
    """Validation ``survival_nll`` (patients with an outcome; NaN if none) and ``c_index``
    (Harrell's C of the predicted risk against ``time`` (P,), NaN without comparable pairs or
    times)."""
    has = bins >= 0  # (P,)
    if not bool(has.any()):
        return {"survival_nll": float("nan"), "c_index": float("nan")}
    nll = float(survival_nll(out.hazard_logits[has], bins[has], censored[has]).item())
    c = float("nan")
    if time is not None:
        keep = has.cpu().numpy()
        risk = risk_from_hazards(hazards_from_logits(out.hazard_logits)).cpu().numpy()
        event = ~censored.cpu().numpy()
        try:
            c = harrell_c_index(event[keep], np.asarray(time)[keep], risk[keep])
        except DataError:
            c = float("nan")
    return {"survival_nll": nll, "c_index": c}
