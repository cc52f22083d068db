"""The scoring job: archive -> Ray Data streaming pipeline -> Parquet tables, exactly once.

::

    from pathgen_batch.batch import ScoreConfig, score_archive
    summary = score_archive(ScoreConfig(archive="s3://slides/cohort", output="s3://scores"))
    summary.exit_code   # 0 all scored, 3 some failed

Before any slide is read: models resolved (registry URIs pinned to version numbers), their
feature contract and gene panel compared, the archive and the output checked for access, and
the run started or resumed (:mod:`.prepare`, :mod:`.commit`). Then, per pass, a Ray Data
pipeline over the slides still without a commit (:mod:`.ray_runner`): an encoder stage
(:mod:`.encode_stage`) and a scorer stage (:mod:`.score_stage`) as actor pools, and the driver
counting one small status row per slide (:mod:`.summary`). With ``in_process`` (by default
when re-scoring stored features without a cluster to join) the same stages run in this
process, one batch after the other, with the same commits: no Ray is started.

Rows carry URIs, coordinates, features and results only; a slide file exists only on the
scratch disk of the node whose encoder actor stages it (one slide per actor at a time), and the
streaming executor's backpressure bounds what is in flight, so memory does not grow with the
archive. Slides left without a commit (a pass that ended on an error) are retried in the next
pass; after ``max_passes`` they are recorded as failures. Consolidation writes the tables and,
last, the ``runs`` row; when the input names patients, the driver first commits each patient
from its slides (:mod:`.patients`). A pseudonymised run redacts every log record of the driver
and of its workers (:mod:`pathgen_batch.tables.redaction`).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
import os
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch

from pathgen_batch import __version__, storage
from pathgen_batch.batch import commit as cm
from pathgen_batch.batch import patients as pt
from pathgen_batch.batch.config import ScoreConfig
from pathgen_batch.batch.encode_stage import TileEncoder
from pathgen_batch.batch.prepare import (
    Prepared,
    list_inputs,
    listing_summary,
    prepare,
    worker_context,
)
from pathgen_batch.batch.ray_runner import (
    Resources,
    build_pipeline,
    configure_data,
    connect,
    consume,
    pass_errors,
    plan_resources,
)
from pathgen_batch.batch.score_stage import SlideScorer, StoredBagScorer, union_predictor
from pathgen_batch.batch.stage_rows import SlideRow, StageTimes, from_batch, to_batch
from pathgen_batch.batch.summary import Progress, RunSummary
from pathgen_batch.config import to_dict
from pathgen_batch.errors import PathgenError
from pathgen_batch.storage import SlideSource
from pathgen_batch.tables import io as tio
from pathgen_batch.tables.redaction import Redactor, redacting

log = logging.getLogger(__name__)


def score_archive(
    cfg: ScoreConfig,
    progress: Callable[[Progress], None] | None = None,
) -> RunSummary:
    """Score ``cfg.archive`` into ``cfg.output`` (or resume run ``cfg.run_id``); see the
    module docstring. ``progress`` is called every ``cfg.progress_every_s`` seconds."""
    t0 = time.perf_counter()
    started = dt.datetime.now(dt.timezone.utc)
    cfg = dataclasses.replace(
        cfg, archive=storage.normalise(cfg.archive), output=storage.normalise(cfg.output)
    )
    p = prepare(cfg)
    layout = p.layout
    retry = cfg.retry
    tables = {
        t: tio.partition_uri(cfg.output, t, p.run_id)
        for t in ("predictions", "transcriptomes", "tile_attention", "failures", "runs")
    }
    if cfg.write_features:
        tables["features"] = tio.partition_uri(cfg.output, "features", p.run_id)
    state = cm.RunState.begin(layout, p.identity(), list_inputs(p), retry)
    if pt.patient_groups(state.inputs):
        tables["patients"] = tio.partition_uri(cfg.output, "patients", p.run_id)
    if state.resumed and state.is_complete():
        return _complete_summary(p, tables, time.perf_counter() - t0)
    redactor = p.listing.redactor()
    with redacting(redactor):
        return _run(p, state, tables, progress, t0, started, redactor)


def _run(
    p: Prepared,
    state: cm.RunState,
    tables: dict[str, str],
    progress: Callable[[Progress], None] | None,
    t0: float,
    started: dt.datetime,
    redactor: Redactor | None,
) -> RunSummary:
    """The passes, the patients and the consolidation of a begun run."""
    cfg, retry = p.cfg, p.cfg.retry
    res = None
    ray_stats = None
    startup_s = 0.0
    pending = state.pending()
    # (slides left without a commit, stage times, rows, passes, the error that ended the last)
    outcome: tuple[list[SlideSource], StageTimes, int, int, str] = (
        [],
        StageTimes(),
        0,
        0,
        "not processed",
    )
    if pending and cfg.runs_in_process():
        log.info(
            "run %s: %d of %d slide(s) to score, in this process",
            p.run_id,
            len(pending),
            len(state.inputs),
        )
        startup_s = time.perf_counter() - t0

        def in_process(todo: Sequence[SlideSource], prog: Progress) -> None:
            prog.count_all(run_in_process(p, todo), progress, cfg.progress_every_s)

        # out of retries on storage: the next pass, or a failure
        outcome = _passes(p, state, in_process, (PathgenError,), progress, redactor)
    elif pending:
        ray, owned = connect(cfg.ray_address, cfg.num_cpus)
        try:
            configure_data(ray)
            res = plan_resources(cfg, ray.cluster_resources(), len(pending))
            wctx = worker_context(p)
            log.info(
                "run %s: %d of %d slide(s) to score; %s",
                p.run_id,
                len(pending),
                len(state.inputs),
                res,
            )
            startup_s = time.perf_counter() - t0  # models, checks, listing, Ray: before a pass

            def on_ray(todo: Sequence[SlideSource], prog: Progress) -> None:
                nonlocal ray_stats
                assert res is not None
                ds = build_pipeline(ray, p, wctx, todo, res)
                ray_stats = consume(ds, prog, progress, cfg.progress_every_s)
                log.debug("run %s: Ray Data stats\n%s", p.run_id, ray_stats)

            outcome = _passes(p, state, on_ray, pass_errors(ray), progress, redactor)
        finally:
            if owned:
                ray.shutdown()
    pending, totals, n_rows, passes, last_error = outcome
    if pending:
        cm.fail_leftovers(state, p.lineage, last_error, retry)
    patients = None
    if "patients" in tables:
        pt.score_patients(
            state,
            lambda: union_predictor(worker_context(p)),
            p.lineage,
            p.pair.panel.digest,
            retry,
            batch_size=cfg.scorer_batch_size,
        )
        patients = pt.patient_records(state, retry)
    stage_times = totals if n_rows else None

    def runs_record(n_scored: int, n_failed: int, n_tiles: int) -> dict[str, Any]:
        return {
            "status": "complete",
            "started_at": started.isoformat(),
            "finished_at": dt.datetime.now(dt.timezone.utc).isoformat(),
            "archive": storage.redact(p.public_config.archive),
            "output": storage.redact(cfg.output),
            "n_slides": len(state.inputs),
            "n_scored": n_scored,
            "n_failed": n_failed,
            "n_tiles": n_tiles,
            "gene_panel_digest": p.pair.panel.digest,
            "features_written": cfg.write_features,
            "features_source_run": p.features_run,
            "timings_json": json.dumps(
                {
                    **(stage_times.to_dict(ndigits=3) if stage_times is not None else {}),
                    "passes": passes,
                    "wall_s": round(time.perf_counter() - t0, 3),
                }
            ),
            "config_json": storage.redact(json.dumps(to_dict(p.public_config), sort_keys=True)),
            "code_version": __version__,
            **p.lineage.to_dict(),
        }

    dim = p.pair.contract.dim if cfg.write_features else None
    t_cons = time.perf_counter()
    done = cm.consolidate(state, runs_record, dim, retry, tmp_dir=None, patients=patients)
    consolidate_s = time.perf_counter() - t_cons
    return RunSummary(
        run_id=p.run_id,
        output=cfg.output,
        n_slides=len(state.inputs),
        n_scored=done.n_scored,
        n_failed=done.n_failed,
        n_tiles=done.n_tiles,
        seconds=time.perf_counter() - t0,
        stage_times=stage_times,
        tables=tables,
        passes=passes,
        resumed=state.resumed,
        encoder_actors=_pool(res, cfg.reuse_features, "encoder_actors"),
        scorer_actors=_pool(res, cfg.reuse_features, "scorer_actors"),
        ray_stats=ray_stats,
        startup_s=startup_s,
        consolidate_s=consolidate_s,
        listing=listing_summary(p),
    )


def _pool(res: Resources | None, reuse: bool, which: str) -> int:
    """The actors of a kind a run's stage times were spent in (re-scoring: the one pool of
    scorers reads the bags too)."""
    if res is None:
        return 1
    return int(getattr(res, "scorer_actors" if reuse else which))


def _complete_summary(p: Prepared, tables: dict[str, str], seconds: float) -> RunSummary:
    row = tio.read_table(p.cfg.output, "runs", [p.run_id]).to_pylist()[0]
    timings = json.loads(row["timings_json"])
    stage_times = StageTimes.from_dict(timings) if StageTimes.keys() & timings.keys() else None
    if not row["features_written"]:
        tables.pop("features", None)
    return RunSummary(
        run_id=p.run_id,
        output=p.cfg.output,
        n_slides=int(row["n_slides"]),
        n_scored=int(row["n_scored"]),
        n_failed=int(row["n_failed"]),
        n_tiles=int(row["n_tiles"]),
        seconds=seconds,
        stage_times=stage_times,
        tables=tables,
        already_complete=True,
        listing=listing_summary(p),
    )


def _passes(
    p: Prepared,
    state: cm.RunState,
    run_pass: Callable[[Sequence[SlideSource], Progress], None],
    ends_a_pass: tuple[type[BaseException], ...],
    progress: Callable[[Progress], None] | None,
    redactor: Redactor | None,
) -> tuple[list[SlideSource], StageTimes, int, int, str]:
    """Passes of ``run_pass`` over the slides still without a commit, at most
    ``max_passes``: an error of ``ends_a_pass`` ends a pass and the next one retries what it
    left. Returns (slides still pending, summed stage times, rows, passes, the last error)."""
    totals, n_rows, passes, last_error = StageTimes(), 0, 0, "not processed"
    pending = state.pending()
    while pending and passes < p.cfg.max_passes:
        passes += 1
        prog = Progress(total=len(pending))
        try:
            run_pass(pending, prog)
        except ends_a_pass as e:
            last_error = (
                f"pass {passes} ended on {type(e).__name__}: "
                + (str(e).strip().splitlines() or [""])[0][:500]
            )
            if redactor is not None:  # it goes into the failures table too
                last_error = redactor(last_error)
            log.warning("run %s: %s", p.run_id, last_error)
        totals, n_rows = totals + prog.times, n_rows + prog.done
        if progress is not None:
            progress(prog)
        pending = state.pending()
    return list(pending), totals, n_rows, passes, last_error


def run_in_process(p: Prepared, pending: Sequence[SlideSource]) -> Iterator[SlideRow]:
    """The stages of the pipeline over ``pending``, in this process (no Ray): re-scoring reads
    and scores ``scorer_batch_size`` stored bags at a time; scoring from slides encodes one
    slide at a time (``num_cpus`` threads, one torch thread each, read and encode its tiles)
    and scores it. Torch's thread count is restored afterwards."""
    cfg = p.cfg
    cores = (
        os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else range(os.cpu_count() or 1)
    )
    ctx = dataclasses.replace(worker_context(p), threads=cfg.num_cpus or max(1, len(cores)))
    before = torch.get_num_threads()
    try:
        if cfg.reuse_features:
            scorer = StoredBagScorer(ctx)
            rows = []
            for s in pending:
                uri, group = p.feature_index.get(s.slide_id, (None, None))
                rows.append(SlideRow(s, feature_uri=uri, feature_group=group))
            for i in range(0, len(rows), cfg.scorer_batch_size):
                yield from from_batch(scorer(to_batch(rows[i : i + cfg.scorer_batch_size])))
        else:
            encoder = TileEncoder(ctx)
            scorer_ctx = dataclasses.replace(ctx, threads=None)
            yield from run_serial(encoder, SlideScorer(scorer_ctx), pending)
    finally:
        torch.set_num_threads(before)


def run_serial(
    encoder: TileEncoder,
    scorer: SlideScorer,
    sources: Sequence[SlideSource],
) -> Iterator[SlideRow]:
    """The encoder and scorer stages in this process, one slide after the other (no Ray), each
    slide's row as it is committed. The stages are built by the caller (so a benchmark can
    load the models before its clock starts); the run must have begun
    (:class:`.commit.RunState`)."""
    for src in sources:
        yield from from_batch(scorer(encoder(to_batch([SlideRow(src)]))))
