"""One slide of real size, written and scored in bounded memory.

Writes a pyramidal Aperio-style TIFF of ``--slide-px`` square (default 100,000 px at
0.25 um/px, a 40x scan of 25 mm) with :func:`pathgen_batch.synth.writer.write_pyramidal_tiff_tiles`
(strips of real H&E texture inside a large tissue ellipse, glass around it), then runs the
scorer's encoder stage on it: :func:`pathgen_batch.features.encode_slide.encode_slide` (tissue
mask, tile grid at the encoder's MPP, tile reads, encoder) with the ``stain-texture`` encoder.
Each phase runs in its own process so that its peak resident memory (``ru_maxrss``) is its own:
the writer's and one encoder actor's.

    python benchmarks/bench_large_slide.py                    # 100,000 px: minutes
    python benchmarks/bench_large_slide.py --slide-px 32768   # a quicker look
    python benchmarks/bench_large_slide.py --workers 2         # two cores on the one slide

Progress lines (tiles done, tiles/s, resident memory) go to stderr every 5 s; the last line
gives the resident memory's growth per 1,000 tiles from the first quarter of the tiles (when
the batches in flight, at most ``2 * workers``, are all allocated) to the end.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from pathgen_batch.assets import he_texture_sources
from pathgen_batch.features import build_encoder
from pathgen_batch.features.encode_slide import SlideProgress, encode_slide, spec_for
from pathgen_batch.synth.writer import Strips, write_pyramidal_tiff_tiles

GLASS = np.array([236, 234, 238], dtype=np.uint8)


def _atlas() -> np.ndarray:
    """(2000, 2000, 3) uint8 of real H&E (the tiatoolbox image and its mirror images)."""
    _, png = he_texture_sources()
    tia = np.asarray(Image.open(png).convert("RGB"))  # (1000, 1000, 3)
    top = np.concatenate([tia, tia[:, ::-1]], axis=1)
    return np.concatenate([top, top[::-1]], axis=0)


def strips_of(size: int) -> Strips:
    """Rows of a ``size`` square slide: H&E texture inside an ellipse covering ~55% of it."""
    atlas = _atlas()
    ah, aw = atlas.shape[:2]
    cols = np.arange(size)
    u = (cols - size / 2) / (0.45 * size)  # (W,)

    def strips(r0: int, n: int) -> np.ndarray:
        rows = np.arange(r0, r0 + n)
        v = (rows - size / 2) / (0.40 * size)  # (n,)
        inside = u[None, :] ** 2 + v[:, None] ** 2 < 1.0  # (n, W)
        tex = atlas[(rows % ah)[:, None], (cols % aw)[None, :]]  # (n, W, 3)
        return np.where(inside[..., None], tex, GLASS)

    return strips


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def write_phase(path: Path, size: int, mpp: float) -> dict[str, float]:
    t0 = time.perf_counter()
    dims = write_pyramidal_tiff_tiles(
        path, size, size, strips_of(size), mpp=mpp, magnification=40, levels=4, downsample=4
    )
    return {
        "write_s": time.perf_counter() - t0,
        "file_mib": path.stat().st_size / 2**20,
        "levels": len(dims),
        "write_peak_mib": _peak_mib(),
    }


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def encode_phase(path: Path, batch_size: int, workers: int) -> dict[str, Any]:
    if workers > 1:  # one torch thread per worker, as the scorer's CPU encoder actors run
        torch.set_num_threads(1)
    enc = build_encoder("stain-texture")
    trace: list[tuple[int, float, float]] = []  # (tiles done, seconds, resident MiB)

    def progress(p: SlideProgress) -> None:
        trace.append((p.done, p.seconds, _rss_mib()))
        print(f"{p.line()}, resident {trace[-1][2]:,.0f} MiB", file=sys.stderr, flush=True)

    t0, c0 = time.perf_counter(), time.process_time()
    got = encode_slide(
        path,
        enc,
        spec_for(enc, 0.5),
        batch_size=batch_size,
        workers=workers,
        on_progress=progress,
        progress_every_s=5.0,
    )
    s, cpu = time.perf_counter() - t0, time.process_time() - c0
    n = len(got.grid)
    return {
        "tiles": n,
        "candidates": got.grid.n_candidates,
        "encode_s": s,
        "cpu_s": cpu,
        "tiles_per_s": n / s,
        "encoder_s": got.encode_s,
        "actor_peak_mib": _peak_mib(),
        "encoder": enc.contract.describe(),
        "trace": trace,
    }


def _child(phase: str, args: argparse.Namespace, path: Path) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--phase", phase, "--path", str(path)]
    cmd += ["--slide-px", str(args.slide_px), "--mpp", str(args.mpp)]
    cmd += ["--batch-size", str(args.batch_size), "--workers", str(args.workers)]
    out = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True).stdout
    return dict(json.loads(out.strip().splitlines()[-1]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--slide-px", type=int, default=100_000)
    ap.add_argument("--mpp", type=float, default=0.25)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument(
        "--workers", type=int, default=1, help="Threads reading and encoding the slide's tiles."
    )
    ap.add_argument("--dir", type=Path, default=None, help="Where to write the slide.")
    ap.add_argument("--phase", choices=["write", "encode"], default=None)
    ap.add_argument("--path", type=Path, default=None)
    args = ap.parse_args()
    if args.phase == "write":
        print(json.dumps(write_phase(args.path, args.slide_px, args.mpp)))
        return
    if args.phase == "encode":
        print(json.dumps(encode_phase(args.path, args.batch_size, args.workers)))
        return
    with tempfile.TemporaryDirectory(dir=args.dir) as d:
        path = Path(d) / "large.svs"
        w = _child("write", args, path)
        print(
            f"write: {args.slide_px:,} px square at {args.mpp} um/px, {w['levels']:.0f} levels, "
            f"{w['file_mib']:,.0f} MiB in {w['write_s']:.1f} s, peak {w['write_peak_mib']:,.0f} MiB"
        )
        e = _child("encode", args, path)
        print(
            f"score (encoder stage, {e['encoder']}, {args.workers} worker(s)): "
            f"{e['tiles']:,.0f} of {e['candidates']:,.0f} tiles in {e['encode_s']:.1f} s = "
            f"{e['tiles_per_s']:.0f} tiles/s, {e['tiles'] / e['cpu_s']:.0f} tiles/CPU-s "
            f"(encoder {e['encoder_s']:.1f} s), actor peak {e['actor_peak_mib']:,.0f} MiB"
        )
        warm = [t for t in e["trace"] if t[0] >= e["tiles"] / 4]  # batches in flight by then
        if len(warm) >= 2:
            first, last = warm[0], warm[-1]
            per_k = (last[2] - first[2]) / max(last[0] - first[0], 1) * 1000
            print(
                f"resident memory: {e['trace'][0][2]:,.0f} MiB at {e['trace'][0][0]:,} tiles, "
                f"{first[2]:,.0f} MiB at {first[0]:,}, {last[2]:,.0f} MiB at {last[0]:,} "
                f"({per_k:+.1f} MiB per 1,000 tiles after the first quarter)"
            )


if __name__ == "__main__":
    main()
