"""Building blocks shared by the generator, the fusion model and the baselines.

Masks follow one convention everywhere: a bool tensor, True = a real element that takes part,
False = padding that must not influence any output. Tiles carry no positional encoding, so
every block here is invariant to the order of the tiles in a bag.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of (B,) timesteps -> (B, dim) (Vaswani et al.; ``dim`` even).

    emb[:, i] = cos(t * w_i), emb[:, half + i] = sin(t * w_i), w_i = max_period^(-i / half).
    """
    half = dim // 2
    freqs = torch.exp(
        -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half
    )  # (half,)
    args = t.float()[:, None] * freqs[None, :]  # (B, half)
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)  # (B, dim)


class MultiHeadAttention(nn.Module):
    """Multi-head attention with a key padding mask and reusable key/value projections.

    Keys and values can be projected once (:meth:`project_kv`) and attended many times
    (:meth:`attend`), e.g. by every step of a diffusion sampler. Queries may hold ``n`` groups per
    key set: queries (B, n*M, d) against keys (B, N, d) is the same as tiling the keys n times.
    """

    def __init__(self, dim: int, heads: int, dropout: float = 0.0, kv_dim: int | None = None):
        super().__init__()
        if dim % heads != 0:
            raise ValueError(f"attention width {dim} is not divisible by heads {heads}")
        self.heads = heads
        self.head_dim = dim // heads
        self.dropout = dropout
        self.q_proj = nn.Linear(dim, dim)
        self.kv_proj = nn.Linear(kv_dim or dim, 2 * dim)
        self.out_proj = nn.Linear(dim, dim)

    def project_kv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, N, d_kv) -> keys, values, each (B, h, N, d/h)."""
        B, N, _ = x.shape
        kv = self.kv_proj(x).view(B, N, 2, self.heads, self.head_dim)  # (B, N, 2, h, dh)
        kv = kv.permute(2, 0, 3, 1, 4)  # (2, B, h, N, dh)
        return kv[0], kv[1]

    def attend(
        self,
        x: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        mask: torch.Tensor | None = None,
        need_weights: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Queries x (B, M, d) attend to k, v (B, h, N, dh); mask (B, N) True = real.

        Returns the output (B, M, d) and, with ``need_weights``, the attention averaged over
        heads (B, M, N): each row sums to 1 over real keys and is exactly 0 on padding.
        """
        B, M, d = x.shape
        q = self.q_proj(x).view(B, M, self.heads, self.head_dim).transpose(1, 2)  # (B, h, M, dh)
        p = self.dropout if self.training else 0.0
        weights = None
        if need_weights:
            scores = q @ k.transpose(-2, -1) / math.sqrt(self.head_dim)  # (B, h, M, N)
            if mask is not None:
                scores = scores.masked_fill(~mask[:, None, None, :], float("-inf"))
            attn = scores.softmax(dim=-1)  # (B, h, M, N)
            weights = attn.mean(dim=1)  # (B, M, N)
            out = F.dropout(attn, p=p, training=self.training) @ v  # (B, h, M, dh)
        else:
            am = None if mask is None else mask[:, None, None, :]  # (B, 1, 1, N)
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=am, dropout_p=p)  # (B,h,M,dh)
        out = out.transpose(1, 2).reshape(B, M, d)  # (B, M, d)
        return self.out_proj(out), weights

    def forward(
        self,
        x: torch.Tensor,
        context: torch.Tensor,
        mask: torch.Tensor | None = None,
        need_weights: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """x (B, M, d) attends to context (B, N, d_kv); see :meth:`attend`."""
        k, v = self.project_kv(context)  # (B, h, N, dh) each
        return self.attend(x, k, v, mask, need_weights)


class FeedForward(nn.Sequential):
    """d -> hidden -> d with GELU and dropout."""

    def __init__(self, dim: int, hidden: int, dropout: float = 0.0) -> None:
        super().__init__(
            nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, dim)
        )


class TransformerLayer(nn.Module):
    """Pre-norm transformer layer: x + SelfAttn(LN(x)), then x + MLP(LN(x))."""

    def __init__(self, dim: int, heads: int, mlp_ratio: int = 4, dropout: float = 0.0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = MultiHeadAttention(dim, heads, dropout)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = FeedForward(dim, mlp_ratio * dim, dropout)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """x (B, M, d), mask (B, M) or None -> (B, M, d)."""
        h = self.norm1(x)  # (B, M, d)
        x = x + self.drop(self.attn(h, h, mask)[0])  # (B, M, d)
        return x + self.drop(self.mlp(self.norm2(x)))  # (B, M, d)


class GatedAttentionPool(nn.Module):
    """Gated attention pooling (Ilse et al. 2018).

    a_i = softmax_i(w^T (tanh(V h_i) * sigmoid(U h_i))), pooled = sum_i a_i h_i.
    """

    def __init__(self, dim: int, hidden: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.v = nn.Sequential(nn.Linear(dim, hidden), nn.Tanh(), nn.Dropout(dropout))
        self.u = nn.Sequential(nn.Linear(dim, hidden), nn.Sigmoid(), nn.Dropout(dropout))
        self.w = nn.Linear(hidden, 1)

    def forward(
        self, x: torch.Tensor, mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, M, d), mask (B, M) or None -> pooled (B, d), weights (B, M) (0 on padding)."""
        scores = self.w(self.v(x) * self.u(x)).squeeze(-1)  # (B, M)
        if mask is not None:
            scores = scores.masked_fill(~mask, float("-inf"))
        a = scores.softmax(dim=-1)  # (B, M)
        return (a.unsqueeze(1) @ x).squeeze(1), a  # (B, d), (B, M)


class SNNBlock(nn.Sequential):
    """Self-normalising block (Klambauer et al.): Linear + ELU + AlphaDropout, LeCun-normal init."""

    def __init__(self, d_in: int, d_out: int, dropout: float = 0.0) -> None:
        lin = nn.Linear(d_in, d_out)
        nn.init.normal_(lin.weight, std=1.0 / math.sqrt(d_in))
        nn.init.zeros_(lin.bias)
        super().__init__(lin, nn.ELU(), nn.AlphaDropout(dropout))
