"""The batch scorer, measured fairly: the Ray job against the plain loop at the same CPU count,
start-up apart from steady state, scale-out over two nodes, re-scoring, memory.

Tiny generator/fusion bundles are trained on a small synthetic cohort; the archive scored is a
second synthetic cohort of larger slides (pyramidal TIFFs textured from real H&E), tiled at the
encoder's default tile size. The whole benchmark (and every Ray it starts) runs on the first
``--cpus`` cores of the machine (CPU affinity), and torch runs one thread per core it has: the
loop ``--cpus`` threads, each encoder actor one per CPU it reserves. In one run:

1. efficiency: the same stages (``TileEncoder`` then ``SlideScorer``) called one slide after the
   other in this process (``pathgen_batch.batch.run_serial``; models loaded before the clock
   starts) against the Ray job (a fresh local Ray with ``--cpus`` CPUs) over the same 4N slides.
   The loop's steady state is the second half of its slides (tiles over the time they took);
   the job's is its encoder actors' rate while busy (tiles over their summed download, tile
   and encode seconds, per actor: they run in parallel; the scorer, on no reserved CPU,
   slows them where it takes their cores): the driver sees slides in bursts while the scorer
   catches up after its start. The job's start-up is its wall time less what its tiles take
   at that rate (Ray, actors, models, gaps, consolidation). ``efficiency`` compares steady
   tiles/s per core; on a machine shared with other work the line above it compares tiles
   per CPU-second of all the run's processes (Ray's own and start-up included), which the
   other work disturbs less;
2. memory: peak resident memory of the whole job (driver, Ray's processes and workers, summed,
   sampled every 20 ms) scoring 4N slides against N slides, each in a fresh Ray;
3. re-scoring: the 4N slides from the ``features`` table the 4N run stored, in a fresh Ray
   (start-up included), against scoring them from the slides (start-up included);
4. scale-out: a local cluster of two ``ray start`` nodes on 127.0.0.1 with 1 CPU each against
   one such node, same archive (steady-state tiles/s, two nodes over one). Each node runs on a
   core of its own, its raylet and workers included, and the driver on the head node's core:
   a node is a one-core machine, so the second node brings a core and its own overheads,
   as a node of a real cluster does (unpinned, the one-node run would borrow the idle second
   core for Ray's processes, the scorer and the driver).

Also printed: CPU seconds per process kind during the 4N job (where the cores went) and the
run summary. The last five lines are the ratios. The defaults (N = 8: 32 slides of 2048 px,
about 1,000 tiles of 256 px) take about seven minutes on 2 shared cores, set-up included::

    python benchmarks/bench_batch.py                           # 32 slides of 2048 px
    python benchmarks/bench_batch.py --n 16 --slide-px 4096    # 64 slides of 4096 px
    python benchmarks/bench_batch.py --n 2 --no-scale-out      # a quick look
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


# -- set-up ---------------------------------------------------------------------------------
def train_bundles(root: Path, tile_px: int) -> None:
    """Tiny bundles trained on 16 small synthetic slides (features of ``tile_px`` tiles)."""
    from pathgen_batch.features import build_encoder, extract_slides
    from pathgen_batch.inference.bundle import save_fusion, save_generator
    from pathgen_batch.synth import CohortConfig, build_cohort
    from pathgen_batch.training.data import load_training_data
    from pathgen_batch.training.tiny import tiny_configs, train_tiny

    cfg = CohortConfig(mode="synthetic", n_patients=16, n_genes=48, slide_px=1024, folds=2)
    cohort = build_cohort(root / "train-cohort", cfg, workers=os.cpu_count())
    enc = build_encoder("stain-texture", options={"tile_px": tile_px})
    slides = {s: cohort.slide_path(s) for s in cohort.slide_ids}
    extract_slides(slides, root / "train-features", enc)
    data = load_training_data(root / "train-cohort", root / "train-features")
    configs = tiny_configs(width=32, num_timesteps=100, steps=10, n_samples=3)
    gen, fus = train_tiny(data, n_train=11, configs=configs)
    save_generator(gen, root / "gen", overwrite=True)
    save_fusion(fus, root / "fus", overwrite=True)


def big_slides(root: Path, n: int, slide_px: int) -> list[Path]:
    """``n`` synthetic slides of ``slide_px`` px (same genes, so the same panel size)."""
    from pathgen_batch.synth import CohortConfig, build_cohort

    cfg = CohortConfig(
        mode="synthetic", n_patients=max(n, 2), n_genes=48, slide_px=slide_px, folds=2, seed=1
    )
    cohort = build_cohort(root / "archive-cohort", cfg, workers=os.cpu_count())
    return [cohort.slide_path(s) for s in cohort.slide_ids]


def archive(folder: Path, slides: list[Path], n: int) -> Path:
    """A folder of ``n`` slides (hard links; slide files repeat when n exceeds the cohort)."""
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    for i in range(n):
        os.link(slides[i % len(slides)], folder / f"b{i:04d}.tiff")
    return folder


# -- measurement helpers --------------------------------------------------------------------
def _proc_table() -> dict[int, tuple[int, float]]:
    """pid -> (parent pid, CPU seconds so far) of every process."""
    tick = os.sysconf("SC_CLK_TCK")
    out = {}
    for p in Path("/proc").iterdir():
        if not p.name.isdigit():
            continue
        try:
            f = (p / "stat").read_text().rsplit(")", 1)[1].split()
            out[int(p.name)] = (int(f[1]), (int(f[11]) + int(f[12])) / tick)
        except (OSError, IndexError, ValueError):
            continue
    return out


def _tree(root: int, table: dict[int, tuple[int, float]]) -> set[int]:
    out, todo = {root}, [root]
    while todo:
        q = todo.pop()
        kids = [c for c, (par, _) in table.items() if par == q and c not in out]
        out.update(kids)
        todo.extend(kids)
    return out


def _rss_kb(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def _kind(pid: int) -> str:
    """What a process of the job is, from its title."""
    try:
        cmd = (
            Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        )
    except OSError:
        return "gone"
    if pid == os.getpid():
        return "driver (this process)"
    for needle, kind in (
        ("TileEncoder", "encoder actors"),
        ("FeatureReader", "feature reader actors"),
        ("SlideScorer", "scorer actors"),
        ("raylet", "raylet"),
        ("gcs_server", "gcs"),
        ("ray::IDLE", "idle workers"),
    ):
        if needle in cmd:
            return kind
    return "other Ray processes"


class JobSampler:
    """Peak of the summed RSS of a set of processes (this one and its descendants, or those
    whose command line names ``marker``), and the CPU seconds each kind of process spent."""

    def __init__(self, marker: str | None = None, every_s: float = 0.02) -> None:
        self.every_s = every_s
        self.marker = marker
        self.peak_kb = 0
        self.cpu: dict[int, float] = {}
        self.kinds: dict[int, str] = {}
        self._first: dict[int, float] = {}
        self.series: list[tuple[float, float]] = []  # (perf_counter, CPU seconds so far)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _pids(self, table: dict[int, tuple[int, float]]) -> set[int]:
        if self.marker is None:
            return _tree(os.getpid(), table)
        roots = set()
        for pid in table:
            with contextlib.suppress(OSError):
                if self.marker.encode() in Path(f"/proc/{pid}/cmdline").read_bytes():
                    roots.add(pid)
        return {p for r in roots for p in _tree(r, table)} | {os.getpid()}

    def _sample_cpu(self, table: dict[int, tuple[int, float]], pids: set[int]) -> None:
        for p in pids:
            if p in table:
                self.cpu[p] = table[p][1]
                kind = _kind(p)  # an idle worker becomes an actor
                if kind != "gone":
                    self.kinds[p] = kind
        total = sum(s - self._first.get(p, 0.0) for p, s in self.cpu.items())
        self.series.append((time.perf_counter(), total))

    def cpu_between(self, t1: float, t2: float) -> float:
        """CPU seconds all the processes spent between two ``perf_counter`` times."""
        ts, cs = zip(*self.series, strict=True) if self.series else ((0.0,), (0.0,))
        return float(np.interp(t2, ts, cs) - np.interp(t1, ts, cs))

    def _run(self) -> None:
        table = _proc_table()
        pids = self._pids(table)
        self._first = {p: table[p][1] for p in pids if p in table}
        self._sample_cpu(table, pids)
        last = time.monotonic()
        while not self._stop.is_set():
            if time.monotonic() - last > 0.5:  # new workers appear during the run
                table = _proc_table()
                pids = self._pids(table)
                self._sample_cpu(table, pids)
                last = time.monotonic()
            self.peak_kb = max(self.peak_kb, sum(_rss_kb(p) for p in pids))
            time.sleep(self.every_s)
        table = _proc_table()
        self._sample_cpu(table, pids)

    def cpu_by_kind(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for p, s in self.cpu.items():
            k = self.kinds.get(p, "other Ray processes")
            out[k] = out.get(k, 0.0) + s - self._first.get(p, 0.0)
        return dict(sorted(out.items(), key=lambda kv: -kv[1]))

    def __enter__(self) -> JobSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


@dataclass
class Finishes:
    """When each slide left a run, and the tiles done by then."""

    t0: float = field(default_factory=time.perf_counter)
    stamps: list[tuple[float, int]] = field(default_factory=list)
    wall: float = 0.0
    busy_rate: float | None = None  # tiles/s of the encoder actors while busy

    @property
    def tiles(self) -> int:
        return self.stamps[-1][1] if self.stamps else 0

    def steady_window(self) -> tuple[float, float, int]:
        """(start, end, tiles) of the second half of the slides."""
        if len(self.stamps) < 4:
            return self.t0, self.t0 + self.wall, self.tiles
        (t1, n1), (t2, n2) = self.stamps[len(self.stamps) // 2 - 1], self.stamps[-1]
        return t1, t2, n2 - n1

    def steady_tiles_per_s(self) -> float:
        """The pipeline's rate once it runs: the encoder actors' (their busy time from the
        run's stage times) when known, else the second half of the slides' (the loop)."""
        if self.busy_rate is not None:
            return self.busy_rate
        t1, t2, n = self.steady_window()
        return n / (t2 - t1) if t2 > t1 else 0.0

    def tiles_per_cpu_s(self, sampler: JobSampler) -> float:
        """Tiles per CPU-second of every process of the run (this one, Ray's system
        processes, the actors), start-up included: what a core's worth of work bought."""
        cpu = sampler.cpu_between(self.t0, self.t0 + self.wall)
        return self.tiles / cpu if cpu > 0 else 0.0

    def relative(self) -> list[tuple[float, int]]:
        return [(round(t - self.t0, 3), n) for t, n in self.stamps]

    def startup_s(self) -> float:
        """Wall time beyond what the run's tiles take at its steady rate."""
        rate = self.steady_tiles_per_s()
        return self.wall - (self.tiles / rate if rate > 0 else 0.0)


def timed_job(cfg: Any) -> tuple[Any, Finishes]:
    """Run the Ray job with a progress call after every slide."""
    from pathgen_batch.batch import score_archive

    fin = Finishes()
    seen: dict[str, Any] = {"pass": None, "n": 0, "before": 0, "tiles": 0}

    def on_progress(p: Any) -> None:
        if p is not seen["pass"]:  # a new pass counts from zero
            seen.update({"pass": p, "n": 0, "before": seen["before"] + seen["tiles"]})
        seen["tiles"] = p.tiles
        if p.done > seen["n"]:  # called after every row (progress_every_s tiny)
            fin.stamps.append((time.perf_counter(), seen["before"] + p.tiles))
            seen["n"] = p.done

    fin.t0 = time.perf_counter()
    summary = score_archive(replace(cfg, progress_every_s=1e-6), progress=on_progress)
    fin.wall = time.perf_counter() - fin.t0
    if summary.stage_times is not None:
        t = summary.stage_times
        busy = (t.download + t.tiles + t.encode) / summary.encoder_actors  # in parallel
        fin.busy_rate = summary.n_tiles / busy if busy > 0 else None
    return summary, fin


def serial_loop(cfg: Any, threads: int) -> Finishes:
    """The same stages in this process, torch on ``threads`` threads."""
    import torch

    from pathgen_batch import storage
    from pathgen_batch.batch import commit as cm
    from pathgen_batch.batch import run_serial
    from pathgen_batch.batch.encode_stage import TileEncoder
    from pathgen_batch.batch.prepare import prepare, worker_context
    from pathgen_batch.batch.score_stage import SlideScorer

    torch.set_num_threads(threads)
    p = prepare(cfg)
    sources = storage.list_archive(cfg.archive)
    cm.RunState.begin(p.layout, p.identity(), lambda: sources, cfg.retry)
    ctx = replace(worker_context(p), threads=threads)
    enc, scorer = TileEncoder(ctx), SlideScorer(ctx)  # loaded before the clock starts
    fin = Finishes()
    tiles = {"n": 0}

    def on_row(row: Any) -> None:
        tiles["n"] += row.n_tiles
        fin.stamps.append((time.perf_counter(), tiles["n"]))

    for row in run_serial(enc, scorer, sources):
        on_row(row)
    fin.wall = time.perf_counter() - fin.t0
    return fin


# -- a local Ray cluster of `ray start` nodes -------------------------------------------------
@contextlib.contextmanager
def pinned(cores: list[int]) -> Iterator[None]:
    """This process (and what it starts) on ``cores`` for the block (where the OS allows)."""
    if not hasattr(os, "sched_setaffinity"):
        yield
        return
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, cores)
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


@contextlib.contextmanager
def local_cluster(nodes: int, cpus_per_node: int = 1) -> Iterator[str]:
    """``nodes`` ``ray start`` nodes on 127.0.0.1 (the first the head); yields its address.
    Node i and every process it starts (raylet, workers, actors) run on the i-th core of this
    process's cores, as if each node were a machine of ``cpus_per_node`` core(s) of its own
    (the driver is pinned to the head's core by the caller). Every process of the cluster is
    found by its temp dir and ended by its id."""
    ray_bin = str(Path(sys.executable).parent / "ray")
    temp = f"/tmp/ray_bench_{os.getpid()}_{nodes}"
    port = free_port()
    head = [f"--port={port}", f"--temp-dir={temp}", "--include-dashboard=false"]
    common = [
        f"--num-cpus={cpus_per_node}",
        "--node-ip-address=127.0.0.1",
        "--disable-usage-stats",
        "--object-store-memory=300000000",
    ]
    cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    if cores and len(cores) < nodes * cpus_per_node:
        raise SystemExit(f"{nodes} node(s) of {cpus_per_node} core(s): only {len(cores)} here")

    def node_cores(i: int) -> list[int]:
        return cores[i * cpus_per_node : (i + 1) * cpus_per_node]

    try:
        for i in range(nodes):
            where = [*head] if i == 0 else [f"--address=127.0.0.1:{port}"]
            with pinned(node_cores(i)) if cores else contextlib.nullcontext():
                subprocess.run(
                    [ray_bin, "start", *(["--head"] if i == 0 else []), *where, *common],
                    check=True,
                    capture_output=True,
                    timeout=300,
                )
        yield f"127.0.0.1:{port}"
    finally:
        table = _proc_table()
        mine: set[int] = set()
        for pid in table:
            with contextlib.suppress(OSError):
                if temp.encode() in Path(f"/proc/{pid}/cmdline").read_bytes():
                    mine |= _tree(pid, table)
        mine.discard(os.getpid())
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for pid in mine:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, sig)
            time.sleep(3)
        shutil.rmtree(temp, ignore_errors=True)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--n", type=int, default=8, help="slides of the small archive (N; 4N scored)")
    ap.add_argument("--slide-px", type=int, default=2048)
    ap.add_argument("--tile-px", type=int, default=None, help="[the encoder's default]")
    ap.add_argument("--cpus", type=int, default=2)
    ap.add_argument("--no-scale-out", action="store_true", help="skip the two-node cluster")
    ap.add_argument("--ray-stats", action="store_true", help="print Ray Data's stats of the job")
    ap.add_argument("--workdir", default=None, help="keeps bundles and slides between runs")
    args = ap.parse_args(argv)
    if args.n < 1 or args.cpus < 1:
        ap.error("--n and --cpus must be >= 1")
    if hasattr(os, "sched_setaffinity"):  # the loop and every Ray process on --cpus cores
        cores = sorted(os.sched_getaffinity(0))
        if len(cores) < args.cpus:
            ap.error(f"--cpus {args.cpus}: this process may use {len(cores)} core(s)")
        os.sched_setaffinity(0, cores[: args.cpus])

    from pathgen_batch.batch import ScoreConfig
    from pathgen_batch.features.stain import StainTextureConfig

    tile_px = args.tile_px or StainTextureConfig().tile_px
    root = Path(args.workdir or tempfile.mkdtemp(prefix="bench-batch-"))
    root.mkdir(parents=True, exist_ok=True)
    n4 = 4 * args.n
    t = time.perf_counter()
    stamp = root / f"setup-{tile_px}-{args.slide_px}-{n4}"
    if not stamp.exists():
        for d in ("train-cohort", "train-features", "gen", "fus", "archive-cohort"):
            shutil.rmtree(root / d, ignore_errors=True)
        train_bundles(root, tile_px)
        stamp.write_text("\n".join(str(p) for p in big_slides(root, n4, args.slide_px)))
    slides = [Path(line) for line in stamp.read_text().splitlines()]
    print(
        f"set-up: bundles and {len(slides)} slides of {args.slide_px} px, {tile_px} px tiles, "
        f"in {time.perf_counter() - t:.0f} s ({root}); {args.cpus} CPU core(s)",
        flush=True,
    )
    small = archive(root / "archive-n", slides, args.n)
    large = archive(root / "archive-4n", slides, n4)
    for d in root.glob("out-*"):
        shutil.rmtree(d)

    def cfg(arch: Path, out: str, run: str, **kw: Any) -> ScoreConfig:
        return ScoreConfig(
            archive=str(arch),
            output=str(root / out),
            run_id=run,
            generator=str(root / "gen"),
            fusion=str(root / "fus"),
            scratch_dir=str(root / "scratch"),
            **kw,
        )

    # 1. the plain loop over the 4N slides, then the job over the same slides
    with JobSampler() as loop_cpu:
        loop = serial_loop(cfg(large, "out-loop", "loop"), threads=args.cpus)
    loop_rate, loop_per_cpu = loop.steady_tiles_per_s(), loop.tiles_per_cpu_s(loop_cpu)
    print(
        f"plain loop ({args.cpus} reading/encoding threads, one torch thread each): {n4} "
        f"slides, {loop.tiles} tiles in "
        f"{loop.wall:.1f} s: {n4 / loop.wall * 3600:.0f} slides/h; steady "
        f"{loop_rate:.1f} tiles/s, {loop_rate / args.cpus:.1f} per core, "
        f"{loop_per_cpu:.1f} per CPU-second",
        flush=True,
    )
    local = {"num_cpus": args.cpus}
    with JobSampler() as mem:
        summary, job = timed_job(cfg(large, "out-4n", "4n", write_features=True, **local))
    peak_4n = mem.peak_kb / 1024
    job_rate, job_per_cpu = job.steady_tiles_per_s(), job.tiles_per_cpu_s(mem)
    print(
        f"ray job ({args.cpus} CPUs): {summary.n_scored} slides, {summary.n_tiles} tiles in "
        f"{job.wall:.1f} s: {summary.n_scored / job.wall * 3600:.0f} slides/h; steady "
        f"{job_rate:.1f} tiles/s, {job_rate / args.cpus:.1f} per core, {job_per_cpu:.1f} per "
        f"CPU-second; start-up {job.startup_s():.1f} s; peak {peak_4n:.0f} MiB",
        flush=True,
    )
    print(
        "  CPU seconds by process: "
        + ", ".join(f"{k} {v:.1f}" for k, v in mem.cpu_by_kind().items())
    )
    for line in summary.lines():
        print("  " + line)
    if args.ray_stats and summary.ray_stats:
        print(summary.ray_stats)

    # 2. memory: the job on N slides, in a fresh Ray
    with JobSampler() as mem:
        s_n, _ = timed_job(cfg(small, "out-n", "n", write_features=True, **local))
    peak_n = mem.peak_kb / 1024
    print(f"ray job, N = {s_n.n_scored} slides: peak {peak_n:.0f} MiB", flush=True)

    # 3. re-scoring the 4N slides from the features the 4N run stored, in a fresh Ray
    rescored, rescore = timed_job(
        cfg(large, "out-4n", "rescore", reuse_features=True, features_run="4n", **local)
    )
    print(
        f"re-scoring {rescored.n_scored} slides from stored features: {rescore.wall:.1f} s "
        f"against {job.wall:.1f} s from the slides",
        flush=True,
    )

    # 4. scale-out: one node of 1 CPU, then two
    rates: dict[int, float] = {}
    if not args.no_scale_out:
        for nodes in (1, 2):
            head_core = (
                sorted(os.sched_getaffinity(0))[:1] if hasattr(os, "sched_getaffinity") else []
            )
            with (
                local_cluster(nodes) as address,
                pinned(head_core) if head_core else contextlib.nullcontext(),
            ):
                s, fin = timed_job(
                    cfg(large, f"out-nodes{nodes}", f"nodes{nodes}", ray_address=address)
                )
            rates[nodes] = fin.steady_tiles_per_s()
            print(
                f"cluster of {nodes} node(s) x 1 CPU: {s.n_scored} slides in {fin.wall:.1f} s, "
                f"steady {rates[nodes]:.1f} tiles/s",
                flush=True,
            )
    shutil.rmtree(root / "scratch", ignore_errors=True)

    with open(root / "finishes.json", "w") as f:  # for a closer look: (s since start, tiles)
        json.dump({"loop": loop.relative(), "job": job.relative()}, f)
    print(
        f"per CPU-second (whatever else ran on the machine): job / loop "
        f"{job_per_cpu / loop_per_cpu if loop_per_cpu > 0 else float('nan'):.2f}"
    )
    print("--")
    print(f"efficiency: {job_rate / loop_rate:.2f}" if loop_rate > 0 else "efficiency: nan")
    print(f"startup: {job.startup_s():.1f} s")
    print(f"scale-out: {rates[2] / rates[1]:.2f}" if rates.get(1) else "scale-out: not measured")
    print(f"rescoring: {rescore.wall / job.wall:.3f}")
    print(f"memory: {peak_4n / peak_n:.3f}")


if __name__ == "__main__":
    main()
