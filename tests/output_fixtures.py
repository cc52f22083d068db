"""Rows shared by the output-table tests (export, query, batch tables, report): the feature
contract and lineage of a scored run, and a complete ``runs`` row."""

from __future__ import annotations

from typing import Any

from pathgen_batch.features.contract import FeatureContract
from pathgen_batch.tables import Lineage

CONTRACT = FeatureContract("stain-texture", "v1", 4, 64, 0.5)
LIN = Lineage("pathgen-generator", "3", "pathgen-fusion", "7", CONTRACT.to_json(), CONTRACT.digest)


def runs_row(
    output: str,
    lineage: Lineage = LIN,
    *,
    n_scored: int = 1,
    n_failed: int = 0,
    n_tiles: int = 3,
    **fields: Any,
) -> dict[str, Any]:
    """A complete run's ``runs`` row (the archive "/archive", started 2025-01-01 00:00 and
    finished ten minutes later); ``fields`` replace any column."""
    row: dict[str, Any] = {
        "status": "complete",
        "started_at": "2025-01-01T00:00:00+00:00",
        "finished_at": "2025-01-01T00:10:00+00:00",
        "archive": "/archive",
        "output": output,
        "n_slides": n_scored + n_failed,
        "n_scored": n_scored,
        "n_failed": n_failed,
        "n_tiles": n_tiles,
        "gene_panel_digest": "sha256:p",
        "features_written": False,
        "features_source_run": None,
        "timings_json": "{}",
        "config_json": "{}",
        "code_version": "0",
        **lineage.to_dict(),
    }
    unknown = set(fields) - set(row)
    if unknown:
        raise KeyError(f"runs_row: no column {sorted(unknown)}")
    return {**row, **fields}
