"""Gene families from expression: Ward clustering of the genes' correlation.

A panel that names no families (:attr:`GenePanel.needs_families`) gets them from the patients a
model trains on (:func:`with_clustered_families`); the clustered panel is then the model's panel,
stored with it like any other. The semi-synthetic cohort draws its families the same way.
"""

from __future__ import annotations

import numpy as np

from pathgen_batch.errors import DataError
from pathgen_batch.omics.panel import GenePanel

DEFAULT_FAMILIES = 6  # the paper's families


def cluster_families(expression: np.ndarray, n_families: int) -> np.ndarray:
    """(N, G) expression -> (G,) int family index, numbered by first appearance.

    Ward clustering of each gene's correlation profile (its row of the (G, G) correlation
    matrix), cut into exactly ``n_families`` clusters.
    """
    from scipy.cluster.hierarchy import cut_tree, fcluster, linkage

    x = np.asarray(expression, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < 2:
        raise DataError(f"gene families: expected (N >= 2, G) expression, got {x.shape}")
    g = x.shape[1]
    if not 1 <= n_families <= g:
        raise DataError(f"gene families: expected 1..{g} families for {g} genes, got {n_families}")
    if n_families == 1:
        return np.zeros(g, dtype=np.int64)
    sd = x.std(0)
    if (sd <= 0).any():
        raise DataError(
            f"gene families: {(sd <= 0).sum()} gene(s) have constant expression on these "
            "patients, so no correlation to cluster by; give the panel's families"
        )
    tree = linkage(correlation_profiles(x), method="ward")
    lab = fcluster(tree, n_families, criterion="maxclust")  # (G,)
    if np.unique(lab).size != n_families:  # ties in the merge heights: cut exactly
        lab = cut_tree(tree, n_clusters=n_families).ravel()
    first = {c: i for i, c in enumerate(dict.fromkeys(lab.tolist()))}
    return np.array([first[c] for c in lab], dtype=np.int64)


def correlation_profiles(expression: np.ndarray) -> np.ndarray:
    """(N, G) expression -> (G, R) points whose Euclidean distances are those between the rows
    of the genes' (G, G) correlation matrix, R = N (exact, not an approximation).

    With Z the (N, G) standardised expression, C = Z^T Z / N = V S^2 V^T / N (thin SVD
    Z = U S V^T), so row g of C is V (S^2 V_g / N) and, V having orthonormal columns,
    ||C_g - C_h|| = ||S^2 (V_g - V_h)|| / N: the rows of V S^2 / N are the points. At 20,000
    genes that is (20,000, N) instead of a (20,000, 20,000) matrix.
    """
    x = np.asarray(expression, dtype=np.float64)
    n = x.shape[0]
    z = (x - x.mean(0)) / x.std(0)  # (N, G)
    w, u = np.linalg.eigh(z @ z.T)  # Z Z^T = U S^2 U^T: (N,), (N, N); cheaper than the SVD
    s = np.sqrt(np.clip(w, 0.0, None))  # (N,)
    return (z.T @ u) * s / n  # Z^T U = V S, so (G, N) rows V_g S^2 / N


def family_names(index: np.ndarray) -> tuple[str, ...]:
    """(G,) family index -> (G,) names ``family_1``, ``family_2``, ..."""
    return tuple(f"family_{int(i) + 1}" for i in index)


def with_clustered_families(
    panel: GenePanel, expression: np.ndarray, n_families: int = DEFAULT_FAMILIES
) -> GenePanel:
    """``panel`` itself when it names its families; else its genes in
    ``min(n_families, G)`` families clustered on ``expression`` (N, G), in panel order."""
    if not panel.needs_families:
        return panel
    x = np.asarray(expression, dtype=np.float64)
    if x.ndim != 2 or x.shape[1] != panel.n_genes:
        raise DataError(f"gene families: expected (N, {panel.n_genes}) expression, got {x.shape}")
    k = min(n_families, panel.n_genes)
    return GenePanel(panel.genes, family_names(cluster_families(x, k)))
