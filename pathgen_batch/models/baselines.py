"""Single-modality baselines with the fusion model's heads and call signature.

- :class:`AttentionMIL`: slide only; gated attention MIL (Ilse et al. 2018) over the tile bag.
- :class:`OmicsMLP`: transcriptome only; a self-normalising network (Klambauer et al. 2017).

Both are called like the fusion model, ``model(omics, feats, mask) -> FusionOutput``, and ignore
the modality they do not use (it may be None).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch
from torch import nn

from pathgen_batch.errors import ConfigError
from pathgen_batch.models.fusion import (
    FusionOutput,
    MaybeTensor,
    PredictionHeads,
    check_heads,
    require,
)
from pathgen_batch.models.layers import GatedAttentionPool, SNNBlock
from pathgen_batch.models.validation import check_bag, check_floating, check_shape


@dataclass(frozen=True)
class AttentionMILConfig:
    feature_dim: int  # D
    n_grades: int
    n_bins: int = 4
    width: int = 256
    dropout: float = 0.25

    def __post_init__(self) -> None:
        check_heads("AttentionMILConfig", self.n_grades, self.n_bins, self.width, self.dropout)
        if self.feature_dim < 1:
            raise ConfigError(
                f"AttentionMILConfig.feature_dim: expected >= 1, got {self.feature_dim}"
            )


class AttentionMIL(nn.Module):
    """WSI only: tiles -> Linear+ReLU -> gated attention pooling -> heads.

    Returns attention (B, 1, N): the pooling weights, summing to 1 over real tiles.
    """

    def __init__(self, config: AttentionMILConfig) -> None:
        super().__init__()
        self.config = config
        c, d = config, config.width
        self.embed = nn.Sequential(nn.Linear(c.feature_dim, d), nn.ReLU(), nn.Dropout(c.dropout))
        self.pool = GatedAttentionPool(d, d, c.dropout)
        self.rho = nn.Sequential(nn.Linear(d, d), nn.ReLU(), nn.Dropout(c.dropout))
        self.heads = PredictionHeads(d, c.n_bins, c.n_grades)

    def forward(self, omics: MaybeTensor, feats: MaybeTensor, mask: MaybeTensor) -> FusionOutput:
        f, m = check_bag(
            require("feats", feats, "attention_mil"),
            require("mask", mask, "attention_mil"),
            self.config.feature_dim,
        )
        h = self.embed(f)  # (B, N, d)
        pooled, a = self.pool(h, m)  # (B, d), (B, N)
        hazard, grade = self.heads(self.rho(pooled))  # (B, n_bins), (B, n_grades)
        return FusionOutput(hazard, grade, a.unsqueeze(1))  # attention (B, 1, N)


@dataclass(frozen=True)
class OmicsMLPConfig:
    n_genes: int  # G
    n_grades: int
    n_bins: int = 4
    width: int = 256
    depth: int = 2  # SNN blocks
    dropout: float = 0.25

    def __post_init__(self) -> None:
        check_heads("OmicsMLPConfig", self.n_grades, self.n_bins, self.width, self.dropout)
        if self.n_genes < 1 or self.depth < 1:
            raise ConfigError(
                f"OmicsMLPConfig: n_genes and depth must be >= 1, got {self.n_genes}, {self.depth}"
            )


class OmicsMLP(nn.Module):
    """Transcriptome only: (B, G) -> SNN blocks -> heads; attention is None."""

    def __init__(self, config: OmicsMLPConfig) -> None:
        super().__init__()
        self.config = config
        c, d = config, config.width
        dims = [c.n_genes] + [d] * c.depth
        self.net = nn.Sequential(*[SNNBlock(a, b, c.dropout) for a, b in itertools.pairwise(dims)])
        self.heads = PredictionHeads(d, c.n_bins, c.n_grades)

    def forward(
        self,
        omics: torch.Tensor | None,
        feats: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
    ) -> FusionOutput:
        x = check_floating(
            "omics",
            check_shape(
                "omics", require("omics", omics, "omics_mlp"), (None, self.config.n_genes), "(B, G)"
            ),
        )
        hazard, grade = self.heads(self.net(x))  # (B, n_bins), (B, n_grades)
        return FusionOutput(hazard, grade, None)
