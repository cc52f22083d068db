"""The per-slide stages of a scoring run, as plain classes (Ray is not imported here), and
what they share: the worker context, the failure commit, the errors a slide can cause.

Each stage maps a Ray Data batch (``dict[str, np.ndarray]``, one row per slide) to a batch; it
turns the batch into :class:`~pathgen_batch.batch.stage_rows.SlideRow` objects on the way in
and back on the way out (:mod:`pathgen_batch.batch.stage_rows`), and works on those in between.
:mod:`pathgen_batch.batch.pipeline` runs the stages as Ray actor pools, and
:func:`~pathgen_batch.batch.pipeline.run_serial` runs the very same stages in one process.

1. :class:`.encode_stage.TileEncoder` (actor; GPU when there is one): for each slide, stage it
   to local scratch (S3 objects downloaded, size checked, deleted right after), open it, resolve its
   MPP, compute the tissue mask and tile grid, read tiles in a background thread and encode
   them ``batch_size`` at a time on the encoder's device. Out: the bag (x, y, tissue (N,),
   feats (N, D)) - never slide bytes or tile pixels. A slide whose tiles and encoder live in
   one actor needs no all-to-all regrouping downstream and never moves its pixels between
   processes; the staged file stays node-local.
2. :class:`.encode_stage.FeatureReader` (instead of 1. with ``reuse_features``): the bag from
   a ``features`` table written by an earlier run; no slide is read.
3. :class:`.score_stage.SlideScorer` (actor; GPU when there is one): generator samples -> mean
   and spread, fusion model -> grade probabilities, hazards, risk, attention, conformal sets and
   intervals; writes the slide's per-slide tables and its commit (see
   :mod:`pathgen_batch.batch.commit`). Models are loaded once, in ``__init__``.

A slide that fails (download after retries, unreadable, truncated, not a slide, no tissue, no
MPP, scoring error) gets a failure commit with its stage, error type and message, and the
stage goes on with the next slide.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from pathgen_batch.batch import commit as cm
from pathgen_batch.batch.model_refs import EncoderRef, ModelRef
from pathgen_batch.batch.stage_rows import SlideRow, SlideStatus, StageTimes
from pathgen_batch.errors import PathgenError
from pathgen_batch.features.contract import FeatureContract
from pathgen_batch.storage import RetryPolicy
from pathgen_batch.tables.pseudonyms import SourceMap
from pathgen_batch.tables.redaction import Redactor, install
from pathgen_batch.tables.rows import Lineage, failure_record

log = logging.getLogger(__name__)

# errors a slide can cause; anything else is a bug and fails the Ray task (retried, then the
# slide is recorded by the driver's last pass)
SLIDE_FAILURES: tuple[type[BaseException], ...] = (PathgenError, OSError, ValueError, RuntimeError)


@dataclass(frozen=True)
class WorkerContext:
    """Everything a stage needs, small and picklable (built once by the driver)."""

    output: str
    run_id: str
    lineage: Lineage
    contract: FeatureContract
    generator: ModelRef
    fusion: ModelRef
    workspace: str
    tracking_uri: str | None
    scratch_dir: str
    retry: RetryPolicy
    min_tissue: float
    encoder_batch_size: int | None  # None: from the device's free memory
    n_samples: int | None
    seed: int
    write_features: bool
    device: str = "auto"
    threads: int | None = None  # torch intra-op threads per stage (None: torch's default)
    encoder: EncoderRef = field(default_factory=EncoderRef)  # the weights of its encoder
    exclude_geojson: str | None = None  # folder of <slide_id>.geojson: regions not tiled
    sources: SourceMap | None = None  # pseudonymised run: the real location of each slide
    log_level: int | None = None  # in a Ray worker: the driver's level (logs configured here)

    @property
    def layout(self) -> cm.RunLayout:
        return cm.RunLayout(self.output, self.run_id)


_WORKER_LOGS: dict[str, Callable[[], None]] = {}  # the redaction installed in this process
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def worker_logs(level: int, sources: SourceMap | None) -> None:
    """A Ray worker's logging as the driver's: its level, one stderr handler (Ray keeps the
    worker's stderr in its session logs), and for a pseudonymised run every record redacted
    (:mod:`pathgen_batch.tables.redaction`; one redaction per process, the latest run's)."""
    root = logging.getLogger()
    if not root.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter(LOG_FORMAT))
        root.addHandler(handler)
    root.setLevel(level)
    if (undo := _WORKER_LOGS.pop("undo", None)) is not None:
        undo()
    if sources is not None:
        _WORKER_LOGS["undo"] = install(Redactor(sources.replacements()))


class SlideStage:
    """What every stage shares: context, layout, retries, attempts and commits."""

    def __init__(self, ctx: WorkerContext) -> None:
        if ctx.threads is not None:  # one per CPU the stage reserved: no oversubscription
            torch.set_num_threads(ctx.threads)
        if ctx.log_level is not None:
            worker_logs(ctx.log_level, ctx.sources)
        self.ctx = ctx
        self.layout = ctx.layout
        self.retry = ctx.retry
        self.lineage = ctx.lineage

    def begin(self, row: SlideRow) -> SlideRow | None:
        """The row with a new attempt begun; None when the slide is already committed."""
        if cm.is_committed(self.layout, row.source.slide_id, self.retry):
            return None
        attempt, attempt_id = cm.begin_attempt(self.layout, row.source.slide_id, self.retry)
        return row.but(attempt=attempt, attempt_id=attempt_id)

    def commit(
        self,
        row: SlideRow,
        status: cm.Status,
        rec: Mapping[str, Any],
        times: StageTimes,
        *,
        attempt_id: str | None,
        tables: Sequence[str] = (),
    ) -> bool:
        """Commit ``row``'s attempt with its stage times; False when another attempt committed
        the slide first."""
        return cm.commit(
            self.layout,
            row.source.slide_id,
            status,
            rec,
            attempt=row.attempt,
            attempt_id=attempt_id,
            tables=tables,
            stats=times.to_dict(),
            retry=self.retry,
        )

    def fail(
        self, row: SlideRow, stage_name: str, error: BaseException, times: StageTimes
    ) -> SlideRow:
        """Commit a failure of ``row``'s attempt; the returned row says what happened."""
        src = row.source
        rec = failure_record(
            slide_id=src.slide_id,
            source_uri=src.uri,
            patient_id=src.patient_id,
            stage=stage_name,
            error=error,
            message=None if self.ctx.sources is None else self.ctx.sources.scrub(str(error), src),
            attempt=row.attempt,
            lineage=self.lineage,
        )
        log.warning("slide %s failed at %s: %s", src.slide_id, stage_name, rec["message"])
        won = self.commit(row, "failed", rec, times, attempt_id=None)
        return row.but(
            status=SlideStatus.FAILED if won else SlideStatus.SKIPPED,
            error_type=rec["error_type"],
            stage=stage_name,
            bag=None,
            times=times,
        )
