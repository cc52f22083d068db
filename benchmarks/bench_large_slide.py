"""One slide of real size, written and scored in bounded memory.

Writes a pyramidal Aperio-style TIFF of ``--slide-px`` square (default 100,000 px at
0.25 um/px, a 40x scan of 25 mm): a large tissue ellipse (about 56% of the slide) of real H&E
texture, glass around it. By default the slide is drawn from a pool of ``--pool`` tiles
(:func:`pathgen_batch.synth.tilepool.write_pooled_pyramidal_tiff`: 256 px tiles cut from the
H&E atlas and turned, one chosen at random for each tile position inside the ellipse, one
glass tile outside it), so that each distinct tile is compressed once and the writer takes
seconds per gigapixel; ``--pool 0`` renders and compresses every strip instead
(:func:`~pathgen_batch.synth.writer.write_pyramidal_tiff_tiles`, atlas rows repeating: about
ten times slower). Then runs the scorer's encoder stage on it:
:func:`pathgen_batch.features.encode_slide.encode_slide` (tissue mask, tile grid at the
encoder's MPP, tile reads, encoder) with the ``stain-texture`` encoder and ``--workers``
threads, and checks the tiles it kept against the ellipse it was given.
Each phase runs in its own process so that its peak resident memory (``ru_maxrss``) is its own:
the writer's and one encoder actor's.

    python benchmarks/bench_large_slide.py --workers 2         # 100,000 px: minutes
    python benchmarks/bench_large_slide.py --slide-px 32768   # a quicker look
    python benchmarks/bench_large_slide.py --pool 0 --slide-px 32768  # rendered strip by strip

Progress lines (tiles done, tiles/s, resident memory) go to stderr every 5 s; the last line
gives the encoder process's resident memory at the first progress line and when a quarter,
half, three quarters and all of the tiles were done (the last progress line), so that growth
with the tiles shows.
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
from pathgen_batch.synth.tilepool import TilePool, cut_tiles, write_pooled_pyramidal_tiff
from pathgen_batch.synth.writer import PyramidOptions, Strips, write_pyramidal_tiff_tiles

GLASS = np.array([236, 234, 238], dtype=np.uint8)
TILE = 256  # the writer's tile side, level-0 px
QUARTERS = (0.0, 0.25, 0.5, 0.75, 1.0)


def _atlas() -> np.ndarray:
    """(2000, 2000, 3) uint8 of real H&E (the tiatoolbox image and its mirror images)."""
    _, png = he_texture_sources()
    tia = np.asarray(Image.open(png).convert("RGB"))  # (1000, 1000, 3)
    top = np.concatenate([tia, tia[:, ::-1]], axis=1)
    return np.concatenate([top, top[::-1]], axis=0)


def inside_ellipse(size: int, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """(len(rows), len(cols)) bool: level-0 pixels inside the tissue ellipse (~56% of it)."""
    u = (cols - size / 2) / (0.45 * size)
    v = (rows - size / 2) / (0.40 * size)
    return np.asarray(u[None, :] ** 2 + v[:, None] ** 2 < 1.0)


def strips_of(size: int) -> Strips:
    """Rows of a ``size`` square slide: H&E texture inside the ellipse, glass around it."""
    atlas = _atlas()
    ah, aw = atlas.shape[:2]
    cols = np.arange(size)

    def strips(r0: int, n: int) -> np.ndarray:
        rows = np.arange(r0, r0 + n)
        inside = inside_ellipse(size, rows, cols)  # (n, W)
        tex = atlas[(rows % ah)[:, None], (cols % aw)[None, :]]  # (n, W, 3)
        return np.where(inside[..., None], tex, GLASS)

    return strips


def tissue_tiles(size: int) -> np.ndarray:
    """(n, n) bool, n = ceil(size / TILE): the writer's tiles whose centre is in the ellipse."""
    centres = np.arange(0, size, TILE) + TILE / 2
    return inside_ellipse(size, centres, centres)


def pool_of(size: int, k: int, seed: int = 0) -> TilePool:
    """Tile 0 glass, tiles 1..k cut from the atlas; each tissue position draws one of them."""
    tiles = np.concatenate(
        [np.broadcast_to(GLASS, (1, TILE, TILE, 3)), cut_tiles(_atlas(), k, TILE, seed)]
    )
    tissue = tissue_tiles(size)
    draw = np.random.default_rng(seed).integers(1, k + 1, tissue.shape, dtype=np.int32)
    return TilePool(tiles, np.where(tissue, draw, 0).astype(np.int32))


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def write_phase(path: Path, size: int, mpp: float, pool: int) -> dict[str, float]:
    before = _rss_mib()  # the interpreter, numpy, torch and the project's modules
    t0 = time.perf_counter()
    opts: PyramidOptions = {"mpp": mpp, "magnification": 40, "levels": 4, "downsample": 4}
    if pool:
        dims = write_pooled_pyramidal_tiff(path, size, size, pool_of(size, pool), **opts)
    else:
        dims = write_pyramidal_tiff_tiles(path, size, size, strips_of(size), **opts)
    return {
        "write_s": time.perf_counter() - t0,
        "file_mib": path.stat().st_size / 2**20,
        "levels": len(dims),
        "write_peak_mib": _peak_mib(),
        "write_before_mib": before,
    }


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def tissue_check(size: int, x: np.ndarray, y: np.ndarray, size_l0: int) -> dict[str, float]:
    """The kept tiles (level-0 corners ``x``, ``y``) against the ellipse's writer tiles: the
    share of kept tiles at least half on them, and the share of the grid's tiles wholly on them
    that were kept. Needs ``size_l0`` a multiple of the writer's tile (else empty)."""
    if size_l0 % TILE:
        return {}
    m = size_l0 // TILE
    tt = tissue_tiles(size)[: (size // size_l0) * m, : (size // size_l0) * m]
    n = tt.shape[0] // m
    frac = tt.reshape(n, m, n, m).mean(axis=(1, 3))  # (n, n) share of each grid tile on tissue
    kept = np.zeros((n, n), bool)
    kept[y // size_l0, x // size_l0] = True
    return {
        "kept_on_tissue": float((frac[kept] >= 0.5).mean()) if kept.any() else 0.0,
        "whole_kept": float(kept[frac == 1.0].mean()) if (frac == 1.0).any() else 0.0,
    }


def encode_phase(path: Path, size: int, batch_size: int, workers: int) -> dict[str, Any]:
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
        **tissue_check(size, got.grid.x, got.grid.y, got.grid.size_l0),
    }


def _child(phase: str, args: argparse.Namespace, path: Path) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--phase", phase, "--path", str(path)]
    cmd += ["--slide-px", str(args.slide_px), "--mpp", str(args.mpp)]
    cmd += ["--batch-size", str(args.batch_size), "--workers", str(args.workers)]
    cmd += ["--pool", str(args.pool)]
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
    ap.add_argument(
        "--pool",
        type=int,
        default=64,
        help="Distinct H&E tiles the slide is drawn from (0: render and compress every strip).",
    )
    ap.add_argument("--dir", type=Path, default=None, help="Where to write the slide.")
    ap.add_argument("--phase", choices=["write", "encode"], default=None)
    ap.add_argument("--path", type=Path, default=None)
    args = ap.parse_args()
    if args.phase == "write":
        print(json.dumps(write_phase(args.path, args.slide_px, args.mpp, args.pool)))
        return
    if args.phase == "encode":
        print(json.dumps(encode_phase(args.path, args.slide_px, args.batch_size, args.workers)))
        return
    with tempfile.TemporaryDirectory(dir=args.dir) as d:
        path = Path(d) / "large.svs"
        w = _child("write", args, path)
        how = f"pool of {args.pool} tiles" if args.pool else "every strip rendered"
        print(
            f"write ({how}): {args.slide_px:,} px square at {args.mpp} um/px, "
            f"{w['levels']:.0f} levels, {w['file_mib']:,.0f} MiB in {w['write_s']:.1f} s, "
            f"peak {w['write_peak_mib']:,.0f} MiB ({w['write_before_mib']:,.0f} MiB before writing)"
        )
        e = _child("encode", args, path)
        print(
            f"score (encoder stage, {e['encoder']}, {args.workers} worker(s)): "
            f"{e['tiles']:,.0f} of {e['candidates']:,.0f} tiles in {e['encode_s']:.1f} s = "
            f"{e['tiles_per_s']:.0f} tiles/s, {e['tiles'] / e['cpu_s']:.0f} tiles/CPU-s "
            f"(encoder {e['encoder_s']:.1f} s), actor peak {e['actor_peak_mib']:,.0f} MiB"
        )
        if "kept_on_tissue" in e:
            print(
                f"tissue: {e['kept_on_tissue']:.1%} of the kept tiles lie at least half on the "
                f"ellipse's tiles; {e['whole_kept']:.1%} of the tiles wholly on them were kept"
            )
        trace = e["trace"]
        if trace:
            marks = [
                next((t for t in trace if t[0] >= q * e["tiles"]), trace[-1]) for q in QUARTERS
            ]
            marks = [t for i, t in enumerate(marks) if t not in marks[:i]]
            at = ", ".join(f"{t[2]:,.0f} MiB at {t[0] / e['tiles']:.0%}" for t in marks)
            print(f"resident memory of the actor by tiles done: {at}")


if __name__ == "__main__":
    main()
