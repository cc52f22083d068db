"""Train one model on given patients: fit scalers and time bins, build, fit, wrap.

``train_generator`` and ``train_predictor`` take the training data and two index arrays, the
patients whose weights are fit (``train_idx``) and the inner validation patients for early
stopping (``val_idx``). Every scaler and the time-bin edges are fit on ``train_idx`` only;
nothing else is seen. Of those patients, the generator and the models fed real transcriptomes
(the fusion model, the omics MLP) use only those with expression (``expression_known``); the
attention-MIL baseline uses all of them, and the expression scaler is fit on the training
patients with expression. ``calibrate_fusion`` adds split-conformal states fit on held-out patients
that chose no checkpoint: the calibration part of a three-way split, which a generator records
(``cal_patients``) so that ``train_calibrated_fusion`` calibrates on the same patients.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from pathgen_batch import __version__
from pathgen_batch.config import to_dict
from pathgen_batch.errors import DataError
from pathgen_batch.evaluation.conformal import (
    SetMethod,
    fit_classification,
    fit_interval,
    min_calibration_size,
)
from pathgen_batch.inference.fusion import RiskCuts, TrainedFusion
from pathgen_batch.inference.generator import TrainedGenerator
from pathgen_batch.inference.scaling import ZScoreScaler
from pathgen_batch.models import build_model
from pathgen_batch.models.diffusion import GaussianDiffusion
from pathgen_batch.models.families import family_ids
from pathgen_batch.models.generator import GeneratorConfig, TranscriptomeDenoiser
from pathgen_batch.models.survival import fit_bin_edges, to_bins
from pathgen_batch.omics.panel import GenePanel
from pathgen_batch.training.config import FusionTrainConfig, GeneratorTrainConfig
from pathgen_batch.training.cv_result import RISK_INTERVAL_COVERS
from pathgen_batch.training.data import (
    TrainingData,
    check_training_part,
    with_expression_parts,
)
from pathgen_batch.training.loops import Examples, FitHistory, Progress, fit_generator, seeded
from pathgen_batch.training.predictor_loop import fit_predictor
from pathgen_batch.training.selection import select_loss_weights, select_sampler_steps


def _indices(data: TrainingData, idx: Sequence[int] | np.ndarray, name: str) -> np.ndarray:
    ix = np.asarray(idx, dtype=np.int64)
    if ix.ndim != 1 or ix.size == 0:
        raise DataError(f"{name}: expected a non-empty 1-D index array")
    if ix.min() < 0 or ix.max() >= data.n_patients:
        raise DataError(f"{name}: indices must lie in [0, {data.n_patients})")
    return ix


def _split(data: TrainingData, train_idx: Any, val_idx: Any) -> tuple[np.ndarray, np.ndarray]:
    tr = _indices(data, train_idx, "train_idx")
    va = _indices(data, val_idx, "val_idx")
    if np.intersect1d(tr, va).size:
        raise DataError("train_idx and val_idx: a patient is in both")
    return tr, va


def provenance(
    data: TrainingData,
    tr: np.ndarray,
    va: np.ndarray,
    seed: int,
    history: dict[str, Any],
    extra: dict[str, Any] | None = None,
    cal: np.ndarray | None = None,
) -> dict[str, Any]:
    """What a bundle records about how a model was trained; ``cal``: patients held out for
    conformal calibration only (neither trained on nor early-stopped on)."""
    out = {
        "cohort_digest": data.digest,
        "n_train": int(tr.size),
        "n_val": int(va.size),
        "train_folds": sorted({int(f) for f in data.folds[np.concatenate([tr, va])]}),
        "val_patients": [data.patient_ids[i] for i in va],
        "seed": int(seed),
        "metrics": {
            "best_val_loss": history["best_val_loss"],
            "best_epoch": history["best_epoch"],
            "best_val_score": history.get("best_val_score", history["best_val_loss"]),
            "select_on": history.get("select_on", "loss"),
        },
        "history": history,
        "created_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "pathgen_batch_version": __version__,
    }
    if cal is not None:
        out["cal_patients"] = [data.patient_ids[i] for i in cal]
    out.update(extra or {})
    return out


def generator_config(
    data: TrainingData, cfg: GeneratorTrainConfig, panel: GenePanel | None = None
) -> GeneratorConfig:
    """The denoiser config for this data and ``panel`` (default: the data's): data-dependent
    sizes plus ``cfg.model``."""
    p = panel or data.panel
    return cfg.model.for_data(data.feature_dim, p.family_sizes, family_ids(p.families))


def train_generator(
    data: TrainingData,
    train_idx: Sequence[int] | np.ndarray,
    val_idx: Sequence[int] | np.ndarray,
    cfg: GeneratorTrainConfig | None = None,
    *,
    device: str | torch.device = "cpu",
    progress: Progress | None = None,
    name: str = "pathgen-generator",
    cal_idx: Sequence[int] | np.ndarray | None = None,
) -> TrainedGenerator:
    """Fit scalers on ``train_idx``, train the diffusion generator with early stopping on
    ``val_idx``, and return it with the best epoch's weights; of both, only the patients with
    expression are used (and recorded as its ``n_train`` and ``val_patients``). ``cal_idx``:
    patients held out for the conformal calibration of a fusion model, recorded as
    ``cal_patients`` and never seen here."""
    cfg = cfg or GeneratorTrainConfig()
    given, given_va = _split(data, train_idx, val_idx)
    cal = None if cal_idx is None else _held_out(data, cal_idx, given, given_va)
    tr, va = with_expression_parts(data, given, given_va, "generator")
    escaler = ZScoreScaler.fit(data.expression[tr], "training expression")
    fscaler = ZScoreScaler.fit_bags([data.bags[i] for i in tr])

    def examples(ix: np.ndarray) -> Examples:
        return Examples(
            bags=fscaler.transform_all([data.bags[i] for i in ix]),
            omics=escaler.transform(data.expression[ix]),
        )

    dev = torch.device(device)
    panel = data.panel_for(tr)
    with seeded(cfg.seed, dev):
        model = TranscriptomeDenoiser(generator_config(data, cfg, panel))
    diffusion = GaussianDiffusion.from_config(cfg.diffusion)
    hist = fit_generator(
        model, diffusion, examples(tr), examples(va), cfg, device=dev, progress=progress
    )
    gen = TrainedGenerator(
        model=model,
        diffusion=cfg.diffusion,
        sampler=cfg.sampler,
        expression_scaler=escaler,
        feature_scaler=fscaler,
        panel=panel,
        contract=data.contract,
        grade_classes=data.grade_classes,
        train_config=to_dict(cfg),
        provenance=provenance(
            data, tr, va, cfg.seed, hist.to_dict(), _left_out(given, given_va, tr, va), cal
        ),
        name=name,
    )
    va_bags = [data.bags[i] for i in va]
    return select_sampler_steps(gen, cfg.sampler_steps, va_bags, data.expression[va], cfg.seed)


def _left_out(tr: np.ndarray, va: np.ndarray, tr_e: np.ndarray, va_e: np.ndarray) -> dict:
    """Provenance: how many given training and validation patients were left out for want of
    expression."""
    return {"n_left_out_without_expression": int(tr.size + va.size - tr_e.size - va_e.size)}


def _held_out(data: TrainingData, idx: Any, tr: np.ndarray, va: np.ndarray) -> np.ndarray:
    cal = _indices(data, idx, "cal_idx")
    if np.intersect1d(cal, np.concatenate([tr, va])).size:
        raise DataError("cal_idx: a calibration patient is also a training or validation patient")
    return cal


def predictor_config(
    data: TrainingData, cfg: FusionTrainConfig, panel: GenePanel | None = None
) -> dict[str, Any]:
    """The model config dict for this data and ``panel`` (default: the data's): data-dependent
    sizes plus ``cfg.options``."""
    sizes: dict[str, Any]
    p = panel or data.panel
    if cfg.model == "fusion":
        sizes = {
            "feature_dim": data.feature_dim,
            "family_sizes": list(p.family_sizes),
            "gene_families": list(family_ids(p.families)),
        }
    elif cfg.model == "attention_mil":
        sizes = {"feature_dim": data.feature_dim}
    else:
        sizes = {"n_genes": data.n_genes}
    return {**sizes, "n_grades": data.n_grades, "n_bins": cfg.n_bins, **cfg.options}


def train_predictor(
    data: TrainingData,
    train_idx: Sequence[int] | np.ndarray,
    val_idx: Sequence[int] | np.ndarray,
    cfg: FusionTrainConfig | None = None,
    *,
    device: str | torch.device = "cpu",
    progress: Progress | None = None,
    name: str = "pathgen-fusion",
) -> TrainedFusion:
    """Fit scalers and time-bin edges on ``train_idx`` and train the fusion model (or the
    baseline named by ``cfg.model``) on real transcriptomes, early stopping on ``val_idx``.

    The fusion model and the omics MLP train and early-stop on the patients of ``train_idx``
    and ``val_idx`` with expression; the attention-MIL baseline (slides only) on all of them,
    and so does a fusion model with modality dropout (a patient without expression gets its
    absent-transcriptome token). The expression scaler is fit on the training patients with
    expression. With ``cfg.survival_weights`` one model per candidate loss weighting, the one
    kept chosen on ``val_idx`` (:func:`.selection.select_loss_weights`)."""
    cfg = cfg or FusionTrainConfig()
    given, given_va = _split(data, train_idx, val_idx)
    tr, va = given, given_va
    reads_expression = cfg.model != "attention_mil"
    slide_only = cfg.model == "fusion" and cfg.options.get("modality_dropout", 0.0) > 0
    if reads_expression and not slide_only:
        tr, va = with_expression_parts(data, given, given_va, cfg.model)
    what = "training patients" + (" with expression" if tr.size < given.size else "")
    check_training_part(data, tr, what, cfg.n_bins)
    escaler = ZScoreScaler.fit(data.expression[data.with_expression(tr)], "training expression")
    fscaler = ZScoreScaler.fit_bags([data.bags[i] for i in tr])
    known = tr[data.outcome_known[tr]]
    edges = fit_bin_edges(data.time[known], data.event[known].astype(np.int64), cfg.n_bins)

    def bins_of(ix: np.ndarray) -> np.ndarray:
        bins = np.full(len(ix), -1, dtype=np.int64)  # -1: outcome unknown
        has = data.outcome_known[ix]
        bins[has] = to_bins(data.time[ix][has], edges)
        return bins

    def examples(ix: np.ndarray) -> Examples:
        return Examples(
            bags=fscaler.transform_all([data.bags[i] for i in ix]),
            omics=_scaled(escaler, data.expression[ix]) if reads_expression else None,
            grade=data.grade[ix],
            bins=bins_of(ix),
            censored=~data.event[ix],
            time=np.where(data.outcome_known[ix], data.time[ix], np.nan),
        )

    dev = torch.device(device)
    panel = data.panel_for(tr)
    ex_tr, ex_va = examples(tr), examples(va)

    def fit(c: FusionTrainConfig, prog: Progress | None) -> tuple[nn.Module, FitHistory]:
        with seeded(c.seed, dev):
            model = build_model(c.model, predictor_config(data, c, panel))
        return model, fit_predictor(model, c.model, ex_tr, ex_va, c, device=dev, progress=prog)

    model, hist, cfg, chosen = select_loss_weights(cfg, fit, progress)
    extra = _left_out(given, given_va, tr, va) | ({"loss_weights": chosen} if chosen else {})
    fus = TrainedFusion(
        model=model,
        model_name=cfg.model,
        expression_scaler=escaler,
        feature_scaler=fscaler,
        panel=panel,
        contract=data.contract,
        grade_classes=data.grade_classes,
        bin_edges=edges,
        train_config=to_dict(cfg),
        provenance=provenance(data, tr, va, cfg.seed, hist.to_dict(), extra),
        name=name,
    ).to(dev)
    return dataclasses.replace(
        fus, risk_cuts=fit_risk_cuts(fus, data, np.concatenate([tr, va]), cfg)
    )


def _scaled(scaler: ZScoreScaler, x: np.ndarray) -> np.ndarray:
    """(N, G) expression scaled, its rows of NaN (no expression) kept NaN."""
    has = ~np.isnan(x).any(axis=1)
    out = np.full(x.shape, np.nan, dtype=np.float32)
    if has.any():
        out[has] = scaler.transform(x[has])
    return out


def fit_risk_cuts(
    fusion: TrainedFusion, data: TrainingData, idx: np.ndarray, cfg: FusionTrainConfig
) -> RiskCuts:
    """Cut points of the relative risk groups: ``cfg.risk_quantiles`` of the risk ``fusion``
    predicts for patients ``idx`` (its training and validation patients) from their bags and
    real transcriptomes, none for the attention-MIL baseline (:func:`calibrate_fusion` refits
    them on synthetic ones)."""
    if fusion.uses_expression:
        idx = data.with_expression(idx)
    x = data.expression[idx] if fusion.uses_expression else None
    pred = fusion.predict([data.bags[i] for i in idx], x)
    return RiskCuts.fit(pred.risk, cfg.risk_quantiles)


def calibrate_fusion(
    fusion: TrainedFusion,
    bags: Sequence[np.ndarray],
    synthetic: np.ndarray,
    real: np.ndarray,
    grade: np.ndarray,
    alpha: float = 0.1,
    method: SetMethod = "lac",
    patient_ids: Sequence[str] | None = None,
) -> TrainedFusion:
    """Split-conformal states from held-out patients, on the inputs used at scoring time.

    The calibration patients must be neither training nor early-stopping patients of the
    model (nor of the generator that made ``synthetic``); ``patient_ids`` names them in the
    provenance (``conformal.cal_patients``), and a patient of the model's own validation set
    is refused.

    Grade sets: scores of the predictions made with the SYNTHETIC transcriptome (B, G) against
    the known grades (B,) (-1 = unknown, left out). Risk intervals: around the risk predicted
    with the synthetic transcriptome, covering the risk the REAL transcriptome gives: only the
    patients with a real one (rows of ``real`` that are not all NaN) calibrate them. The risk
    cut points are refit at the same quantiles on these held-out patients' risk with the
    synthetic transcriptome: the input the model gets at scoring time, whose risks are spread
    less widely than with the real one.
    """
    syn = fusion.predict(bags, synthetic)
    real = np.asarray(real, dtype=np.float64)
    has = ~np.isnan(real).any(axis=1) if real.ndim == 2 else np.ones(len(bags), bool)  # (B,)
    need = min_calibration_size(alpha)
    if int(has.sum()) < need:
        raise DataError(
            f"conformal calibration: alpha={alpha:g} needs at least {need} patients with "
            f"expression for the risk intervals, got {int(has.sum())} of {len(bags)}"
        )
    ref = fusion.predict([b for b, h in zip(bags, has, strict=True) if h], real[has])
    g = np.asarray(grade, dtype=np.int64)
    ids = None if patient_ids is None else [str(p) for p in patient_ids]
    if ids is not None:
        if len(ids) != len(bags):
            raise DataError(f"patient_ids: expected {len(bags)} ids, got {len(ids)}")
        reused = sorted(set(ids) & set(fusion.provenance.get("val_patients", [])))
        if reused:
            raise DataError(
                f"conformal calibration: {len(reused)} patient(s) also chose the model's "
                f"checkpoint (e.g. {reused[0]}); calibrate on patients held out of early stopping"
            )
    if g.shape != (syn.risk.shape[0],):
        raise DataError(f"grade: expected shape ({syn.risk.shape[0]},), got {g.shape}")
    known = g >= 0
    if int(known.sum()) < need or g.size < need:
        raise DataError(
            f"conformal calibration: alpha={alpha:g} needs at least {need} patients with a "
            f"known grade, got {int(known.sum())} of {g.size}"
        )
    grade_state = fit_classification(syn.grade_probs[known], g[known], alpha, method)
    risk_state = fit_interval(syn.risk[has], ref.risk, alpha)
    out = fusion.with_conformal(grade_state, risk_state)
    if fusion.risk_cuts is not None:
        out.risk_cuts = RiskCuts.fit(syn.risk, fusion.risk_cuts.quantiles)
    out.provenance = {
        **fusion.provenance,
        "conformal": {
            "n_cal": int(g.size),
            "n_cal_grade": int(known.sum()),
            "n_cal_risk": int(has.sum()),  # with expression: the risk intervals' patients
            "inputs": "synthetic",
            "alpha": alpha,
            "risk_interval_covers": RISK_INTERVAL_COVERS,
            **({} if ids is None else {"cal_patients": ids}),
        },
    }
    return out


def indices_of(data: TrainingData, patient_ids: Sequence[str]) -> np.ndarray:
    """Row indices of ``patient_ids`` in ``data``."""
    where = {p: i for i, p in enumerate(data.patient_ids)}
    missing = [p for p in patient_ids if p not in where]
    if missing:
        raise DataError(f"patients not in the training data: {missing[:5]}")
    return np.asarray([where[p] for p in patient_ids], dtype=np.int64)


def generator_split(
    data: TrainingData, gen: TrainedGenerator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(train, early-stopping, calibration) indices matching the patients ``gen`` trained on,
    early-stopped on and held out for calibration (``cal_patients``).

    Early-stopping a fusion model on the generator's validation patients and calibrating it on
    its calibration patients keeps their synthetic transcriptomes out of sample and keeps
    calibration patients from choosing any checkpoint; a generator trained on other data, or
    without calibration patients, is refused.
    """
    if gen.provenance.get("cohort_digest") != data.digest:
        raise DataError(
            "generator bundle was trained on other data (cohort digest "
            f"{gen.provenance.get('cohort_digest')} vs {data.digest}); conformal calibration "
            "needs patients the generator held out, so train both on the same cohort"
        )
    if not gen.provenance.get("cal_patients"):
        raise DataError(
            "generator bundle records no calibration patients (cal_patients); retrain it with "
            "`pathgen-batch train generator`, which holds them out of training and early stopping"
        )
    va = indices_of(data, gen.provenance.get("val_patients", []))
    cal = indices_of(data, gen.provenance["cal_patients"])
    tr = np.setdiff1d(np.arange(data.n_patients), np.concatenate([va, cal]))
    return tr, va, cal


def train_calibrated_fusion(
    data: TrainingData,
    gen: TrainedGenerator,
    cfg: FusionTrainConfig | None = None,
    *,
    alpha: float = 0.1,
    method: SetMethod = "lac",
    device: str | torch.device = "cpu",
    progress: Progress | None = None,
    name: str = "pathgen-fusion",
) -> TrainedFusion:
    """Train a predictor on real transcriptomes and calibrate it with ``gen``'s synthetic ones.

    Early stopping uses the generator's validation patients and calibration its calibration
    patients (``generator_split``), two disjoint sets; contract and gene panel must match the
    data's.
    """
    cfg = cfg or FusionTrainConfig()
    gen.contract.check_matches(data.contract, what="generator bundle vs cohort features")
    tr, va, cal = generator_split(data, gen)
    gen.panel.check_matches(data.panel_for(tr), what="generator bundle vs cohort gene panel")
    check_training_part(data, tr, "training patients", cfg.n_bins)
    fus = train_predictor(data, tr, va, cfg, device=device, progress=progress, name=name)
    cal_bags = [data.bags[i] for i in cal]
    synthetic, _ = gen.generate(cal_bags)
    return calibrate_fusion(
        fus,
        cal_bags,
        synthetic,
        data.expression[cal],
        data.grade[cal],
        alpha,
        method,
        patient_ids=[data.patient_ids[i] for i in cal],
    )
