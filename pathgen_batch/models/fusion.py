"""MCAT-style genomic-guided co-attention fusion with a survival head and a grade head.

After MCAT (Chen et al., ICCV 2021): the transcriptome is split into families, each family goes
through its own self-normalising MLP to one token; the family tokens query the masked tile bag
(co-attention), giving one co-attended tile representation per family and a family x tile
attention map. Each stream (co-attended tiles, family tokens) passes a transformer layer and a
gated-attention pooling; the two pooled vectors are concatenated and fed to the heads.

All three models of this package (this one and the baselines) share the call
``model(omics (B, G) | None, feats (B, N, D) | None, mask (B, N) | None) -> FusionOutput``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from pathgen_batch.errors import ConfigError, DataError
from pathgen_batch.models.families import FamilyLayout, validate_families
from pathgen_batch.models.layers import (
    GatedAttentionPool,
    MultiHeadAttention,
    SNNBlock,
    TransformerLayer,
)
from pathgen_batch.models.survival import hazards_from_logits, risk_from_hazards
from pathgen_batch.models.validation import check_bag, check_floating, check_shape

MaybeTensor = torch.Tensor | None  # an input a model may go without (omics, feats, mask)


@dataclass
class FusionOutput:
    hazard_logits: torch.Tensor  # (B, n_bins)
    grade_logits: torch.Tensor  # (B, n_grades)
    attention: torch.Tensor | None  # (B, F, N): rows sum to 1 over real tiles, 0 on padding

    @property
    def hazards(self) -> torch.Tensor:
        """(B, n_bins) per-bin hazards."""
        return hazards_from_logits(self.hazard_logits)

    @property
    def risk(self) -> torch.Tensor:
        """(B,) risk = -sum_k S_k (higher = worse)."""
        return risk_from_hazards(self.hazards)

    @property
    def grade_probs(self) -> torch.Tensor:
        """(B, n_grades) softmax of the grade logits."""
        return self.grade_logits.softmax(dim=-1)


def check_heads(where: str, n_grades: int, n_bins: int, width: int, dropout: float) -> None:
    """Shared checks of the head sizes, width and dropout of a config."""
    if n_grades < 2:
        raise ConfigError(f"{where}.n_grades: expected >= 2 classes, got {n_grades}")
    if n_bins < 1:
        raise ConfigError(f"{where}.n_bins: expected >= 1, got {n_bins}")
    if width < 1:
        raise ConfigError(f"{where}.width: expected >= 1, got {width}")
    if not 0.0 <= dropout < 1.0:
        raise ConfigError(f"{where}.dropout: expected a number in [0, 1), got {dropout}")


def require(name: str, x: torch.Tensor | None, model: str) -> torch.Tensor:
    if x is None:
        raise DataError(f"{name}: {model} needs this input, got None")
    return x


@dataclass(frozen=True)
class FusionConfig:
    feature_dim: int  # D, tile feature width
    family_sizes: tuple[int, ...]  # genes per family, family order
    n_grades: int
    gene_families: tuple[int, ...] = ()  # family id per gene; () = contiguous blocks
    n_bins: int = 4
    width: int = 256
    heads: int = 4
    layers: int = 1  # transformer layers per stream
    dropout: float = 0.25
    # probability, per training example, that the transcriptome is replaced by a learned
    # absent-transcriptome token per family; > 0 also lets the model predict from the slide alone
    modality_dropout: float = 0.0

    def __post_init__(self) -> None:
        w = "FusionConfig"
        validate_families(self.family_sizes, self.gene_families, w)
        check_heads(w, self.n_grades, self.n_bins, self.width, self.dropout)
        if not 0.0 <= self.modality_dropout <= 1.0:
            raise ConfigError(f"{w}.modality_dropout: expected 0..1, got {self.modality_dropout}")
        if self.feature_dim < 1 or self.heads < 1 or self.layers < 1:
            raise ConfigError(f"{w}: feature_dim, heads, layers must be >= 1")
        if self.width % self.heads:
            raise ConfigError(f"{w}: width {self.width} is not divisible by heads {self.heads}")

    @property
    def n_genes(self) -> int:
        return sum(self.family_sizes)


class PredictionHeads(nn.Module):
    """(B, d) -> hazard logits (B, n_bins), grade logits (B, n_grades)."""

    def __init__(self, d: int, n_bins: int, n_grades: int) -> None:
        super().__init__()
        self.hazard = nn.Linear(d, n_bins)
        self.grade = nn.Linear(d, n_grades)

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.hazard(z), self.grade(z)


class _Stream(nn.Module):
    """Transformer layer(s) then gated-attention pooling: (B, F, d) -> (B, d)."""

    def __init__(self, d: int, heads: int, layers: int, dropout: float) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            [TransformerLayer(d, heads, mlp_ratio=2, dropout=dropout) for _ in range(layers)]
        )
        self.norm = nn.LayerNorm(d)
        self.pool = GatedAttentionPool(d, d, dropout)
        self.rho = nn.Sequential(nn.Linear(d, d), nn.ReLU(), nn.Dropout(dropout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)  # (B, F, d)
        pooled, _ = self.pool(self.norm(x))  # (B, d)
        return self.rho(pooled)  # (B, d)


class FusionModel(nn.Module):
    """model(omics (B, G) | None, feats (B, N, D), mask (B, N) bool) -> FusionOutput.

    With ``modality_dropout`` > 0 the model holds one learned absent-transcriptome token per
    family: in training each example's family tokens are replaced by them with that
    probability (at 1.0 also in evaluation: a slide-only model), and ``omics=None`` (slide
    only) uses them for every example, as does an omics row of NaN (a patient without
    expression) for that example. Without it the transcriptome is required.
    """

    def __init__(self, config: FusionConfig) -> None:
        super().__init__()
        self.config = config
        c, d = config, config.width
        self.layout = FamilyLayout(c.family_sizes, c.gene_families)
        self.family_nets = nn.ModuleList(
            [
                nn.Sequential(SNNBlock(g, d, c.dropout), SNNBlock(d, d, c.dropout))
                for g in c.family_sizes
            ]
        )
        self.path_proj = nn.Sequential(
            nn.Linear(c.feature_dim, d), nn.ReLU(), nn.Dropout(c.dropout)
        )
        self.coattn = MultiHeadAttention(d, c.heads, dropout=0.0)
        self.path_stream = _Stream(d, c.heads, c.layers, c.dropout)
        self.omic_stream = _Stream(d, c.heads, c.layers, c.dropout)
        self.fuse = nn.Sequential(nn.Linear(2 * d, d), nn.ReLU(), nn.Dropout(c.dropout))
        self.heads = PredictionHeads(d, c.n_bins, c.n_grades)
        self.absent: nn.Parameter | None = None
        if c.modality_dropout > 0:
            self.absent = nn.Parameter(0.02 * torch.randn(len(c.family_sizes), d))  # (F, d)

    @property
    def slide_only(self) -> bool:
        """Whether the model can predict without a transcriptome (absent token)."""
        return self.absent is not None

    def _family_tokens(self, omics: torch.Tensor | None, batch: int) -> torch.Tensor:
        """(B, F, d) family tokens of the transcriptome, or of the absent token."""
        c = self.config
        if omics is None:
            if self.absent is None:
                raise DataError("omics: fusion needs this input, got None")
            return self.absent.unsqueeze(0).expand(batch, -1, -1)
        x = check_floating("omics", check_shape("omics", omics, (batch, c.n_genes), "(B, G)"))
        missing = torch.isnan(x).all(dim=1)  # (B,) no transcriptome: the absent token
        if bool(missing.any()):
            if self.absent is None:
                raise DataError("omics: a row of NaN needs a model with modality_dropout > 0")
            x = torch.where(missing[:, None], torch.zeros_like(x), x)
        parts = self.layout.split(x)  # F x (B, g_f)
        fam = torch.stack(
            [net(p) for net, p in zip(self.family_nets, parts, strict=True)], dim=1
        )  # (B, F, d)
        if self.absent is None:
            return fam
        drop = missing[:, None, None]  # (B, 1, 1)
        if self.training or c.modality_dropout >= 1.0:
            drop = drop | (torch.rand(batch, 1, 1, device=fam.device) < c.modality_dropout)
        return torch.where(drop, self.absent.unsqueeze(0).to(fam.dtype), fam)

    def forward(self, omics: MaybeTensor, feats: MaybeTensor, mask: MaybeTensor) -> FusionOutput:
        c = self.config
        if omics is None and self.absent is None:
            require("omics", omics, "fusion")
        batch = None
        if omics is not None:
            batch = check_shape("omics", omics, (None, c.n_genes), "(B, G)").shape[0]
        f, m = check_bag(
            require("feats", feats, "fusion"),
            require("mask", mask, "fusion"),
            c.feature_dim,
            batch=batch,
        )
        fam = self._family_tokens(omics, f.shape[0])  # (B, F, d)
        tiles = self.path_proj(f)  # (B, N, d)
        co, attn = self.coattn(fam, tiles, m, need_weights=True)  # (B, F, d), (B, F, N)
        z = torch.cat([self.path_stream(co), self.omic_stream(fam)], dim=-1)  # (B, 2d)
        hazard, grade = self.heads(self.fuse(z))  # (B, n_bins), (B, n_grades)
        return FusionOutput(hazard, grade, attn)
