"""Rendering and writing the slides of a synthetic cohort, in one process or in a pool.

Each job renders one slide from its target composition with its own seeded random generator
and writes it as a pyramidal TIFF, so results do not depend on the number of workers.
"""

from __future__ import annotations

import concurrent.futures as cf
import logging
import multiprocessing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pathgen_batch import storage
from pathgen_batch.synth.render import RenderParams, render_slide
from pathgen_batch.synth.texture import TextureLibrary
from pathgen_batch.synth.writer import write_pyramidal_tiff

log = logging.getLogger(__name__)

_WORKER: dict[str, Any] = {}


@dataclass(frozen=True)
class SlideJob:
    slide_id: str
    path: str
    target: tuple[float, ...]  # (K,) composition to render
    seed: tuple[int, ...]  # entropy of the slide's random generator
    morph_level: float = 0.0  # grade morphology of the tumour class (0 = cohort v1)


def _init_worker(library: TextureLibrary, params: RenderParams, write: dict[str, Any]) -> None:
    _WORKER.update(library=library, params=params, write=write)


def _init_pool_worker(library: TextureLibrary, params: RenderParams, write: dict[str, Any]) -> None:
    from threadpoolctl import threadpool_limits

    threadpool_limits(1)  # slides run in parallel processes; BLAS threads would oversubscribe
    _init_worker(library, params, write)


def _render_one(job: SlideJob) -> dict[str, Any]:
    library: TextureLibrary = _WORKER["library"]
    rng = np.random.default_rng(list(job.seed))
    morph_rng = np.random.default_rng([*job.seed, 24]) if job.morph_level > 0 else None
    r = render_slide(
        library, np.asarray(job.target), _WORKER["params"], rng, job.morph_level, morph_rng
    )
    dims = write_pyramidal_tiff(job.path, r.rgb, **_WORKER["write"])
    return {
        "slide_id": job.slide_id,
        "fractions": r.class_fractions.tolist(),
        "tissue_fraction": r.tissue_fraction,
        "stain_alpha": list(r.stain.alpha),
        "stain_beta": list(r.stain.beta),
        "level_dimensions": [list(d) for d in dims],
        "sha256": storage.sha256(job.path),
        "bytes": Path(job.path).stat().st_size,
    }


def run_jobs(
    jobs: list[SlideJob],
    library: TextureLibrary,
    params: RenderParams,
    write: dict[str, Any],
    workers: int,
) -> dict[str, dict[str, Any]]:
    """slide_id -> what rendering and writing it measured (fractions, stain, dims, sha256)."""
    results: dict[str, dict[str, Any]] = {}
    step = max(1, len(jobs) // 10)

    def done(res: dict[str, Any]) -> None:
        results[res["slide_id"]] = res
        if len(results) % step == 0 or len(results) == len(jobs):
            log.info("rendered %d/%d slides", len(results), len(jobs))

    if workers <= 1 or len(jobs) <= 1:
        from threadpoolctl import threadpool_limits

        _init_worker(library, params, write)
        try:
            with threadpool_limits(1):
                for j in jobs:
                    done(_render_one(j))
        finally:
            _WORKER.clear()
        return results
    ctx = multiprocessing.get_context("spawn")
    with cf.ProcessPoolExecutor(
        max_workers=min(workers, len(jobs)),
        mp_context=ctx,
        initializer=_init_pool_worker,
        initargs=(library, params, write),
    ) as pool:
        for res in pool.map(_render_one, jobs, chunksize=1):
            done(res)
    return results
