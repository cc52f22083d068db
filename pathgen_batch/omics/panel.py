"""The gene panel: an ordered table gene -> family, with a digest.

The panel fixes the order of genes in every expression vector the models see or produce, and
groups genes into families (one token per family in the generator and the fusion model). Its
digest is stored with every model and output row so that models trained on different panels are
never combined.

On disk a panel is a CSV with the header ``gene,family`` and one row per gene, in order. A
panel that names no families (a ``gene`` column only, or every family empty) has all its genes
in the placeholder family ``UNCLUSTERED``: a model trained on it clusters them first
(:mod:`pathgen_batch.omics.families`).
"""

from __future__ import annotations

import csv
import hashlib
import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pathgen_batch.errors import DataError

UNCLUSTERED = "<unclustered>"  # the family of every gene of a panel that names none


@dataclass(frozen=True)
class GenePanel:
    genes: tuple[str, ...]
    families: tuple[str, ...]  # family of each gene, same length as genes

    def __post_init__(self) -> None:
        if len(self.genes) == 0:
            raise DataError("gene panel is empty")
        if len(self.genes) != len(self.families):
            raise DataError(
                f"gene panel: {len(self.genes)} genes but {len(self.families)} family labels"
            )
        seen: set[str] = set()
        dups = [g for g in self.genes if g in seen or seen.add(g)]  # type: ignore[func-returns-value]
        if dups:
            raise DataError(f"gene panel: duplicate gene(s) {sorted(set(dups))[:5]}")
        bad = [g for g in self.genes if not g or g != g.strip()]
        if bad:
            raise DataError(f"gene panel: empty or padded gene name(s) {bad[:5]}")
        if any(not f for f in self.families):
            raise DataError("gene panel: a gene has an empty family")

    @classmethod
    def from_pairs(cls, pairs: Sequence[tuple[str, str]]) -> GenePanel:
        return cls(tuple(g for g, _ in pairs), tuple(f for _, f in pairs))

    @property
    def needs_families(self) -> bool:
        """True for a panel that names no families (they are clustered when a model trains)."""
        return set(self.families) == {UNCLUSTERED}

    @property
    def n_genes(self) -> int:
        return len(self.genes)

    @property
    def family_names(self) -> tuple[str, ...]:
        """Families in order of first appearance in the panel."""
        return tuple(dict.fromkeys(self.families))

    @property
    def n_families(self) -> int:
        return len(self.family_names)

    def family_indices(self) -> list[np.ndarray]:
        """For each family (in ``family_names`` order) the int64 indices of its genes."""
        fam = np.asarray(self.families)
        return [np.flatnonzero(fam == f).astype(np.int64) for f in self.family_names]

    @property
    def family_sizes(self) -> tuple[int, ...]:
        return tuple(len(ix) for ix in self.family_indices())

    def to_csv(self) -> str:
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(["gene", "family"])
        w.writerows(zip(self.genes, self.families, strict=True))
        return buf.getvalue()

    @property
    def digest(self) -> str:
        """sha256 of the canonical CSV, prefixed ``sha256:``; order matters."""
        return "sha256:" + hashlib.sha256(self.to_csv().encode()).hexdigest()

    def write(self, path: str | Path) -> Path:
        p = Path(path)
        p.write_text(self.to_csv())
        return p

    @classmethod
    def parse(cls, text: str, source: str = "<panel>") -> GenePanel:
        rows = list(csv.reader(io.StringIO(text)))
        head = [c.strip().lower() for c in rows[0][:2]] if rows else []
        if head not in (["gene", "family"], ["gene"]):
            raise DataError(
                f"{source}: gene panel must start with the header 'gene,family' (or 'gene' "
                "for families clustered from the expression)"
            )
        pairs = []
        for i, r in enumerate(rows[1:], start=2):
            if not r:
                continue
            if len(r) < len(head):
                raise DataError(f"{source}: line {i} has {len(r)} column(s), expected gene,family")
            pairs.append((r[0], r[1] if len(head) == 2 else ""))
        if pairs and all(not f.strip() for _, f in pairs):
            pairs = [(g, UNCLUSTERED) for g, _ in pairs]
        try:
            return cls.from_pairs(pairs)
        except DataError as e:
            raise DataError(f"{source}: {e}") from e

    @classmethod
    def read(cls, path: str | Path) -> GenePanel:
        p = Path(path)
        try:
            text = p.read_text()
        except FileNotFoundError as e:
            raise DataError(f"{p}: gene panel file not found") from e
        return cls.parse(text, source=str(p))

    def check_matches(self, other: GenePanel, what: str = "gene panel") -> None:
        """Raise DataError naming the first difference when two panels differ."""
        if self.digest == other.digest:
            return
        if self.genes != other.genes:
            a, b = set(self.genes), set(other.genes)
            raise DataError(
                f"{what} mismatch: {len(self.genes)} vs {len(other.genes)} genes; "
                f"only in first: {sorted(a - b)[:5]}, only in second: {sorted(b - a)[:5]}"
                + ("; same genes in a different order" if a == b else "")
            )
        raise DataError(f"{what} mismatch: same genes, different family assignments")
