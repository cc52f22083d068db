"""What a scoring run tells its caller: progress while it runs, a summary when it is done."""

from __future__ import annotations

import time
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

    def line(self) -> str:
        return (
            f"slides {self.done}/{self.total} (scored {self.scored}, failed {self.failed}"
            + (f", already done {self.skipped}" if self.skipped else "")
            + f"), {self.tiles} tiles, {self.tiles_per_s:.1f} tiles/s, {self.elapsed_s:.0f} s"
        )


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
        if self.stage_times is not None:
            parts = ", ".join(f"{k} {v:.1f} s" for k, v in self.stage_times.by_stage().items())
            out.append(f"  time per stage (summed over slides): {parts}")
        for name, uri in self.tables.items():
            out.append(f"  {name}: {uri}")
        if self.n_failed:
            out.append(f"  {self.n_failed} slide(s) failed: see the failures table (exit 3)")
        return out
