"""The conditional denoiser of a transcriptome given a slide's tile bag.

Per METHOD.md: each noisy family vector -> its own MLP encoder -> one token per family (width d);
a sinusoidal timestep embedding -> MLP, added to every family token; ``depth`` blocks of
cross-attention from the family tokens (queries) to the masked tile bag (keys/values), each
followed by a pre-norm transformer layer over the family tokens; per-family MLP decoders output
that family's output, scattered back into gene order.

The denoiser knows nothing of the noise schedule nor of what its output means (the noise or the
velocity): both belong to the diffusion process (:mod:`pathgen_batch.models.diffusion`).
Tiles carry no positional encoding and padding is masked out of every attention, so outputs do
not depend on tile order or on how much padding a bag has.

Sampling reuses the bag: :meth:`TranscriptomeDenoiser.encode_bag` projects the tiles to keys
and values once per batch; :meth:`TranscriptomeDenoiser.denoise` then runs each sampler step on
the family tokens only, for any number of samples per slide.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import cast

import torch
from torch import nn

from pathgen_batch.errors import ConfigError, DataError
from pathgen_batch.models.families import FamilyLayout, validate_families
from pathgen_batch.models.layers import MultiHeadAttention, TransformerLayer, timestep_embedding
from pathgen_batch.models.validation import (
    check_bag,
    check_floating,
    check_integer,
    check_shape,
)

# An illustrative 6-family panel of about 4,300 genes, the size of the paper's cohorts.
PAPER_FAMILY_SIZES: tuple[int, ...] = (320, 520, 480, 1010, 1490, 480)
# the denoiser sizes of GeneratorConfig.small and .paper
_SIZES: dict[str, dict[str, int]] = {
    "small": {"width": 128, "depth": 2, "heads": 4, "time_dim": 128},
    "paper": {"width": 1024, "depth": 4, "heads": 16, "time_dim": 256},
}


@dataclass(frozen=True)
class GeneratorConfig:
    feature_dim: int  # D, tile feature width
    family_sizes: tuple[int, ...]  # genes per family, family order
    gene_families: tuple[int, ...] = ()  # family id per gene; () = contiguous blocks
    width: int = 128  # d, token width
    depth: int = 2  # cross-attention + transformer blocks
    heads: int = 4
    mlp_ratio: int = 4  # transformer MLP hidden = mlp_ratio * d
    dropout: float = 0.0
    time_dim: int = 128  # sinusoidal embedding width (even)

    def __post_init__(self) -> None:
        w = "GeneratorConfig"
        validate_families(self.family_sizes, self.gene_families, w)
        for name in ("feature_dim", "width", "depth", "heads", "mlp_ratio", "time_dim"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{w}.{name}: expected >= 1, got {getattr(self, name)}")
        if self.width % self.heads:
            raise ConfigError(f"{w}: width {self.width} is not divisible by heads {self.heads}")
        if self.time_dim % 2:
            raise ConfigError(f"{w}.time_dim: expected an even number, got {self.time_dim}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"{w}.dropout: expected a number in [0, 1), got {self.dropout}")

    @property
    def n_genes(self) -> int:
        return sum(self.family_sizes)

    @classmethod
    def small(
        cls, feature_dim: int, family_sizes: tuple[int, ...], gene_families: tuple[int, ...] = ()
    ) -> GeneratorConfig:
        """Trains in minutes on a laptop CPU."""
        return cls(feature_dim, tuple(family_sizes), tuple(gene_families), **_SIZES["small"])

    @classmethod
    def paper(
        cls,
        feature_dim: int = 1024,
        family_sizes: tuple[int, ...] = PAPER_FAMILY_SIZES,
        gene_families: tuple[int, ...] = (),
    ) -> GeneratorConfig:
        """The published scale: UNI 1024-d features, 6 families, width 1024."""
        return cls(feature_dim, tuple(family_sizes), tuple(gene_families), **_SIZES["paper"])


@dataclass(frozen=True)
class GeneratorArch:
    """The denoiser's architecture: ``GeneratorConfig`` without its data-dependent fields."""

    width: int = 64
    depth: int = 2
    heads: int = 4
    mlp_ratio: int = 2
    dropout: float = 0.1
    time_dim: int = 64

    def for_data(
        self,
        feature_dim: int,
        family_sizes: tuple[int, ...],
        gene_families: tuple[int, ...] = (),
    ) -> GeneratorConfig:
        """The full config: this architecture on the data's sizes."""
        return GeneratorConfig(
            feature_dim=feature_dim,
            family_sizes=tuple(family_sizes),
            gene_families=tuple(gene_families),
            width=self.width,
            depth=self.depth,
            heads=self.heads,
            mlp_ratio=self.mlp_ratio,
            dropout=self.dropout,
            time_dim=self.time_dim,
        )


@dataclass
class BagMemory:
    """A batch of tile bags projected to the keys and values of every cross-attention block."""

    keys: list[torch.Tensor]  # per block (B, h, N, dh)
    values: list[torch.Tensor]  # per block (B, h, N, dh)
    mask: torch.Tensor  # (B, N) bool, True = real tile

    @property
    def batch_size(self) -> int:
        return int(self.mask.shape[0])


def _mlp(d_in: int, hidden: int, d_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(d_in, hidden), nn.SiLU(), nn.Linear(hidden, d_out))


class _CrossBlock(nn.Module):
    """tokens + CrossAttn(LN(tokens), LN(bag)), then a transformer layer over the tokens."""

    def __init__(self, d: int, heads: int, mlp_ratio: int, dropout: float) -> None:
        super().__init__()
        self.norm_q = nn.LayerNorm(d)
        self.norm_kv = nn.LayerNorm(d)
        self.cross = MultiHeadAttention(d, heads, dropout)
        self.drop = nn.Dropout(dropout)
        self.layer = TransformerLayer(d, heads, mlp_ratio, dropout)

    def project(self, bag: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """bag (B, N, d) -> keys, values (B, h, N, dh)."""
        return self.cross.project_kv(self.norm_kv(bag))

    def forward(
        self,
        tokens: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        mask: torch.Tensor,
    ) -> torch.Tensor:
        """tokens (B*n, F, d) for n samples per bag; k, v (B, h, N, dh) -> (B*n, F, d)."""
        Bn, Fm, d = tokens.shape
        B = k.shape[0]
        q = self.norm_q(tokens).reshape(B, (Bn // B) * Fm, d)  # (B, n*F, d): samples share keys
        att, _ = self.cross.attend(q, k, v, mask)  # (B, n*F, d)
        tokens = tokens + self.drop(att.reshape(Bn, Fm, d))  # (B*n, F, d)
        return self.layer(tokens)  # (B*n, F, d)


class TranscriptomeDenoiser(nn.Module):
    """output = denoiser(x_t (B, G), t (B,), feats (B, N, D), mask (B, N)) -> (B, G)."""

    def __init__(self, config: GeneratorConfig) -> None:
        super().__init__()
        self.config = config
        c, d = config, config.width
        self.layout = FamilyLayout(c.family_sizes, c.gene_families)
        self.encoders = nn.ModuleList([_mlp(g, d, d) for g in c.family_sizes])
        self.time_mlp = _mlp(c.time_dim, d, d)
        self.bag_proj = nn.Linear(c.feature_dim, d)
        self.blocks = nn.ModuleList(
            [_CrossBlock(d, c.heads, c.mlp_ratio, c.dropout) for _ in range(c.depth)]
        )
        self.norm = nn.LayerNorm(d)
        self.decoders = nn.ModuleList([_mlp(d, d, g) for g in c.family_sizes])

    def encode_bag(self, feats: torch.Tensor, mask: torch.Tensor) -> BagMemory:
        """feats (B, N, D), mask (B, N) bool -> keys and values of every block."""
        feats, mask = check_bag(feats, mask, self.config.feature_dim)
        bag = self.bag_proj(feats)  # (B, N, d)
        kv = [
            cast(_CrossBlock, blk).project(bag) for blk in self.blocks
        ]  # per block 2 x (B, h, N, dh)
        return BagMemory([k for k, _ in kv], [v for _, v in kv], mask)

    def denoise(self, x_t: torch.Tensor, t: torch.Tensor, memory: BagMemory) -> torch.Tensor:
        """The output for x_t (B*n, G) at t (B*n,) given a memory of B bags -> (B*n, G).

        Row b*n + s of x_t is sample s of bag b (``diffusion.tile_batch`` layout); n = 1 is the
        plain case.
        """
        G, B = self.config.n_genes, memory.batch_size
        x_t = check_floating("x_t", check_shape("x_t", x_t, (None, G), "(B, G)"))
        if x_t.shape[0] % B:
            raise DataError(
                f"x_t: expected a batch that is a multiple of the {B} bag(s), got {x_t.shape[0]}"
            )
        t = check_integer("t", check_shape("t", t, (x_t.shape[0],), "(B,)"))
        parts = self.layout.split(x_t)  # F x (B*n, g_f)
        tokens = torch.stack(
            [enc(p) for enc, p in zip(self.encoders, parts, strict=True)], dim=1
        )  # (B*n,F,d)
        temb = self.time_mlp(timestep_embedding(t, self.config.time_dim))  # (B*n, d)
        h = tokens + temb[:, None, :]  # (B*n, F, d)
        for blk, k, v in zip(self.blocks, memory.keys, memory.values, strict=True):
            h = blk(h, k, v, memory.mask)  # (B*n, F, d)
        h = self.norm(h + tokens)  # (B*n, F, d), residual from the family encoders
        out = [dec(h[:, f]) for f, dec in enumerate(self.decoders)]  # F x (B*n, g_f)
        return self.layout.merge(out)  # (B*n, G)

    def forward(
        self, x_t: torch.Tensor, t: torch.Tensor, feats: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor:
        """x_t (B, G), t (B,) int64, feats (B, N, D), mask (B, N) bool -> (B, G)."""
        check_shape("x_t", x_t, (None, self.config.n_genes), "(B, G)")
        check_shape("feats", feats, (x_t.shape[0], None, self.config.feature_dim), "(B, N, D)")
        return self.denoise(x_t, t, self.encode_bag(feats, mask))
