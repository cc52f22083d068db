"""Feature extraction for training through the scoring job's encoder stage.

A cohort's slides (local paths or ``s3://`` URIs) go through the same stage -> tile -> encode
path as a scoring run (:class:`~pathgen_batch.batch.encode_stage.SlideEncoding`), and each
bag is written to the feature store the trainers read (:mod:`pathgen_batch.features.store`,
a folder or an S3 prefix, one file per slide, written whole) through the features layer's
:class:`~pathgen_batch.features.extract.FeatureTarget`, as ``extract_slides`` writes::

    from pathgen_batch.batch.features_job import FeatureJob, cohort_sources, extract_features
    from pathgen_batch.features import FeatureTarget

    job = FeatureJob(FeatureTarget("features/", encoder.contract), ray_address="auto")
    results = extract_features(job, cohort_sources(load_cohort("cohort/")))

With ``use_ray`` the slides run on an actor pool of :class:`FeatureWriter` (one per CPU, or one
per GPU), on a local Ray or the cluster at ``ray_address``; without, the same stage runs in this
process. Resumable: a slide whose file exists with the same contract and settings is skipped, a
file with other features is an error (unless ``overwrite``), and since each file appears
whole, a run killed part-way and run again writes the same files. A slide that fails gets a
``failed`` result naming its stage and error; slides a pass left without a result (a lost
worker) are retried in the next pass, then reported failed.
"""

from __future__ import annotations

import math
import os
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch

from pathgen_batch import storage
from pathgen_batch.batch.encode_stage import SlideEncoding, encoded_row
from pathgen_batch.batch.ray_runner import configure_data, connect, pass_errors
from pathgen_batch.batch.stage_rows import (
    SlideRow,
    SlideStatus,
    StageTimes,
    from_batch,
    from_ray_row,
    input_rows,
    to_batch,
)
from pathgen_batch.batch.stages import SLIDE_FAILURES
from pathgen_batch.cohort import Cohort
from pathgen_batch.errors import ConfigError
from pathgen_batch.features.encode_slide import spec_for
from pathgen_batch.features.encoder import resolve_device
from pathgen_batch.features.encoders import encoder_for_contract
from pathgen_batch.features.extract import FeatureTarget, SlideResult
from pathgen_batch.storage import DEFAULT_RETRY, RetryPolicy, SlideSource


@dataclass(frozen=True)
class FeatureJob:
    """One extraction: where the feature files go and what they hold (``target``: the
    encoder's contract, tiling, overwrite), the encoder's local weights file, and how it runs
    (Ray or in process; pool sizes)."""

    target: FeatureTarget
    weights: str | None = None
    batch_size: int = 64
    use_ray: bool = True
    ray_address: str | None = None
    num_cpus: int | None = None  # CPUs of a local Ray (None: all)
    actors: int | None = None  # encoder actors (None: one per GPU, else one per CPU)
    device: str = "auto"
    scratch_dir: str | None = None  # node-local folder for staged slides
    retry: RetryPolicy = DEFAULT_RETRY
    max_passes: int = 2
    workers: int = 1  # threads per actor reading and encoding one slide's batches side by side

    def __post_init__(self) -> None:
        if self.max_passes < 1:
            raise ConfigError(f"max_passes: expected >= 1, got {self.max_passes}")
        if self.actors is not None and self.actors < 1:
            raise ConfigError(f"actors: expected >= 1, got {self.actors}")


@dataclass(frozen=True)
class WriterContext:
    """What a :class:`FeatureWriter` needs, small and picklable (sent to each actor once)."""

    target: FeatureTarget
    weights: str | None
    batch_size: int
    device: str
    scratch_dir: str
    retry: RetryPolicy
    threads: int | None = None  # torch intra-op threads (None: torch's default)
    workers: int = 1  # see FeatureJob.workers


class FeatureWriter:
    """Stage + tile + encode one slide at a time and write its feature file (a Ray Data
    ``map_batches`` class, also called directly); rows out carry a status, never a bag."""

    def __init__(self, ctx: WriterContext) -> None:
        if ctx.threads is not None:
            torch.set_num_threads(ctx.threads)
        self.ctx = ctx
        self.encoder = encoder_for_contract(
            ctx.target.contract, weights=ctx.weights, device=resolve_device(ctx.device)
        )
        self.spec = spec_for(self.encoder, ctx.target.min_tissue)
        if ctx.workers > 1 and self.encoder.device.type == "cpu":
            torch.set_num_threads(1)  # the workers are the parallelism

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return to_batch([self.write(r) for r in from_batch(batch)])

    def write(self, row: SlideRow) -> SlideRow:
        ctx, src = self.ctx, row.source
        run = SlideEncoding(ctx.scratch_dir, ctx.retry, ctx.batch_size, ctx.workers)
        times = StageTimes()
        after: str | None = None  # once encoded, a failure is the write's
        try:
            enc, _ = run.encode(
                src, src, self.encoder, self.spec, ctx.target.exclude_geojson, lambda p, e: None
            )
            after = "write"
            times = StageTimes(download=run.download_s, tiles=enc.tiles_s, encode=enc.encode_s)
            t0 = time.perf_counter()
            ctx.target.write(src.slide_id, storage.redact(src.uri), enc, self.spec, src.mpp)
            times.write = time.perf_counter() - t0
        except SLIDE_FAILURES as e:
            times.download = run.download_s
            return row.but(
                status=SlideStatus.FAILED,
                stage=after or run.failed_at(e),
                error_type=type(e).__name__,
                message=storage.redact(str(e)),
                times=times,
            )
        return encoded_row(row, enc, times)


def cohort_sources(cohort: Cohort, slide_ids: Sequence[str] | None = None) -> list[SlideSource]:
    """The cohort's slides as sources (all, or ``slide_ids`` in that order): location, patient
    and the slides table's MPP (None where it gives none). An unknown id is a DataError."""
    t = cohort.slides
    mpps = dict(zip(t["slide_id"], t["mpp"].astype(float), strict=True))
    patients = dict(zip(t["slide_id"], t["patient_id"], strict=True))
    ids = list(dict.fromkeys(cohort.slide_ids if slide_ids is None else slide_ids))
    out = []
    for sid in ids:
        uri = cohort.slide_uri(sid)  # names the cohort when the id is unknown
        mpp = float(mpps[sid])
        out.append(
            SlideSource(
                uri=uri,
                slide_id=sid,
                patient_id=str(patients[sid]),
                mpp=None if math.isnan(mpp) else mpp,
            )
        )
    return out


def writer_pool(
    job: FeatureJob, cluster: dict[str, float], n_slides: int
) -> tuple[int, float, float]:
    """(actors, CPUs each, GPUs each): one actor per GPU (a GPU and up to 4 CPUs each), else
    one per CPU (more actors than CPUs share them); never more actors than slides."""
    cpus = max(1, math.floor(cluster.get("CPU", 1.0)))
    gpus = float(cluster.get("GPU", 0.0))
    if gpus >= 1 and job.device != "cpu":
        n = min(job.actors or int(gpus), max(1, n_slides))
        return n, min(4.0, max(1.0, float(cpus // n))), min(1.0, gpus / n)
    n = min(job.actors or cpus, max(1, n_slides))
    return n, (cpus / n if n > cpus else float(cpus // n)), 0.0


def extract_features(
    job: FeatureJob,
    sources: Sequence[SlideSource],
    progress: Callable[[SlideResult], None] | None = None,
) -> list[SlideResult]:
    """Extract every slide of ``sources`` into ``job.target``; one result per slide, in order
    (see the module docstring). ``progress`` is called with each slide's result as it comes.
    Every existing file is checked before a slide is read (a contract mismatch fails at once).
    """
    target = job.target
    results: dict[str, SlideResult] = {}

    def record(r: SlideResult) -> None:
        if r.slide_id not in results:  # a retried task may report a slide twice
            results[r.slide_id] = r
            if progress is not None:
                progress(r)

    skipped, todo = target.split_done([(s.slide_id, s.mpp) for s in sources])
    for r in skipped:
        record(r)
    to_extract = set(todo)
    pending = [s for s in sources if s.slide_id in to_extract]
    scratch = job.scratch_dir or os.path.join(tempfile.gettempdir(), "pathgen-scratch")
    ctx = WriterContext(
        target=target,
        weights=job.weights,
        batch_size=job.batch_size,
        device=job.device,
        scratch_dir=os.path.join(scratch, f"features-{uuid.uuid4().hex[:8]}"),
        retry=job.retry,
        workers=job.workers,
    )
    last_error = "not processed"
    if pending and not job.use_ray:
        writer = FeatureWriter(ctx)
        for s in pending:
            for row in from_batch(writer(to_batch([SlideRow(s)]))):
                record(_result(row, target))
    elif pending:
        last_error = _run_ray(job, ctx, pending, record, results)
    for s in sources:
        if s.slide_id not in results:
            record(SlideResult(s.slide_id, "failed", error=f"not extracted: {last_error}"))
    return [results[s.slide_id] for s in sources]


def _run_ray(
    job: FeatureJob,
    ctx: WriterContext,
    pending: list[SlideSource],
    record: Callable[[SlideResult], None],
    results: dict[str, SlideResult],
) -> str:
    """Passes of the Ray Data pipeline over the slides still without a result; the error
    that ended the last pass ("not processed" when none did)."""
    ray, owned = connect(job.ray_address, job.num_cpus)
    last_error = "not processed"
    try:
        configure_data(ray)
        ends_a_pass = pass_errors(ray)
        for _ in range(job.max_passes):
            if not pending:
                break
            n, cpus, gpus = writer_pool(job, ray.cluster_resources(), len(pending))
            actor_ctx = replace(ctx, threads=max(1, math.floor(cpus)))
            ds = ray.data.from_items(input_rows(pending), override_num_blocks=len(pending))
            ds = ds.map_batches(
                FeatureWriter,
                fn_constructor_kwargs={"ctx": actor_ctx},
                batch_size=1,
                compute=ray.data.ActorPoolStrategy(size=n),
                num_cpus=cpus,
                num_gpus=gpus,
            )
            try:
                for row in ds.iter_rows():
                    record(_result(from_ray_row(row), ctx.target))
            except ends_a_pass as e:
                first = (str(e).strip().splitlines() or [""])[0][:300]
                last_error = f"the pass ended on {type(e).__name__}: {first}"
            pending = [s for s in pending if s.slide_id not in results]
    finally:
        if owned:
            ray.shutdown()
    return last_error


def _result(row: SlideRow, target: FeatureTarget) -> SlideResult:
    sid = row.source.slide_id
    seconds = sum(row.times.by_stage().values())
    if row.status is SlideStatus.ENCODED:
        return SlideResult(sid, "done", row.n_tiles, seconds, target.uri(sid))
    return SlideResult(
        sid, "failed", seconds=seconds, error=f"{row.stage}: {row.error_type}: {row.message}"
    )
