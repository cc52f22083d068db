"""Transcriptome side: the gene panel and gene families clustered from expression."""

from pathgen_batch.omics.families import DEFAULT_FAMILIES, cluster_families, with_clustered_families
from pathgen_batch.omics.panel import UNCLUSTERED, GenePanel

__all__ = [
    "DEFAULT_FAMILIES",
    "UNCLUSTERED",
    "GenePanel",
    "cluster_families",
    "with_clustered_families",
]
