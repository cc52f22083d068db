"""The cohort: its format, loader, validation and patient-level splits.

A cohort is a folder or ``s3://`` prefix in the documented format
(:mod:`pathgen_batch.cohort.format`); :func:`load_cohort` reads and checks it into a
:class:`Cohort`, :func:`validate_cohort` lists every problem at once, and :func:`init_cohort`
writes a template to fill in. Training, feature extraction and the semi-synthetic cohort
builder all go through this package; it imports none of them.
"""

from pathgen_batch.cohort.format import (
    EXPRESSION_UNITS,
    FORMAT_VERSION,
    CohortSettings,
    parse_settings,
    with_overrides,
)
from pathgen_batch.cohort.model import Cohort
from pathgen_batch.cohort.read import Problem
from pathgen_batch.cohort.template import init_cohort
from pathgen_batch.cohort.validate import Validation, load_cohort, validate_cohort

__all__ = [
    "EXPRESSION_UNITS",
    "FORMAT_VERSION",
    "Cohort",
    "CohortSettings",
    "Problem",
    "Validation",
    "init_cohort",
    "load_cohort",
    "parse_settings",
    "validate_cohort",
    "with_overrides",
]
