"""The scoring job: archive -> Ray Data streaming pipeline -> Parquet tables, exactly once.

::

    from pathgen_batch.batch import ScoreConfig, score_archive
    summary = score_archive(ScoreConfig(archive="s3://slides/cohort", output="s3://scores"))
    summary.exit_code   # 0 all scored, 3 some failed

Before any slide is read: models resolved (registry URIs pinned to version numbers), their
feature contract and gene panel compared, the archive and the output checked for access, and
the run started or resumed (:mod:`.commit`). Then, per pass, a Ray Data pipeline over the
slides still without a commit::

    from_items(slide URIs)                        driver: locations only, one block per slide
      -> map_batches(TileEncoder | FeatureReader)  actor pool: stage, tile, encode (GPU if any)
      -> map_batches(SlideScorer)                  actor pool: generator, fusion, conformal,
                                                   attention; per-slide files and the commit
      -> iter_rows()                               driver: one small status row per slide

Rows carry URIs, coordinates, features and results only; a slide file exists only on the
scratch disk of the node whose encoder actor stages it (one slide per actor at a time), and the
streaming executor's backpressure bounds what is in flight, so memory does not grow with the
archive. Slides left without a commit (a pass that ended on an error) are retried in the next
pass; after ``max_passes`` they are recorded as failures. Consolidation writes the tables and,
last, the ``runs`` row.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
import math
import os
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from pathgen_batch import __version__, storage
from pathgen_batch.batch import commit as cm
from pathgen_batch.batch.config import ScoreConfig
from pathgen_batch.batch.model_refs import (
    ModelRef,
    PairInfo,
    RegistryAccess,
    check_pair,
    resolve_model,
)
from pathgen_batch.batch.stages import (
    ENCODED,
    FAILED,
    SCORED,
    SKIPPED,
    FeatureReader,
    SlideScorer,
    TileEncoder,
    WorkerContext,
    jobs_batch,
)
from pathgen_batch.config import to_dict
from pathgen_batch.errors import ConfigError, DataError
from pathgen_batch.features.contract import FeatureContract
from pathgen_batch.storage import SlideSource, StorageError
from pathgen_batch.tables import io as tio
from pathgen_batch.tables.rows import Lineage

log = logging.getLogger(__name__)

STAGE_KEYS = ("download_s", "tiles_s", "encode_s", "score_s", "write_s")


def new_run_id() -> str:
    """``YYYYmmddTHHMMSSZ-<6 hex>``: sortable by start time, unique."""
    now = dt.datetime.now(dt.timezone.utc)
    return f"{now:%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:6]}"


@dataclass
class Progress:
    """Counts of a running job (this invocation's slides)."""

    total: int
    scored: int = 0
    failed: int = 0
    skipped: int = 0
    tiles: int = 0
    started: float = field(default_factory=time.monotonic)

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
    """The outcome of :func:`score_archive`."""

    run_id: str
    output: str
    n_slides: int
    n_scored: int
    n_failed: int
    n_tiles: int
    seconds: float
    stage_seconds: dict[str, float]
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
        if self.stage_seconds:
            parts = ", ".join(f"{k} {v:.1f} s" for k, v in self.stage_seconds.items())
            out.append(f"  time per stage (summed over slides): {parts}")
        for name, uri in self.tables.items():
            out.append(f"  {name}: {uri}")
        if self.n_failed:
            out.append(f"  {self.n_failed} slide(s) failed: see the failures table (exit 3)")
        return out


# -- preparation (driver, before any slide is read) ----------------------------------------
@dataclass(frozen=True)
class Prepared:
    cfg: ScoreConfig
    run_id: str
    generator: ModelRef
    fusion: ModelRef
    pair: PairInfo
    lineage: Lineage
    features_run: str | None
    feature_index: dict[str, tuple[str, int]]

    @property
    def layout(self) -> cm.RunLayout:
        return cm.RunLayout(self.cfg.output, self.run_id)

    def identity(self) -> dict[str, Any]:
        c = self.cfg
        return {
            "generator": [self.generator.name, self.generator.version],
            "fusion": [self.fusion.name, self.fusion.version],
            "contract_digest": self.pair.contract.digest,
            "gene_panel_digest": self.pair.panel.digest,
            "min_tissue": c.min_tissue,
            "n_samples": c.n_samples,
            "seed": c.seed,
            "write_features": c.write_features,
            "features_run": self.features_run,
        }


def _latest_features_run(output: str, contract: FeatureContract) -> str:
    runs = tio.complete_runs(output)
    if not runs:
        raise ConfigError(f"reuse_features: {output} holds no complete run to take features from")
    table = tio.read_runs(output)
    rows = [
        r
        for r in table.to_pylist()
        if r["features_written"] and r["contract_digest"] == contract.digest
    ]
    if not rows:
        raise ConfigError(
            f"reuse_features: no complete run in {output} stored features with the models' "
            f"contract ({contract.describe()}); score once with write_features"
        )
    return str(max(rows, key=lambda r: r["finished_at"])[tio.PARTITION])


def _features_source(output: str, run: str | None, contract: FeatureContract) -> str:
    if run is None:
        return _latest_features_run(output, contract)
    if run not in tio.complete_runs(output):
        raise ConfigError(f"features_run: run {run!r} is not a complete run in {output}")
    row = tio.read_table(output, "runs", [run]).to_pylist()[0]
    if not row["features_written"]:
        raise ConfigError(f"features_run: run {run!r} did not store features")
    if row["contract_digest"] != contract.digest:
        stored = FeatureContract.from_json(row["encoder_contract"], f"run {run}")
        contract.check_matches(stored, what=f"models vs features of run {run}")
    return run


def prepare(cfg: ScoreConfig) -> Prepared:
    """Everything that can fail before a slide is read: models, their fit, storage access."""
    run_id = tio.check_run_id(cfg.run_id) if cfg.run_id is not None else new_run_id()
    access = RegistryAccess(cfg.workspace, cfg.tracking_uri)
    gen = resolve_model(cfg.generator, "generator", access)
    fus = resolve_model(cfg.fusion, "fusion", access)
    pair = check_pair(gen, fus)
    lineage = Lineage(
        generator_model=gen.name,
        generator_version=gen.version,
        fusion_model=fus.name,
        fusion_version=fus.version,
        encoder_contract=pair.contract.to_json(),
        contract_digest=pair.contract.digest,
    )
    storage.check_access(cfg.output, write=True, retry=cfg.retry)
    storage.check_access(cfg.archive, write=False, retry=cfg.retry)
    features_run = None
    index: dict[str, tuple[str, int]] = {}
    if cfg.reuse_features:
        features_run = _features_source(cfg.output, cfg.features_run, pair.contract)
        index = tio.feature_index(cfg.output, features_run)
    return Prepared(cfg, run_id, gen, fus, pair, lineage, features_run, index)


def _inputs(p: Prepared) -> Callable[[], Sequence[SlideSource]]:
    cfg = p.cfg
    return lambda: storage.list_archive(cfg.archive, cfg.extensions, cfg.retry)


def worker_context(p: Prepared, device: str = "auto") -> WorkerContext:
    cfg = p.cfg
    scratch = cfg.scratch_dir or os.path.join(tempfile.gettempdir(), "pathgen-scratch")
    return WorkerContext(
        output=storage.normalise(cfg.output),
        run_id=p.run_id,
        lineage=p.lineage.to_dict(),
        contract=p.pair.contract.to_dict(),
        generator=p.generator.to_dict(),
        fusion=p.fusion.to_dict(),
        workspace=cfg.workspace,
        tracking_uri=cfg.tracking_uri,
        scratch_dir=os.path.join(scratch, p.run_id),
        retry=to_dict(cfg.retry),
        min_tissue=cfg.min_tissue,
        encoder_batch_size=cfg.encoder_batch_size,
        n_samples=cfg.n_samples,
        seed=cfg.seed,
        write_features=cfg.write_features,
        device=device,
    )


# -- Ray ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Resources:
    """Actor pools and the resources each actor asks Ray for."""

    encoder_actors: int
    encoder_cpus: float
    encoder_gpus: float
    scorer_actors: int
    scorer_cpus: float
    scorer_gpus: float


def plan_resources(cfg: ScoreConfig, cluster: dict[str, float]) -> Resources:
    """Actor pool sizes from the config, filling what it leaves open from the cluster's
    resources: with GPUs, one encoder per GPU sharing it with the scorer (0.5 GPU each);
    without, one encoder per CPU (0.75 CPU each) beside a light scorer (0.25 CPU)."""
    cpus = max(1.0, float(cluster.get("CPU", 1.0)))
    gpus = float(cluster.get("GPU", 0.0))
    if gpus >= 1:
        enc_gpus = 0.5 if cfg.encoder_num_gpus is None else cfg.encoder_num_gpus
        sc_gpus = 0.5 if cfg.scorer_num_gpus is None else cfg.scorer_num_gpus
        n_enc = cfg.encoder_actors or max(1, int(gpus))
        sc_cpus = 1.0 if cfg.scorer_num_cpus is None else cfg.scorer_num_cpus
        spare = max(1.0, (cpus - sc_cpus * cfg.scorer_actors) / n_enc)
        enc_cpus = min(4.0, spare) if cfg.encoder_num_cpus is None else cfg.encoder_num_cpus
    else:
        enc_gpus = cfg.encoder_num_gpus or 0.0
        sc_gpus = cfg.scorer_num_gpus or 0.0
        n_enc = cfg.encoder_actors or max(1, math.floor(cpus))
        sc_cpus = 0.25 if cfg.scorer_num_cpus is None else cfg.scorer_num_cpus
        enc_cpus = 0.75 if cfg.encoder_num_cpus is None else cfg.encoder_num_cpus
    return Resources(n_enc, enc_cpus, enc_gpus, cfg.scorer_actors, sc_cpus, sc_gpus)


def _connect(cfg: ScoreConfig) -> tuple[Any, bool]:
    """(the ray module, whether this call started Ray and must shut it down)."""
    os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
    import ray

    if ray.is_initialized():
        return ray, False
    forward = {
        k: os.environ[k] for k in ("AWS_ENDPOINT_URL", "AWS_DEFAULT_REGION") if k in os.environ
    }
    runtime_env = {"env_vars": forward} if forward else None
    address = cfg.ray_address or os.environ.get("RAY_ADDRESS")
    try:
        if address:  # an existing cluster (also inside `ray job submit`, which sets RAY_ADDRESS)
            ray.init(address=address, runtime_env=runtime_env, log_to_driver=False)
        else:
            ray.init(
                num_cpus=cfg.num_cpus,
                include_dashboard=False,
                log_to_driver=False,
                runtime_env=runtime_env,
            )
    except (ConnectionError, RuntimeError, ValueError) as e:
        where = address or "a local instance"
        raise ConfigError(f"Ray: cannot connect to {storage.redact(where)} ({e})") from e
    return ray, True


def _data_context(ray: Any) -> None:
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    ctx.enable_auto_log_stats = False
    ctx.actor_task_retry_on_errors = [StorageError]


def _pipeline(
    ray: Any,
    p: Prepared,
    wctx: WorkerContext,
    pending: Sequence[SlideSource],
    res: Resources,
) -> Any:
    rows = jobs_batch(pending)
    if p.cfg.reuse_features:
        for r in rows:
            uri, group = p.feature_index.get(r["slide_id"], ("", -1))
            r["feature_uri"], r["feature_group"] = uri, group
    ds = ray.data.from_items(rows, override_num_blocks=max(1, len(rows)))
    if p.cfg.reuse_features:
        ds = ds.map_batches(
            FeatureReader,
            fn_constructor_kwargs={"ctx": wctx.to_dict()},
            batch_size=1,
            compute=ray.data.ActorPoolStrategy(size=res.encoder_actors),
            num_cpus=res.encoder_cpus,
        )
    else:
        ds = ds.map_batches(
            TileEncoder,
            fn_constructor_kwargs={"ctx": wctx.to_dict()},
            batch_size=1,
            compute=ray.data.ActorPoolStrategy(size=res.encoder_actors),
            num_cpus=res.encoder_cpus,
            num_gpus=res.encoder_gpus,
        )
    return ds.map_batches(
        SlideScorer,
        fn_constructor_kwargs={"ctx": wctx.to_dict()},
        batch_size=p.cfg.scorer_batch_size,
        compute=ray.data.ActorPoolStrategy(size=res.scorer_actors),
        num_cpus=res.scorer_cpus,
        num_gpus=res.scorer_gpus,
    )


def _consume(
    ds: Any,
    prog: Progress,
    totals: dict[str, float],
    report: Callable[[Progress], None] | None,
    every_s: float,
) -> None:
    last = time.monotonic()
    for row in ds.iter_rows():
        status = str(row["status"])
        if status == SCORED:
            prog.scored += 1
            prog.tiles += int(row["n_tiles"])
        elif status == FAILED:
            prog.failed += 1
        elif status == SKIPPED:
            prog.skipped += 1
        elif status == ENCODED:  # cannot happen: the scorer turns every encoded row
            raise DataError(f"slide {row['slide_id']}: left the pipeline unscored")
        for k in STAGE_KEYS:
            totals[k] = totals.get(k, 0.0) + float(row.get(k, 0.0))
        if report is not None and time.monotonic() - last >= every_s:
            report(prog)
            last = time.monotonic()


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
    state = cm.RunState.begin(layout, p.identity(), _inputs(p), retry)
    if state.resumed and state.is_complete():
        return _complete_summary(p, tables, time.perf_counter() - t0)
    totals: dict[str, float] = {}
    passes = 0
    pending = state.pending()
    last_error = "not processed"
    if pending:
        ray, owned = _connect(cfg)
        try:
            _data_context(ray)
            from ray.data.exceptions import SystemException

            pass_errors = (ray.exceptions.RayError, SystemException)
            res = plan_resources(cfg, ray.cluster_resources())
            wctx = worker_context(p)
            log.info(
                "run %s: %d of %d slide(s) to score; %s",
                p.run_id,
                len(pending),
                len(state.inputs),
                res,
            )
            while pending and passes < cfg.max_passes:
                passes += 1
                prog = Progress(total=len(pending))
                try:
                    _consume(
                        _pipeline(ray, p, wctx, pending, res),
                        prog,
                        totals,
                        progress,
                        cfg.progress_every_s,
                    )
                except pass_errors as e:
                    last_error = (
                        f"pass {passes} ended on {type(e).__name__}: "
                        + (str(e).strip().splitlines() or [""])[0][:500]
                    )
                    log.warning("run %s: %s", p.run_id, last_error)
                if progress is not None:
                    progress(prog)
                pending = state.pending()
        finally:
            if owned:
                ray.shutdown()
    if pending:
        cm.fail_leftovers(state, p.lineage, last_error, retry)

    def runs_record(n_scored: int, n_failed: int, n_tiles: int) -> dict[str, Any]:
        return {
            "status": "complete",
            "started_at": started.isoformat(),
            "finished_at": dt.datetime.now(dt.timezone.utc).isoformat(),
            "archive": storage.redact(cfg.archive),
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
                    **{k: round(v, 3) for k, v in totals.items()},
                    "passes": passes,
                    "wall_s": round(time.perf_counter() - t0, 3),
                }
            ),
            "config_json": storage.redact(json.dumps(to_dict(cfg), sort_keys=True)),
            "code_version": __version__,
            **p.lineage.to_dict(),
        }

    dim = p.pair.contract.dim if cfg.write_features else None
    done = cm.consolidate(state, runs_record, dim, retry, tmp_dir=None)
    return RunSummary(
        run_id=p.run_id,
        output=cfg.output,
        n_slides=len(state.inputs),
        n_scored=done.n_scored,
        n_failed=done.n_failed,
        n_tiles=done.n_tiles,
        seconds=time.perf_counter() - t0,
        stage_seconds={k.removesuffix("_s"): round(v, 2) for k, v in totals.items()},
        tables=tables,
        passes=passes,
        resumed=state.resumed,
    )


def _complete_summary(p: Prepared, tables: dict[str, str], seconds: float) -> RunSummary:
    row = tio.read_table(p.cfg.output, "runs", [p.run_id]).to_pylist()[0]
    timings = json.loads(row["timings_json"])
    stage = {k.removesuffix("_s"): float(v) for k, v in timings.items() if k in STAGE_KEYS}
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
        stage_seconds=stage,
        tables=tables,
        already_complete=True,
    )
