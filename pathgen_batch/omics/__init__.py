"""Transcriptome side: the gene panel."""

from pathgen_batch.omics.panel import GenePanel

__all__ = ["GenePanel"]
