"""Ray: connecting, sizing the actor pools, and one pass of the Ray Data pipeline.

::

    from_items(slide URIs)              driver: locations only, one block per slide
      -> map_batches(TileEncoder)        actor pool, the cores: stage, tile, encode (GPU if any)
      -> map_batches(SlideScorer)        actor pool, no CPU reserved: generator, fusion,
                                         conformal, attention; per-slide files and the commit
      -> iter_rows()                     driver: one small status row per slide

Re-scoring runs one pool instead (:class:`.score_stage.StoredBagScorer`: stored bag read and
scored in one actor).

Ray is imported only here (lazily, when a run has slides to score).
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from pathgen_batch import storage
from pathgen_batch.batch.config import ScoreConfig
from pathgen_batch.batch.encode_stage import TileEncoder
from pathgen_batch.batch.prepare import Prepared
from pathgen_batch.batch.score_stage import SlideScorer, StoredBagScorer
from pathgen_batch.batch.stage_rows import from_ray_row, input_rows
from pathgen_batch.batch.stages import WorkerContext
from pathgen_batch.batch.summary import Progress
from pathgen_batch.errors import ConfigError
from pathgen_batch.storage import SlideSource, StorageError


@dataclass(frozen=True)
class Resources:
    """Actor pools, the resources each actor asks Ray for, and its torch threads."""

    encoder_actors: int
    encoder_cpus: float
    encoder_gpus: float
    scorer_actors: int
    scorer_cpus: float
    scorer_gpus: float

    @property
    def encoder_threads(self) -> int:
        """One torch thread per CPU an encoder reserves (at least one)."""
        return max(1, math.floor(self.encoder_cpus))


def plan_resources(
    cfg: ScoreConfig, cluster: dict[str, float], n_slides: int | None = None
) -> Resources:
    """Actor pool sizes from the config, filling what it leaves open from the cluster's
    resources, with no more actors in a pool than ``n_slides`` (an actor that gets no slide
    only costs its start-up). The encoders get the cores: with GPUs, one encoder per GPU (0.5
    GPU, the CPUs split between them, up to 4 each for decoding); without, one encoder per CPU
    (1 CPU each; fewer slides than CPUs: the CPUs split between the encoders).
    The scorer reserves no CPU (0.5 GPU with GPUs): it works between the encoders' slides, on
    the cores they leave idle, and takes from them only the time its work needs."""
    cpus = max(1.0, float(cluster.get("CPU", 1.0)))
    gpus = float(cluster.get("GPU", 0.0))
    sc_cpus = 0.0 if cfg.scorer_num_cpus is None else cfg.scorer_num_cpus
    cap = n_slides if n_slides is not None else 1 << 30
    n_sc = max(1, min(cfg.scorer_actors, cap))
    if gpus >= 1:
        enc_gpus = 0.5 if cfg.encoder_num_gpus is None else cfg.encoder_num_gpus
        sc_gpus = 0.5 if cfg.scorer_num_gpus is None else cfg.scorer_num_gpus
        n_enc = max(1, min(cfg.encoder_actors or max(1, int(gpus)), cap))
        spare = max(1.0, math.floor(cpus - sc_cpus * n_sc) / n_enc)
        enc_cpus = min(4.0, spare) if cfg.encoder_num_cpus is None else cfg.encoder_num_cpus
    else:
        enc_gpus = cfg.encoder_num_gpus or 0.0
        sc_gpus = cfg.scorer_num_gpus or 0.0
        n_enc = max(1, min(cfg.encoder_actors or max(1, math.floor(cpus)), cap))
        share = max(0.1, math.floor(cpus - sc_cpus * n_sc) / n_enc)
        enc_cpus = share if cfg.encoder_num_cpus is None else cfg.encoder_num_cpus
    return Resources(n_enc, enc_cpus, enc_gpus, n_sc, sc_cpus, sc_gpus)


def connect(ray_address: str | None, num_cpus: int | None = None) -> tuple[Any, bool]:
    """(the ray module, whether this call started Ray and must shut it down): the cluster at
    ``ray_address`` (else ``RAY_ADDRESS``), else a local Ray of ``num_cpus`` CPUs."""
    os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
    import ray

    if ray.is_initialized():
        return ray, False
    forward = {k: os.environ[k] for k in storage.WORKER_ENV if k in os.environ}
    forward = {k: v for k, v in forward.items() if k not in _job_env_vars()}
    runtime_env = {"env_vars": forward} if forward else None
    address = ray_address or os.environ.get("RAY_ADDRESS")
    level = _ray_log_level()
    try:
        if address:  # an existing cluster (also inside `ray job submit`, which sets RAY_ADDRESS)
            ray.init(
                address=address, runtime_env=runtime_env, log_to_driver=False, logging_level=level
            )
        else:
            ray.init(
                num_cpus=num_cpus,
                include_dashboard=False,
                log_to_driver=False,
                runtime_env=runtime_env,
                logging_level=level,
            )
    except (ConnectionError, RuntimeError, ValueError) as e:
        where = address or "a local instance"
        raise ConfigError(f"Ray: cannot connect to {storage.redact(where)} ({e})") from e
    return ray, True


def _ray_log_level() -> int:
    """Ray's own log level: INFO lines (start-up, "execution finished") only when the
    project's are shown (``-v``), else warnings and errors."""
    quiet = logging.getLogger().getEffectiveLevel() > logging.INFO
    return logging.WARNING if quiet else logging.INFO


def _job_env_vars() -> set[str]:
    """Environment variables the runtime env of a ``ray job submit`` job already sets.

    Inside a submitted job the driver's environment holds them, and Ray refuses a driver
    runtime env that names one of them again (even with the same value), so they are not
    forwarded: the job's runtime env gives them to every worker already."""
    raw = os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR")
    if not raw:
        return set()
    try:
        env_vars = (json.loads(raw).get("runtime_env") or {}).get("env_vars") or {}
    except (ValueError, AttributeError):
        return set()
    return set(env_vars)


def configure_data(ray: Any) -> None:
    """Quiet Ray Data, and let actors retry a batch on a storage error."""
    ctx = ray.data.DataContext.get_current()
    # after ray.data is imported (it configures its loggers then): its INFO lines only with -v;
    # the project turns its progress bars off itself, so no warning that they are off
    logging.getLogger("ray.data").setLevel(_ray_log_level())
    logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    ctx.enable_auto_log_stats = False
    ctx.actor_task_retry_on_errors = [StorageError]


def pass_errors(ray: Any) -> tuple[type[BaseException], ...]:
    """Errors that end a pass (a task out of retries, a lost worker or node): the slides it
    left without a commit go to the next pass."""
    from ray.data.exceptions import SystemException

    return (ray.exceptions.RayError, SystemException)


def build_pipeline(
    ray: Any,
    p: Prepared,
    wctx: WorkerContext,
    pending: Sequence[SlideSource],
    res: Resources,
) -> Any:
    """The Ray Data pipeline of one pass over ``pending`` (lazy: nothing runs until consumed).

    Scoring from slides: the encoder pool (``res.encoder_threads`` torch threads each), then
    the scorer pool (one thread). Re-scoring (``reuse_features``): one pool of
    ``res.scorer_actors`` actors (a CPU each) that read each stored bag and score it: the
    work per slide is small, so what a re-scoring run costs is mostly starting processes.
    """
    wctx = replace(wctx, log_level=logging.getLogger().getEffectiveLevel())
    enc_ctx = replace(wctx, threads=res.encoder_threads)

    if p.cfg.reuse_features:  # the bag from stored features: no slide read
        ds = ray.data.from_items(
            input_rows(pending, p.feature_index), override_num_blocks=max(1, len(pending))
        )
        return ds.map_batches(
            StoredBagScorer,
            fn_constructor_kwargs={"ctx": enc_ctx},
            batch_size=p.cfg.scorer_batch_size,
            compute=ray.data.ActorPoolStrategy(size=res.scorer_actors),
            num_cpus=min(1.0, res.encoder_cpus),
            num_gpus=res.scorer_gpus,
        )
    ds = ray.data.from_items(input_rows(pending), override_num_blocks=max(1, len(pending)))
    ds = ds.map_batches(
        TileEncoder,
        fn_constructor_kwargs={"ctx": enc_ctx},
        batch_size=1,
        compute=ray.data.ActorPoolStrategy(size=res.encoder_actors),
        num_cpus=res.encoder_cpus,
        num_gpus=res.encoder_gpus,
    )
    return ds.map_batches(
        SlideScorer,
        fn_constructor_kwargs={"ctx": replace(wctx, threads=1)},
        batch_size=p.cfg.scorer_batch_size,
        compute=ray.data.ActorPoolStrategy(size=res.scorer_actors),
        num_cpus=res.scorer_cpus,
        num_gpus=res.scorer_gpus,
    )


def consume(
    ds: Any,
    prog: Progress,
    report: Callable[[Progress], None] | None,
    every_s: float,
) -> str:
    """Run ``ds``, counting each slide's status row into ``prog``; ``report(prog)`` every
    ``every_s`` seconds. Returns Ray Data's execution stats (time and CPU per operator)."""
    prog.count_all((from_ray_row(row) for row in ds.iter_rows()), report, every_s)
    return str(ds.stats())
