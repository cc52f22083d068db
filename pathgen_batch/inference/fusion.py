"""The trained fusion model (or a single-modality baseline) as used at scoring time.

A :class:`TrainedFusion` turns raw tile bags (and a transcriptome in expression units, or none)
into grade probabilities, survival hazards, risk, attention and, when calibrated, conformal
grade sets and risk intervals (a :class:`FusionPrediction`). It carries its scalers, time-bin
edges, gene panel, feature contract, the cut points of its relative risk groups
(:class:`RiskCuts`) and provenance; :mod:`pathgen_batch.inference.bundle` saves and loads it.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, cast

import numpy as np
import torch
from torch import nn

from pathgen_batch.errors import DataError
from pathgen_batch.evaluation.conformal import ClassificationConformal, IntervalConformal
from pathgen_batch.features.bags import padded
from pathgen_batch.features.contract import FeatureContract
from pathgen_batch.inference.inputs import (
    DEFAULT_BATCH,
    OnDevice,
    check_bags,
    check_batch_size,
)
from pathgen_batch.inference.scaling import ZScoreScaler, check_matrix
from pathgen_batch.models.survival import hazards_from_logits, risk_from_hazards
from pathgen_batch.omics.panel import GenePanel


@dataclass(frozen=True)
class RiskCuts:
    """Cut points of the relative risk groups: quantiles of the risk the fusion model predicts
    for the patients it was trained and validated on.

    With two cuts (tertiles by default) a risk below ``cuts[0]`` is ``low``, at or above
    ``cuts[1]`` ``high``, in between ``intermediate``; with one cut (e.g. the median) ``low`` or
    ``high``. ``n`` is how many patients the quantiles were taken over.
    """

    quantiles: tuple[float, ...]
    cuts: tuple[float, ...]
    n: int

    def __post_init__(self) -> None:
        q, c = tuple(float(v) for v in self.quantiles), tuple(float(v) for v in self.cuts)
        if len(q) not in (1, 2) or len(c) != len(q):
            raise DataError(
                f"risk cuts: expected 1 or 2 quantiles and as many cut points, got {q} and {c}"
            )
        if not all(0.0 < v < 1.0 for v in q) or list(q) != sorted(set(q)):
            raise DataError(f"risk cuts: quantiles must be increasing, in (0, 1), got {q}")
        if not all(math.isfinite(v) for v in c) or list(c) != sorted(c):
            raise DataError(f"risk cuts: cut points must be finite and non-decreasing, got {c}")
        if isinstance(self.n, bool) or not isinstance(self.n, int) or self.n < 1:
            raise DataError(f"risk cuts: n must be a positive integer, got {self.n!r}")
        object.__setattr__(self, "quantiles", q)
        object.__setattr__(self, "cuts", c)

    @classmethod
    def fit(cls, risk: np.ndarray, quantiles: Sequence[float]) -> RiskCuts:
        """The cut points of ``risk`` (N,) at ``quantiles``."""
        r = np.asarray(risk, dtype=np.float64).ravel()
        r = r[np.isfinite(r)]
        if r.size < len(quantiles) + 1:
            raise DataError(
                f"risk cuts: {len(quantiles)} quantile(s) need at least {len(quantiles) + 1} "
                f"patients with a finite risk, got {r.size}"
            )
        cuts = np.quantile(r, np.asarray(quantiles, dtype=np.float64))
        return cls(tuple(quantiles), tuple(float(v) for v in cuts), int(r.size))

    def group(self, risk: float) -> str:
        """``low`` / ``intermediate`` / ``high`` (one cut: ``low`` / ``high``) of one risk."""
        r = float(risk)
        if r < self.cuts[0]:
            return "low"
        if r >= self.cuts[-1]:
            return "high"
        return "intermediate"

    def to_dict(self) -> dict[str, Any]:
        return {"quantiles": list(self.quantiles), "cuts": list(self.cuts), "n": self.n}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> RiskCuts:
        if not isinstance(d, Mapping) or sorted(d) != ["cuts", "n", "quantiles"]:
            raise DataError(f"risk cuts: expected keys cuts, n, quantiles, got {d!r}")
        q, c = d["quantiles"], d["cuts"]
        if not isinstance(q, list) or not isinstance(c, list):
            raise DataError(f"risk cuts: quantiles and cuts must be lists, got {q!r}, {c!r}")
        return cls(tuple(q), tuple(c), d["n"])


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
class TrainedFusion(OnDevice):
    """A fusion model or baseline with its scalers, time bins, classes and conformal states.

    ``train_config`` is the training configuration as plain data, kept for provenance only.
    """

    kind: ClassVar[str] = "fusion"

    model: nn.Module
    model_name: str
    expression_scaler: ZScoreScaler
    feature_scaler: ZScoreScaler
    panel: GenePanel
    contract: FeatureContract
    grade_classes: tuple[str, ...]
    bin_edges: np.ndarray
    train_config: dict[str, Any] = field(default_factory=dict)
    grade_conformal: ClassificationConformal | None = None
    risk_conformal: IntervalConformal | None = None
    risk_cuts: RiskCuts | None = None
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
        if self.expression_scaler.dim != self.panel.n_genes:
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

    def with_conformal(
        self, grade: ClassificationConformal | None, risk: IntervalConformal | None
    ) -> TrainedFusion:
        """A copy (sharing the weights) carrying these conformal states."""
        return dataclasses.replace(self, grade_conformal=grade, risk_conformal=risk)

    @property
    def slide_only(self) -> bool:
        """A fusion model that can predict from the slide alone (absent-transcriptome token)."""
        return bool(getattr(self.model, "slide_only", False))

    def risk_group(self, risk: float) -> str | None:
        """The relative risk group of ``risk`` (None for a model without cut points)."""
        return None if self.risk_cuts is None else self.risk_cuts.group(risk)

    def _expression(self, expression: Any, B: int, noise_seed: int) -> np.ndarray | None:
        if not self.uses_expression:
            return None
        G = self.panel.n_genes
        if expression is None:
            if self.model_name == "omics_mlp":
                raise DataError("expression: the omics_mlp model needs a transcriptome, got None")
            if self.slide_only:
                return None  # the model's learned absent-transcriptome token
            rng = np.random.default_rng(noise_seed)
            return rng.standard_normal((B, G)).astype(np.float32)  # "WSI only": noise, scaled
        x = check_matrix(expression, "expression", G)
        if x.shape[0] != B:
            raise DataError(f"expression: expected {B} rows (one per slide), got {x.shape[0]}")
        return self.expression_scaler.transform(x, "expression")

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

        expression None: a fusion model trained with modality dropout uses its learned
        absent-transcriptome token (the trained "WSI only" condition); any other fusion model
        gets standard-normal noise in scaled space seeded by ``noise_seed`` in place of the
        transcriptome (a diagnostic: it never saw noise in training); the
        attention-MIL baseline ignores expression; the omics baseline needs it and ignores
        bags (which may then be None).
        """
        check_batch_size(batch_size)
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
