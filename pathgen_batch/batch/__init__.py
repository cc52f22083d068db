"""The batch scorer: a Ray Data job from object storage to Parquet tables, exactly once.

This package is the only code that imports Ray (lazily, in :mod:`.pipeline`)::

    from pathgen_batch.batch import ScoreConfig, score_archive

    summary = score_archive(ScoreConfig(archive="s3://slides/cohort", output="s3://scores",
                                        generator="models:/pathgen-generator/Production",
                                        fusion="models:/pathgen-fusion/Production"))
    print("\\n".join(summary.lines()))

Modules: :mod:`.config` (the run's settings), :mod:`.models` (model resolution and the
contract/panel check), :mod:`.commit` (the exactly-once protocol and resume), :mod:`.stages`
(per-slide work, also runnable without Ray), :mod:`.pipeline` (Ray Data assembly, passes,
progress, summary).
"""

from pathgen_batch.batch.config import ScoreConfig
from pathgen_batch.batch.pipeline import (
    Progress,
    Resources,
    RunSummary,
    new_run_id,
    plan_resources,
    prepare,
    score_archive,
)

__all__ = [
    "Progress",
    "Resources",
    "RunSummary",
    "ScoreConfig",
    "new_run_id",
    "plan_resources",
    "prepare",
    "score_archive",
]
