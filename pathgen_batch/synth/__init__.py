"""The semi-synthetic cohort: real expression and outcome, slides rendered from real H&E.

``build_cohort(out_dir, CohortConfig(...))`` writes slides and tables into a folder in the
cohort format of :mod:`pathgen_batch.cohort` (or reuses it); any reader loads it with
:func:`pathgen_batch.cohort.load_cohort`, and ``load_built_cohort(dir)`` adds the builder's
bookkeeping (config, ground-truth composition). ``write_pyramidal_tiff`` writes any RGB array
as an Aperio-style pyramidal TIFF that OpenSlide opens with all levels.
"""

from pathgen_batch.synth.cohort import SynthCohort, build_cohort, load_built_cohort
from pathgen_batch.synth.config import CohortConfig
from pathgen_batch.synth.data import GRADE_CLASSES
from pathgen_batch.synth.writer import write_pyramidal_tiff

__all__ = [
    "GRADE_CLASSES",
    "CohortConfig",
    "SynthCohort",
    "build_cohort",
    "load_built_cohort",
    "write_pyramidal_tiff",
]
