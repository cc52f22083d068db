"""Jobs of a cross-validation side by side in worker processes, with the results of a serial run.

Every fit is seeded by its own config (:func:`~pathgen_batch.training.loops.seeded`), so a job
gives the same result in any process; each worker runs torch with the parent's number of intra-op
threads (and BLAS with one), so ``workers`` processes use ``workers x threads`` cores. The
training data is sent once per worker. Per-epoch progress and one-line notes of a job run in a
worker are recorded there and handed to the parent's callbacks when the job's result arrives,
in the order of the jobs.
"""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing
import os
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from pathgen_batch.errors import ConfigError
from pathgen_batch.training.data import TrainingData
from pathgen_batch.training.loops import EpochLog, Progress

J = TypeVar("J")
R = TypeVar("R")
Echo = Callable[[str], None]
# a job: (data, job, progress, echo) -> result; a module-level function (sent by reference)
JobFn = Callable[[TrainingData, J, Progress | None, Echo | None], R]

_WORKER: dict[str, Any] = {}


def resolve_workers(workers: int | None) -> int:
    """``workers`` as a process count: None or 0 = the machine's CPU count."""
    if isinstance(workers, bool) or (workers is not None and not isinstance(workers, int)):
        raise ConfigError(f"workers: expected an integer >= 0, got {workers!r}")
    if workers is not None and workers < 0:
        raise ConfigError(f"workers: expected an integer >= 0, got {workers}")
    return workers or os.cpu_count() or 1


def _init(data: TrainingData, threads: int) -> None:
    import torch
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(threads)
    threadpool_limits(
        1
    )  # BLAS of the baselines: one thread per worker, as the jobs run side by side
    _WORKER["data"] = data


def _run(
    fn: JobFn[Any, Any], job: Any, wants_progress: bool, wants_echo: bool
) -> tuple[Any, list[tuple[str, Any]]]:
    events: list[tuple[str, Any]] = []

    def progress(e: EpochLog) -> None:
        events.append(("epoch", e))

    def echo(line: str) -> None:
        events.append(("echo", line))

    out = fn(
        _WORKER["data"],
        job,
        progress if wants_progress else None,
        echo if wants_echo else None,
    )
    return out, events


def map_jobs(
    fn: JobFn[J, R],
    data: TrainingData,
    jobs: Sequence[J],
    workers: int = 1,
    progress: Progress | None = None,
    echo: Echo | None = None,
) -> list[R]:
    """``[fn(data, job, progress, echo) for job in jobs]``, in ``workers`` processes when > 1.

    Jobs are handed out in order, one at a time, to whichever worker is free: put the long ones
    first. Workers are spawned, so a script calling this with ``workers > 1`` must guard its
    entry point with ``if __name__ == "__main__":``.
    """
    n = min(resolve_workers(workers), len(jobs))
    if n <= 1:
        return [fn(data, job, progress, echo) for job in jobs]
    import torch

    out: list[R] = []
    with cf.ProcessPoolExecutor(
        max_workers=n,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=_init,
        initargs=(data, torch.get_num_threads()),
    ) as pool:
        futures = [
            pool.submit(_run, fn, job, progress is not None, echo is not None) for job in jobs
        ]
        for fut in futures:
            res, events = fut.result()
            for kind, value in events:
                if kind == "epoch" and progress is not None:
                    progress(value)
                elif kind == "echo" and echo is not None:
                    echo(value)
            out.append(res)
    return out


__all__ = ["map_jobs", "resolve_workers"]
