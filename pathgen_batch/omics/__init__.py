"""Transcriptome side: the gene panel and expression scaling."""

from pathgen_batch.omics.panel import GenePanel

__all__ = ["GenePanel"]
