"""The semi-synthetic cohort: real expression and outcome, slides rendered from real H&E.

``build_cohort(out_dir, CohortConfig(...))`` writes slides and tables into a folder (or reuses
it), ``load_cohort(dir)`` reads one back, and ``write_pyramidal_tiff`` writes any RGB array as
an Aperio-style pyramidal TIFF that OpenSlide opens with all levels.
"""

from pathgen_batch.synth.cohort import Cohort, build_cohort, load_cohort
from pathgen_batch.synth.config import CohortConfig
from pathgen_batch.synth.data import GRADE_CLASSES
from pathgen_batch.synth.writer import write_pyramidal_tiff

__all__ = [
    "GRADE_CLASSES",
    "Cohort",
    "CohortConfig",
    "build_cohort",
    "load_cohort",
    "write_pyramidal_tiff",
]
