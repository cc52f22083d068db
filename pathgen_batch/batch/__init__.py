"""The batch scorer: a Ray Data job from object storage to Parquet tables, exactly once.

This package is the only code that imports Ray (lazily, in :mod:`.pipeline`)::

    from pathgen_batch.batch import ScoreConfig, score_archive

    summary = score_archive(ScoreConfig(archive="s3://slides/cohort", output="s3://scores",
                                        generator="models:/pathgen-generator/Production",
                                        fusion="models:/pathgen-fusion/Production"))
    print("\\n".join(summary.lines()))

Modules: :mod:`.config` (the run's settings), :mod:`.model_refs` (model resolution and the
contract/panel check), :mod:`.prepare` (everything settled before a slide is read),
:mod:`.commit` (the exactly-once protocol, resume and consolidation), :mod:`.stage_rows` (the
typed rows between stages, their timings, the codec to Ray batches), :mod:`.stages` (what the
stages share), :mod:`.encode_stage` and :mod:`.score_stage` (the per-slide work, also runnable
without Ray), :mod:`.ray_runner` (Ray, actor pools, one pass), :mod:`.summary` (progress and
the run summary), :mod:`.pipeline` (the job: passes, leftovers, consolidation).
"""

from pathgen_batch.batch.config import ScoreConfig
from pathgen_batch.batch.pipeline import run_serial, score_archive
from pathgen_batch.batch.prepare import new_run_id, prepare
from pathgen_batch.batch.ray_runner import Resources, plan_resources
from pathgen_batch.batch.stage_rows import TIMED_STAGES, SlideRow, SlideStatus, StageTimes
from pathgen_batch.batch.summary import Progress, RunSummary

__all__ = [
    "TIMED_STAGES",
    "Progress",
    "Resources",
    "RunSummary",
    "ScoreConfig",
    "SlideRow",
    "SlideStatus",
    "StageTimes",
    "new_run_id",
    "plan_resources",
    "prepare",
    "run_serial",
    "score_archive",
]
