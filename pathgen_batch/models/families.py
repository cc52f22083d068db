"""Gene families: which columns of an expression vector belong to which family token.

A panel orders genes; each gene belongs to one family. Configs record ``family_sizes`` (genes
per family, in family order) and optionally ``gene_families`` (the family id of each gene, in
gene order). An empty ``gene_families`` means the families are contiguous blocks in order:
the first ``family_sizes[0]`` genes are family 0, and so on. With a
:class:`~pathgen_batch.omics.panel.GenePanel` ``p``, ``family_ids(p.families)`` gives
``gene_families`` and ``p.family_sizes`` gives ``family_sizes``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from pathgen_batch.errors import ConfigError, DataError


def family_ids(families: Sequence[str]) -> tuple[int, ...]:
    """Family id of each gene, ids numbered by first appearance (``GenePanel.family_names``)."""
    order = {f: i for i, f in enumerate(dict.fromkeys(families))}
    return tuple(order[f] for f in families)


def validate_families(
    family_sizes: tuple[int, ...], gene_families: tuple[int, ...], where: str
) -> None:
    """Raise ConfigError unless the family layout is consistent."""
    if len(family_sizes) == 0:
        raise ConfigError(f"{where}.family_sizes: expected at least one family, got ()")
    if any(s < 1 for s in family_sizes):
        raise ConfigError(f"{where}.family_sizes: every family needs >= 1 gene, got {family_sizes}")
    if not gene_families:
        return
    G, F = sum(family_sizes), len(family_sizes)
    if len(gene_families) != G:
        raise ConfigError(
            f"{where}.gene_families: expected {G} entries (sum of family_sizes), "
            f"got {len(gene_families)}"
        )
    counts = [0] * F
    for i, f in enumerate(gene_families):
        if not 0 <= f < F:
            raise ConfigError(
                f"{where}.gene_families[{i}]: expected a family id in [0, {F}), got {f}"
            )
        counts[f] += 1
    if tuple(counts) != tuple(family_sizes):
        raise ConfigError(
            f"{where}.gene_families: genes per family {tuple(counts)} "
            f"differ from family_sizes {family_sizes}"
        )


class FamilyLayout(nn.Module):
    """Splits (B, G) expression into per-family blocks and merges them back into gene order."""

    def __init__(self, family_sizes: Sequence[int], gene_families: Sequence[int] = ()) -> None:
        super().__init__()
        sizes, ids = tuple(family_sizes), tuple(gene_families)
        validate_families(sizes, ids, "FamilyLayout")
        self.sizes = sizes
        self.n_genes = sum(sizes)
        self.n_families = len(sizes)
        if ids:
            gf = torch.tensor(ids, dtype=torch.long)  # (G,)
            idx = [torch.nonzero(gf == f).flatten() for f in range(len(sizes))]
        else:
            starts = [sum(sizes[:f]) for f in range(len(sizes))]
            idx = [
                torch.arange(s, s + n, dtype=torch.long) for s, n in zip(starts, sizes, strict=True)
            ]
        self.contiguous = list(ids) == sorted(ids)  # blocks in family order
        for f, ix in enumerate(idx):
            self.register_buffer(f"index_{f}", ix, persistent=False)  # (g_f,)

    def indices(self) -> list[torch.Tensor]:
        """Gene indices of each family, in family order: list of (g_f,) int64."""
        return [getattr(self, f"index_{f}") for f in range(self.n_families)]

    def split(self, x: torch.Tensor) -> list[torch.Tensor]:
        """(B, G) -> list of (B, g_f)."""
        if x.dim() != 2 or x.shape[1] != self.n_genes:
            raise DataError(
                f"expression: expected shape (B, G) = (?, {self.n_genes}), got {tuple(x.shape)}"
            )
        if self.contiguous:
            return list(torch.split(x, list(self.sizes), dim=1))
        return [x.index_select(1, ix) for ix in self.indices()]

    def merge(self, parts: Sequence[torch.Tensor]) -> torch.Tensor:
        """list of (B, g_f) -> (B, G) in gene order."""
        if self.contiguous:
            return torch.cat(list(parts), dim=1)  # (B, G)
        B = parts[0].shape[0]
        out = parts[0].new_empty(B, self.n_genes)  # (B, G)
        for ix, p in zip(self.indices(), parts, strict=True):
            out.index_copy_(1, ix, p)
        return out
