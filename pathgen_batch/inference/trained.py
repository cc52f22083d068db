"""Trained models with everything needed to use them: the public inference API.

A :class:`TrainedGenerator` turns raw tile bags into synthetic transcriptomes in expression
units; a :class:`TrainedFusion` turns raw tile bags (and a transcriptome in expression units, or
none) into grade probabilities, survival hazards, risk, attention and, when calibrated,
conformal grade sets and risk intervals. Both carry their scalers, gene panel, feature contract
and provenance, and are what :mod:`pathgen_batch.inference.bundle` saves and loads.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, cast

import numpy as np
import torch
from torch import nn

from pathgen_batch.errors import ConfigError, DataError
from pathgen_batch.evaluation.conformal import ClassificationConformal, IntervalConformal
from pathgen_batch.features.bags import padded
from pathgen_batch.features.contract import FeatureContract
from pathgen_batch.inference.scaling import FeatureScaler
from pathgen_batch.models.diffusion import (
    DiffusionConfig,
    EpsFn,
    NoiseSchedule,
    SamplerConfig,
    build_sampler,
)
from pathgen_batch.models.generator import TranscriptomeDenoiser
from pathgen_batch.models.parameterization import as_eps_fn
from pathgen_batch.models.survival import hazards_from_logits, risk_from_hazards
from pathgen_batch.omics.panel import GenePanel
from pathgen_batch.omics.scaling import ExpressionScaler, check_expression
from pathgen_batch.training.config import FusionTrainConfig, GeneratorTrainConfig, check_sampler

DEFAULT_BATCH = 16


def check_bags(bags: Sequence[np.ndarray], dim: int) -> list[np.ndarray]:
    """Raw bags, each (N_i, D) with N_i >= 1 and finite values, as float32 arrays."""
    if isinstance(bags, np.ndarray) or not isinstance(bags, Sequence) or len(bags) == 0:
        raise DataError("bags: expected a non-empty list of (N_i, D) feature arrays")
    out = []
    for i, b in enumerate(bags):
        a = np.asarray(b, dtype=np.float32)
        if a.ndim != 2 or a.shape[1] != dim:
            raise DataError(f"bags[{i}]: expected shape (N, {dim}), got {a.shape}")
        if a.shape[0] == 0:
            raise DataError(f"bags[{i}]: has zero tiles; every bag needs at least one")
        if not np.isfinite(a).all():
            raise DataError(f"bags[{i}]: holds NaN or inf")
        out.append(a)
    return out


def _check_batch_size(batch_size: int) -> None:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size: expected an integer >= 1, got {batch_size!r}")


def _bag_seed(seed: int, bag: np.ndarray) -> int:
    """A 63-bit seed from ``seed`` and the bag's bytes: the same slide gets the same noise
    whatever the batch it is scored in."""
    h = hashlib.blake2b(digest_size=8)
    h.update(int(seed).to_bytes(8, "little", signed=True))
    h.update(np.ascontiguousarray(bag, dtype=np.float32).tobytes())
    return int.from_bytes(h.digest(), "little") >> 1


@dataclass(eq=False)
class TrainedGenerator:
    """The conditional diffusion generator with its schedule, sampler, scalers and contract."""

    kind: ClassVar[str] = "generator"
    model_name: ClassVar[str] = "generator"

    model: TranscriptomeDenoiser
    diffusion: DiffusionConfig
    sampler: SamplerConfig
    expression_scaler: ExpressionScaler
    feature_scaler: FeatureScaler
    panel: GenePanel
    contract: FeatureContract
    grade_classes: tuple[str, ...]
    train_config: GeneratorTrainConfig
    provenance: dict[str, Any] = field(default_factory=dict)
    name: str = "pathgen-generator"

    def __post_init__(self) -> None:
        c = self.model.config
        if c.feature_dim != self.contract.dim or c.n_genes != self.panel.n_genes:
            raise DataError(
                f"generator: model expects D={c.feature_dim}, G={c.n_genes}; contract has "
                f"D={self.contract.dim}, panel G={self.panel.n_genes}"
            )
        if self.feature_scaler.dim != self.contract.dim:
            raise DataError("generator: feature scaler and contract differ in dimension")
        if self.expression_scaler.n_genes != self.panel.n_genes:
            raise DataError("generator: expression scaler and gene panel differ in length")
        self.model.eval()

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def prediction(self) -> str:
        """What the network outputs (``eps`` or ``v``); samplers get it as a noise prediction."""
        return self.train_config.prediction

    def eps_fn(self, feats: torch.Tensor, mask: torch.Tensor) -> EpsFn:
        """The noise prediction for B scaled bags, feats (B, N, D), mask (B, N), as samplers
        take it: accepts x_t (B*n, G), t (B*n,) for n samples per bag."""
        schedule = NoiseSchedule.from_config(self.diffusion)
        return as_eps_fn(self.model.eps_fn(feats, mask), schedule, self.prediction)

    def to(self, device: str | torch.device) -> TrainedGenerator:
        self.model.to(torch.device(device))
        return self

    @torch.no_grad()
    def generate_scaled(
        self,
        bags: Sequence[np.ndarray],
        n_samples: int | None = None,
        sampler: SamplerConfig | None = None,
        seed: int = 0,
        batch_size: int = DEFAULT_BATCH,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Mean and per-gene std over samples in the scaler's space (z-scores), (B, G) each.

        Each slide's starting noise is seeded by ``seed`` and the slide's features, so with a
        deterministic sampler (DDIM, eta 0) a slide's output does not depend on the batch it
        is in; stochastic samplers also draw step noise for the whole batch from ``seed``.
        """
        scfg = sampler or self.sampler
        n = scfg.n_samples if n_samples is None else n_samples
        scfg = dataclasses.replace(scfg, n_samples=n)
        check_sampler(scfg, self.diffusion, "sampler")
        _check_batch_size(batch_size)
        raw = check_bags(bags, self.contract.dim)
        scaled = self.feature_scaler.transform_all(raw)
        schedule = NoiseSchedule.from_config(self.diffusion)
        smp = build_sampler(scfg, schedule)
        dev, G = self.device, self.panel.n_genes
        self.model.eval()
        means, stds = [], []
        for s in range(0, len(scaled), batch_size):
            idx = np.arange(s, min(s + batch_size, len(scaled)))
            feats, mask = padded(scaled, idx, dev)  # (B, N, D), (B, N)
            x_T = torch.cat(
                [
                    torch.randn(
                        n, G, generator=torch.Generator().manual_seed(_bag_seed(seed, raw[i]))
                    )
                    for i in idx
                ]
            ).to(dev)  # (B*n, G), row b*n + s = sample s of bag b
            g = torch.Generator(device=dev).manual_seed(seed)
            eps_fn = as_eps_fn(self.model.eps_fn(feats, mask), schedule, self.prediction)
            x = smp.sample(eps_fn, (len(idx) * n, G), generator=g, x_T=x_T)  # (B*n, G)
            x = x.view(len(idx), n, G)  # (B, n, G)
            means.append(x.mean(dim=1).cpu().numpy())
            sd = x.std(dim=1, correction=1) if n > 1 else torch.zeros_like(x[:, 0])
            stds.append(sd.cpu().numpy())
        return np.concatenate(means).astype(np.float32), np.concatenate(stds).astype(np.float32)

    def generate(
        self,
        bags: Sequence[np.ndarray],
        n_samples: int | None = None,
        sampler: SamplerConfig | None = None,
        seed: int = 0,
        batch_size: int = DEFAULT_BATCH,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Synthetic transcriptomes of raw bags (each (N_i, D)) in expression units.

        Returns (mean (B, G), std (B, G)) over ``n_samples`` samples per slide (default: the
        stored sampler's), drawn with ``sampler`` (default: the stored one).
        """
        mean_z, std_z = self.generate_scaled(bags, n_samples, sampler, seed, batch_size)
        return (
            self.expression_scaler.inverse_transform(mean_z),
            self.expression_scaler.inverse_scale(std_z),
        )


@dataclass(frozen=True, eq=False)
class FusionPrediction:
    """Predictions for B slides.

    grade_probs (B, C); hazards (B, K); risk (B,) = -sum_k S_k (higher = worse); attention:
    per slide (F, N_i) (F = families for the fusion model, 1 for attention MIL) or None;
    grade_sets (B, C) bool and risk_lo, risk_hi (B,) when the model carries conformal states.
    """

    grade_probs: np.ndarray
    hazards: np.ndarray
    risk: np.ndarray
    attention: list[np.ndarray] | None
    grade_sets: np.ndarray | None = None
    risk_lo: np.ndarray | None = None
    risk_hi: np.ndarray | None = None

    @property
    def grade_index(self) -> np.ndarray:
        """(B,) arg-max grade."""
        return np.argmax(self.grade_probs, axis=1)


@dataclass(eq=False)
class TrainedFusion:
    """A fusion model or baseline with its scalers, time bins, classes and conformal states."""

    kind: ClassVar[str] = "fusion"

    model: nn.Module
    model_name: str
    expression_scaler: ExpressionScaler
    feature_scaler: FeatureScaler
    panel: GenePanel
    contract: FeatureContract
    grade_classes: tuple[str, ...]
    bin_edges: np.ndarray
    train_config: FusionTrainConfig
    grade_conformal: ClassificationConformal | None = None
    risk_conformal: IntervalConformal | None = None
    provenance: dict[str, Any] = field(default_factory=dict)
    name: str = "pathgen-fusion"

    def __post_init__(self) -> None:
        c = cast(Any, self.model).config
        if c.n_grades != len(self.grade_classes):
            raise DataError(
                f"fusion: model has {c.n_grades} grade outputs, {len(self.grade_classes)} classes"
            )
        edges = np.asarray(self.bin_edges, dtype=np.float64)
        if edges.ndim != 1 or edges.size != c.n_bins + 1 or (np.diff(edges) <= 0).any():
            raise DataError(
                f"fusion: expected {c.n_bins + 1} increasing bin edges, got {edges.tolist()}"
            )
        self.bin_edges = edges
        if self.expression_scaler.n_genes != self.panel.n_genes:
            raise DataError("fusion: expression scaler and gene panel differ in length")
        if self.feature_scaler.dim != self.contract.dim:
            raise DataError("fusion: feature scaler and contract differ in dimension")
        self.model.eval()

    @property
    def uses_slides(self) -> bool:
        return self.model_name != "omics_mlp"

    @property
    def uses_expression(self) -> bool:
        return self.model_name != "attention_mil"

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def to(self, device: str | torch.device) -> TrainedFusion:
        self.model.to(torch.device(device))
        return self

    def with_conformal(
        self, grade: ClassificationConformal | None, risk: IntervalConformal | None
    ) -> TrainedFusion:
        """A copy (sharing the weights) carrying these conformal states."""
        return dataclasses.replace(self, grade_conformal=grade, risk_conformal=risk)

    def _expression(self, expression: Any, B: int, noise_seed: int) -> np.ndarray | None:
        if not self.uses_expression:
            return None
        G = self.panel.n_genes
        if expression is None:
            if self.model_name == "omics_mlp":
                raise DataError("expression: the omics_mlp model needs a transcriptome, got None")
            rng = np.random.default_rng(noise_seed)
            return rng.standard_normal((B, G)).astype(np.float32)  # "WSI only": noise, scaled
        x = np.asarray(expression, dtype=np.float64)
        check_expression(x, "expression", G)
        if x.shape[0] != B:
            raise DataError(f"expression: expected {B} rows (one per slide), got {x.shape[0]}")
        return self.expression_scaler.transform(x)

    @torch.no_grad()
    def predict(
        self,
        bags: Sequence[np.ndarray] | None,
        expression: Any = None,
        *,
        batch_size: int = DEFAULT_BATCH,
        noise_seed: int = 0,
    ) -> FusionPrediction:
        """Predict from raw bags (each (N_i, D)) and expression (B, G) in expression units.

        expression None: for the fusion model the transcriptome is replaced by standard-normal
        noise in scaled space seeded by ``noise_seed`` (the "WSI only" condition); the
        attention-MIL baseline ignores expression; the omics baseline needs it and ignores
        bags (which may then be None).
        """
        _check_batch_size(batch_size)
        scaled_bags: list[np.ndarray] | None = None
        if self.uses_slides:
            if bags is None:
                raise DataError(f"bags: the {self.model_name} model needs tile bags, got None")
            scaled_bags = self.feature_scaler.transform_all(check_bags(bags, self.contract.dim))
            B = len(scaled_bags)
        else:
            if expression is None:
                raise DataError("expression: the omics_mlp model needs a transcriptome, got None")
            B = int(np.asarray(expression).shape[0]) if np.ndim(expression) == 2 else -1
            if B < 1:
                raise DataError("expression: expected a (B, G) matrix with B >= 1")
        omics = self._expression(expression, B, noise_seed)  # (B, G) scaled or None
        dev = self.device
        self.model.eval()
        logits_h, logits_g = [], []
        attention: list[np.ndarray] | None = [] if self.uses_slides else None
        for s in range(0, B, batch_size):
            idx = np.arange(s, min(s + batch_size, B))
            x = None if omics is None else torch.from_numpy(omics[idx]).to(dev)  # (b, G)
            feats = mask = None
            if scaled_bags is not None:
                feats, mask = padded(scaled_bags, idx, dev)  # (b, N, D), (b, N)
            out = self.model(x, feats, mask)
            logits_h.append(out.hazard_logits.float().cpu())
            logits_g.append(out.grade_logits.float().cpu())
            if attention is not None and out.attention is not None and scaled_bags is not None:
                att = out.attention.float().cpu().numpy()  # (b, F, N)
                attention.extend(att[j, :, : scaled_bags[i].shape[0]] for j, i in enumerate(idx))
        hz = hazards_from_logits(torch.cat(logits_h).double())  # (B, K)
        probs = torch.cat(logits_g).double().softmax(dim=-1).numpy()  # (B, C)
        risk = risk_from_hazards(hz).numpy()  # (B,)
        sets = lo = hi = None
        if self.grade_conformal is not None:
            sets = self.grade_conformal.predict_sets(probs)
        if self.risk_conformal is not None:
            lo, hi = self.risk_conformal.predict(risk)
        return FusionPrediction(
            grade_probs=probs,
            hazards=hz.numpy(),
            risk=risk,
            attention=attention,
            grade_sets=sets,
            risk_lo=lo,
            risk_hi=hi,
        )
