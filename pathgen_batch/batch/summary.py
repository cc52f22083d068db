"""What a scoring run tells its caller: progress while it runs, a summary when it is done.

Both give tiles/s and slides/h; the summary adds the share of time per stage and which
resource bounded the run (:func:`bound_by`): the encoder actors spend a slide's time
downloading, decoding tiles (``tiles``: opening, masking and waiting for the reader thread) or
encoding; the scorer actors scoring or writing. Each pool's summed busy time over its actors
is its load; the busier pool bounded the run, and within it the stage that took most.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from pathgen_batch.batch.stage_rows import SlideRow, SlideStatus, StageTimes
from pathgen_batch.errors import DataError


@dataclass
class Progress:
    """Counts of a running job (this invocation's slides)."""

    total: int
    scored: int = 0
    failed: int = 0
    skipped: int = 0
    tiles: int = 0
    times: StageTimes = field(default_factory=StageTimes)  # summed over this pass's slides
    started: float = field(default_factory=time.monotonic)

    def count(self, row: SlideRow) -> None:
        """Count one row that left the pipeline."""
        if row.status is SlideStatus.SCORED:
            self.scored += 1
            self.tiles += row.n_tiles
        elif row.status is SlideStatus.FAILED:
            self.failed += 1
        elif row.status is SlideStatus.SKIPPED:
            self.skipped += 1
        else:  # cannot happen: the scorer turns every encoded row
            raise DataError(
                f"slide {row.source.slide_id}: left the pipeline unscored ({row.status.value})"
            )
        self.times += row.times

    def count_all(
        self, rows: Iterable[SlideRow], report: Callable[[Progress], None] | None, every_s: float
    ) -> None:
        """Count every row of ``rows`` as it leaves the pipeline; ``report(self)`` every
        ``every_s`` seconds."""
        last = time.monotonic()
        for row in rows:
            self.count(row)
            if report is not None and time.monotonic() - last >= every_s:
                report(self)
                last = time.monotonic()

    @property
    def done(self) -> int:
        return self.scored + self.failed + self.skipped

    @property
    def elapsed_s(self) -> float:
        return time.monotonic() - self.started

    @property
    def tiles_per_s(self) -> float:
        e = self.elapsed_s
        return self.tiles / e if e > 0 else 0.0

    @property
    def slides_per_h(self) -> float:
        e = self.elapsed_s
        return self.done * 3600.0 / e if e > 0 else 0.0

    def line(self) -> str:
        return (
            f"slides {self.done}/{self.total} (scored {self.scored}, failed {self.failed}"
            + (f", already done {self.skipped}" if self.skipped else "")
            + f"), {self.tiles} tiles, {self.tiles_per_s:.1f} tiles/s, "
            f"{self.slides_per_h:.0f} slides/h, {self.elapsed_s:.0f} s"
        )


ENCODER_STAGES = ("download", "tiles", "encode")  # in the encoder actors
SCORER_STAGES = ("score", "write")  # in the scorer actors
RESOURCE_OF = {"download": "download", "tiles": "decode", "encode": "encode", "score": "score"}


def bound_by(times: StageTimes, encoder_actors: int, scorer_actors: int) -> tuple[str, float]:
    """(the resource that bounded a run, its share of its pool's busy time): ``download``,
    ``decode``, ``encode``, ``score`` or ``write`` (see the module docstring)."""
    t = times.by_stage()
    enc = sum(t[s] for s in ENCODER_STAGES) / max(1, encoder_actors)
    sc = sum(t[s] for s in SCORER_STAGES) / max(1, scorer_actors)
    stages = ENCODER_STAGES if enc >= sc else SCORER_STAGES
    top = max(stages, key=lambda s: t[s])
    busy = sum(t[s] for s in stages)
    return RESOURCE_OF.get(top, top), (t[top] / busy if busy > 0 else 0.0)


@dataclass(frozen=True)
class RunSummary:
    """The outcome of :func:`~pathgen_batch.batch.pipeline.score_archive`."""

    run_id: str
    output: str
    n_slides: int
    n_scored: int
    n_failed: int
    n_tiles: int
    seconds: float
    stage_times: StageTimes | None  # summed over slides; None when no slide went through
    tables: dict[str, str]
    passes: int = 0
    resumed: bool = False
    already_complete: bool = False
    encoder_actors: int = 1
    scorer_actors: int = 1
    ray_stats: str | None = None  # Ray Data's stats of the last pass (time, CPU per operator)
    startup_s: float = 0.0  # before the first pass: models, checks, listing, Ray
    consolidate_s: float = 0.0  # after the last: the tables and the runs row
    listing: str | None = None  # the archive listing: slides by kind, skipped files and why

    @property
    def tiles_per_s(self) -> float:
        return self.n_tiles / self.seconds if self.seconds > 0 else 0.0

    @property
    def slides_per_h(self) -> float:
        return (self.n_scored + self.n_failed) * 3600.0 / self.seconds if self.seconds > 0 else 0.0

    @property
    def exit_code(self) -> int:
        """0 when every slide was scored, 3 when some failed (see the failures table)."""
        return 0 if self.n_failed == 0 else 3

    def lines(self) -> list[str]:
        head = f"run {self.run_id}: " + (
            "already complete; nothing to do"
            if self.already_complete
            else f"{'resumed, ' if self.resumed else ''}{self.passes} pass(es), "
            f"{self.seconds:.1f} s"
        )
        out = [
            head,
            f"  slides {self.n_slides}: scored {self.n_scored}, failed {self.n_failed}; "
            f"tiles {self.n_tiles}",
        ]
        if self.listing is not None:
            out.append(f"  listing: {self.listing}")
        if not self.already_complete:
            out.append(
                f"  throughput: {self.tiles_per_s:.1f} tiles/s, {self.slides_per_h:.0f} slides/h "
                f"(start-up included); start-up {self.startup_s:.1f} s (models, checks, "
                f"Ray), consolidation {self.consolidate_s:.1f} s"
            )
        if self.stage_times is not None:
            t = self.stage_times.by_stage()
            total = sum(t.values())
            parts = ", ".join(
                f"{k} {v:.1f} s ({100 * v / total if total > 0 else 0:.0f}%)" for k, v in t.items()
            )
            out.append(f"  time per stage (summed over slides): {parts}")
            if total > 0:
                what, share = bound_by(self.stage_times, self.encoder_actors, self.scorer_actors)
                out.append(
                    f"  bounded by: {what} ({100 * share:.0f}% of its actors' busy time; "
                    f"{self.encoder_actors} encoder, {self.scorer_actors} scorer actor(s))"
                )
        for name, uri in self.tables.items():
            out.append(f"  {name}: {uri}")
        if self.n_failed:
            out.append(f"  {self.n_failed} slide(s) failed: see the failures table (exit 3)")
        return out
