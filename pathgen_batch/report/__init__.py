"""The HTML report of a scoring run: per-slide co-attention heatmaps over thumbnails, grade and
risk, cohort distributions, Kaplan-Meier curves, grade confusion, expression fidelity, lineage.

::

    from pathgen_batch.report import write_report
    write_report("scores/", "report/", clinical="cohort/clinical.parquet")  # report/index.html
"""

from pathgen_batch.report.build import ReportConfig, write_report
from pathgen_batch.report.data import RunTables, load_run, pick_run
from pathgen_batch.report.heatmap import Canvas, attention_map, blend, thumbnail_canvas
from pathgen_batch.report.outcomes import confusion_matrix, survival_summary

__all__ = [
    "Canvas",
    "ReportConfig",
    "RunTables",
    "attention_map",
    "blend",
    "confusion_matrix",
    "load_run",
    "pick_run",
    "survival_summary",
    "thumbnail_canvas",
    "write_report",
]
