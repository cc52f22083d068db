"""The batch scorer: Ray job against a plain loop, memory against archive size, re-scoring.

Tiny generator/fusion bundles are trained on a small synthetic cohort; the archive scored is a
second synthetic cohort of larger slides (pyramidal TIFFs textured from real H&E). In one run:

1. throughput: the Ray job (a fresh local Ray with ``--cpus`` CPUs, start-up included) against
   the very same stages (``TileEncoder`` then ``SlideScorer``, ``pathgen_batch.batch.run_serial``)
   called one slide after the other in this process (models loaded before the clock starts;
   torch free to use every core), over the same 4N slides;
2. memory: peak resident memory of the whole job (driver, Ray's processes and workers, summed,
   sampled every 20 ms) scoring 4N slides against N slides, each in a fresh Ray;
3. re-scoring: a run from the stored ``features`` table of the 4N run against that run.

Ratios are printed last. Defaults take about fifteen minutes on 2 CPUs::

    python benchmarks/bench_batch.py                          # N = 8 slides of 8192 px
    python benchmarks/bench_batch.py --n 4 --slide-px 2048    # a quick look
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import threading
import time
from dataclasses import replace
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
    from pathgen_batch.models.diffusion import DiffusionConfig, SamplerConfig
    from pathgen_batch.synth import CohortConfig, build_cohort
    from pathgen_batch.training.config import FusionTrainConfig, GeneratorArch, GeneratorTrainConfig
    from pathgen_batch.training.data import load_training_data
    from pathgen_batch.training.trainers import train_generator, train_predictor

    cfg = CohortConfig(mode="synthetic", n_patients=16, n_genes=48, slide_px=1024, folds=2)
    cohort = build_cohort(root / "train-cohort", cfg, workers=os.cpu_count())
    enc = build_encoder("stain-texture", options={"tile_px": tile_px})
    slides = {s: cohort.slide_path(s) for s in cohort.slide_ids}
    extract_slides(slides, root / "train-features", enc)
    data = load_training_data(root / "train-cohort", root / "train-features")
    tr, va = np.arange(11), np.arange(11, 16)
    gen = train_generator(
        data,
        tr,
        va,
        GeneratorTrainConfig(
            model=GeneratorArch(width=32, depth=1, heads=2, time_dim=32),
            diffusion=DiffusionConfig(num_timesteps=100),
            sampler=SamplerConfig(name="ddim", steps=10, n_samples=3),
            epochs=2,
            repeats=1,
            val_draws=1,
        ),
    )
    fus = train_predictor(
        data, tr, va, FusionTrainConfig(options={"width": 32, "dropout": 0.0}, n_bins=2, epochs=2)
    )
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
    folder.mkdir(parents=True)
    for i in range(n):
        os.link(slides[i % len(slides)], folder / f"b{i:04d}.tiff")
    return folder


# -- measurement helpers --------------------------------------------------------------------
def _tree(root: int) -> set[int]:
    parent: dict[int, int] = {}
    for p in Path("/proc").iterdir():
        if not p.name.isdigit():
            continue
        try:
            parent[int(p.name)] = int((p / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
    out, todo = {root}, [root]
    while todo:
        q = todo.pop()
        kids = [c for c, par in parent.items() if par == q and c not in out]
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


class PeakMemory:
    """Peak of the summed RSS of this process and all its descendants, sampled."""

    def __init__(self, every_s: float = 0.02) -> None:
        self.every_s = every_s
        self.peak_kb = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        me = os.getpid()
        pids = _tree(me)
        last = 0.0
        while not self._stop.is_set():
            if time.monotonic() - last > 0.5:  # new workers appear during the run
                pids, last = _tree(me), time.monotonic()
            self.peak_kb = max(self.peak_kb, sum(_rss_kb(p) for p in pids))
            time.sleep(self.every_s)

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def timed_job(cfg: Any) -> tuple[Any, list[float], float]:
    """Run the Ray job; (summary, finish time of each slide, wall seconds)."""
    from pathgen_batch.batch import score_archive

    stamps: list[float] = []
    seen = {"n": 0}

    def on_progress(p: Any) -> None:
        while seen["n"] < p.done:  # called after every row (progress_every_s tiny)
            stamps.append(time.perf_counter())
            seen["n"] += 1

    t0 = time.perf_counter()
    summary = score_archive(replace(cfg, progress_every_s=1e-6), progress=on_progress)
    return summary, stamps, time.perf_counter() - t0


def serial_loop(cfg: Any) -> tuple[list[float], float, int]:
    """The same stages in one process; (finish times, wall seconds, tiles)."""
    from pathgen_batch import storage
    from pathgen_batch.batch import commit as cm
    from pathgen_batch.batch import run_serial
    from pathgen_batch.batch.encode_stage import TileEncoder
    from pathgen_batch.batch.prepare import prepare, worker_context
    from pathgen_batch.batch.score_stage import SlideScorer

    p = prepare(cfg)
    sources = storage.list_archive(cfg.archive)
    cm.RunState.begin(p.layout, p.identity(), lambda: sources, cfg.retry)
    ctx = worker_context(p)
    enc, scorer = TileEncoder(ctx), SlideScorer(ctx)  # loaded before the clock starts
    stamps: list[float] = []
    t0 = time.perf_counter()
    rows = run_serial(enc, scorer, sources, on_row=lambda _: stamps.append(time.perf_counter()))
    return stamps, time.perf_counter() - t0, sum(r.n_tiles for r in rows)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--n", type=int, default=8, help="slides of the small archive (N)")
    ap.add_argument("--slide-px", type=int, default=8192)
    ap.add_argument("--tile-px", type=int, default=128)
    ap.add_argument("--cpus", type=int, default=2)
    ap.add_argument("--workdir", default=None)
    args = ap.parse_args(argv)

    import ray

    from pathgen_batch.batch import ScoreConfig

    root = Path(args.workdir or tempfile.mkdtemp(prefix="bench-batch-"))
    t = time.perf_counter()
    train_bundles(root, args.tile_px)
    slides = big_slides(root, 4 * args.n, args.slide_px)
    print(
        f"set-up: bundles and {len(slides)} slides of {args.slide_px} px in "
        f"{time.perf_counter() - t:.0f} s ({root})"
    )
    small = archive(root / "archive-n", slides, args.n)
    large = archive(root / "archive-4n", slides, 4 * args.n)

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

    # 1. the plain loop over the 4N slides
    _, loop_wall, loop_tiles = serial_loop(cfg(large, "out-loop", "loop"))
    n4 = 4 * args.n
    print(
        f"plain loop: {n4} slides, {loop_tiles} tiles in {loop_wall:.1f} s: "
        f"{n4 / loop_wall * 3600:.0f} slides/h, {loop_tiles / loop_wall:.1f} tiles/s"
    )

    # 2. the Ray job on N slides, then on the 4N slides (fresh Ray each, memory sampled),
    #    then re-scoring the 4N slides from the features the 4N run stored
    peaks: dict[str, float] = {}
    ray.init(num_cpus=args.cpus, include_dashboard=False, log_to_driver=False)
    try:
        with PeakMemory() as mem:
            s_n, _, w_n = timed_job(cfg(small, "out-n", "n", write_features=True))
        peaks["N"] = mem.peak_kb / 1024
    finally:
        ray.shutdown()
    print(f"ray job, N = {s_n.n_scored} slides: {w_n:.1f} s, peak {peaks['N']:.0f} MiB")
    ray.init(num_cpus=args.cpus, include_dashboard=False, log_to_driver=False)
    try:
        with PeakMemory() as mem:
            summary, _, wall = timed_job(cfg(large, "out-4n", "4n", write_features=True))
        peaks["4N"] = mem.peak_kb / 1024
        rescored, _, rescore_wall = timed_job(
            cfg(large, "out-4n", "rescore", reuse_features=True, features_run="4n")
        )
    finally:
        ray.shutdown()
    tiles = summary.n_tiles
    print(
        f"ray job, 4N = {summary.n_scored} slides ({args.cpus} CPUs): {tiles} tiles in "
        f"{wall:.1f} s: {summary.n_scored / wall * 3600:.0f} slides/h, "
        f"{tiles / wall / args.cpus:.1f} tiles/s per core; peak {peaks['4N']:.0f} MiB"
    )
    times = summary.stage_times.by_stage() if summary.stage_times is not None else {}
    print(f"  time per stage, summed over slides: {times}")
    print(f"re-scoring {rescored.n_scored} slides from stored features: {rescore_wall:.1f} s")
    shutil.rmtree(root / "scratch", ignore_errors=True)

    print("--")
    print(
        f"throughput, ray job / plain loop (end to end, Ray start-up included): "
        f"{loop_wall / wall:.2f}x (target >= 1.6)"
    )
    print(f"peak memory, 4N / N slides: {peaks['4N'] / peaks['N']:.3f}x (target < 1.15)")
    print(
        f"time, re-scoring from features / scoring from slides: "
        f"{rescore_wall / wall:.3f}x (target < 0.1)"
    )


if __name__ == "__main__":
    main()
