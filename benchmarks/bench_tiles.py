"""Tile reading throughput: the project's tissue-filtered batched reader against a plain loop.

On one pyramidal slide written here with tifffile (Aperio-style, JPEG tiles, textured from real
H&E with background regions), in one run:

- project: ``open_slide`` + ``tissue_mask`` + ``tile_grid`` + ``read_tiles`` (batches of RGB
  uint8 arrays);
- plain: ``open_slide`` and, for the same tiles, one aligned OpenSlide ``read_region`` per tile
  at the same level, ``.convert("RGB")``, a PIL resize when the level's resolution differs
  from the target, ``np.asarray``.

Each repetition opens the slide afresh for each path (no shared tile cache) and the order of
the two paths alternates. Rates are tiles per second of wall time and per CPU second (one
core: both paths are single-threaded). The ratio, project / plain per core, is printed last.

    python benchmarks/bench_tiles.py                  # 8192 px at 0.25 um/px, levels 1, 2, ..., 32
    python benchmarks/bench_tiles.py --level-step 4   # Aperio-like levels 1, 4, 16: resize path
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import tifffile
from PIL import Image
from scipy import ndimage

from pathgen_batch.assets import he_texture_sources
from pathgen_batch.slides import TileGrid, TileSpec, open_slide, read_tiles, tile_grid, tissue_mask


def _he_atlas() -> np.ndarray:
    """(H, W, 3) uint8 of real H&E tissue: the tiatoolbox image with its mirror images."""
    _, png = he_texture_sources()
    tia = np.asarray(Image.open(png).convert("RGB"))  # (1000, 1000, 3)
    top = np.concatenate([tia, tia[:, ::-1]], axis=1)
    return np.concatenate([top, top[::-1]], axis=0)  # (2000, 2000, 3)


def _cmu_region() -> np.ndarray:
    """(H, W, 3) uint8 of the real Aperio region (tissue with its own glass background)."""
    svs, _ = he_texture_sources()
    with open_slide(svs) as s:
        return s.read_region((0, 0), 0, s.dimensions)


def render_level0(size: int, seed: int = 0) -> np.ndarray:
    """(size, size, 3) uint8: glass with smooth tissue islands textured by real H&E."""
    rng = np.random.default_rng(seed)
    field = ndimage.gaussian_filter(rng.standard_normal((64, 64)), sigma=5, mode="wrap")
    coarse = size // 8
    field = ndimage.zoom(field, coarse / 64, order=1)[:coarse, :coarse]  # (size/8, size/8)
    tissue = field > np.quantile(field, 0.5)  # about half of the area is tissue
    glass = np.array([236, 234, 238], dtype=np.uint8)
    img = np.empty((size, size, 3), dtype=np.uint8)
    img[:] = glass
    atlas = _he_atlas()
    ah, aw = atlas.shape[:2]
    for y in range(0, size, ah):
        for x in range(0, size, aw):
            block = atlas[:: rng.choice([-1, 1]), :: rng.choice([-1, 1])]
            h, w = min(ah, size - y), min(aw, size - x)
            m = np.repeat(
                np.repeat(tissue[y // 8 : (y + h + 7) // 8, x // 8 : (x + w + 7) // 8], 8, axis=0),
                8,
                axis=1,
            )[:h, :w]  # (h, w)
            img[y : y + h, x : x + w][m] = block[:h, :w][m]
    cmu = _cmu_region()  # real slide region: tissue and glass as scanned
    ch, cw = min(cmu.shape[0], size // 2), min(cmu.shape[1], size // 2)
    img[:ch, :cw] = cmu[:ch, :cw]
    noise = rng.integers(-3, 4, size=(size, 1, 1), dtype=np.int16)  # faint row banding
    return np.clip(img.astype(np.int16) + noise, 0, 255).astype(np.uint8)


def write_slide(path: Path, level0: np.ndarray, mpp: float, step: int, quality: int) -> None:
    """Aperio-style pyramidal TIFF: JPEG 256 px tiles, levels after the first reduced-res,
    each ``step`` times smaller, down to the last level at least one tile (256 px) wide."""
    h, w = level0.shape[:2]
    desc = (
        f"Aperio Image Library v1.0\n{w}x{h} [0,0 {w}x{h}] (256x256) JPEG/RGB Q={quality}"
        f"|AppMag = {40 if mpp < 0.375 else 20}|MPP = {mpp}"
    )
    opts: dict[str, Any] = dict(
        tile=(256, 256),
        compression="jpeg",
        compressionargs={"level": quality},
        photometric="rgb",
        metadata=None,
    )
    with tifffile.TiffWriter(path, bigtiff=True) as tif:
        tif.write(level0, description=desc, **opts)
        level = Image.fromarray(level0)
        while min(level.size) // step >= 256:
            level = level.reduce(step)
            tif.write(np.asarray(level), subfiletype=1, **opts)


T = TypeVar("T")


def _timed(fn: Callable[[], T]) -> tuple[float, float, T]:
    w0, c0 = time.perf_counter(), time.process_time()
    out = fn()
    return time.perf_counter() - w0, time.process_time() - c0, out


def project_path(path: Path, spec: TileSpec, batch_size: int) -> dict[str, float]:
    w0, c0 = time.perf_counter(), time.process_time()
    with open_slide(path) as s:
        mask_wall, mask_cpu, mask = _timed(lambda: tissue_mask(s))
        grid = tile_grid(s, spec, mask)
        n = 0
        for b in read_tiles(s, grid, batch_size=batch_size):
            n += len(b)
    return {
        "tiles": float(n),
        "wall": time.perf_counter() - w0,
        "cpu": time.process_time() - c0,
        "mask_wall": mask_wall,
        "mask_cpu": mask_cpu,
    }


def plain_path(path: Path, grid: TileGrid) -> dict[str, float]:
    px, rpx, level = grid.tile_px, grid.read_px, grid.level
    coords = list(zip(grid.x.tolist(), grid.y.tolist(), strict=True))
    w0, c0 = time.perf_counter(), time.process_time()
    with open_slide(path, direct=False) as s:
        osr = s.handle
        n = 0
        for x, y in coords:
            img = osr.read_region((x, y), level, (rpx, rpx)).convert("RGB")
            if rpx != px:
                img = img.resize((px, px), Image.Resampling.BOX)
            tile = np.asarray(img)  # (px, px, 3)
            n += tile.shape[0] > 0
    return {"tiles": float(n), "wall": time.perf_counter() - w0, "cpu": time.process_time() - c0}


def _max_diff(path: Path, grid: TileGrid, n: int = 32) -> int:
    """Largest pixel difference between the two paths over the first n tiles (0: identical)."""
    px, rpx, level = grid.tile_px, grid.read_px, grid.level
    with open_slide(path) as s:
        batch = next(read_tiles(s, grid, batch_size=n))
        worst = 0
        for i in range(len(batch)):
            img = s.handle.read_region((int(batch.x[i]), int(batch.y[i])), level, (rpx, rpx))
            img = img.convert("RGB")
            if rpx != px:
                img = img.resize((px, px), Image.Resampling.BOX)
            diff = np.abs(np.asarray(img).astype(np.int16) - batch.images[i])
            worst = max(worst, int(diff.max()))
    return worst


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=8192, help="level-0 side in px")
    ap.add_argument("--mpp", type=float, default=0.25, help="level-0 um/px")
    ap.add_argument("--level-step", type=int, default=2, help="downsample between levels")
    ap.add_argument("--quality", type=int, default=80, help="JPEG quality")
    ap.add_argument("--tile-px", type=int, default=256)
    ap.add_argument("--target-mpp", type=float, default=0.5)
    ap.add_argument("--min-tissue", type=float, default=0.5)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--slide", type=Path, default=None, help="reuse or keep the slide here")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        path = args.slide or Path(tmp) / "bench.svs"
        if not path.exists():
            t0 = time.perf_counter()
            write_slide(path, render_level0(args.size), args.mpp, args.level_step, args.quality)
            print(
                f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB) in "
                f"{time.perf_counter() - t0:.1f} s"
            )
        spec = TileSpec(tile_px=args.tile_px, mpp=args.target_mpp, min_tissue=args.min_tissue)
        with open_slide(path) as s:
            grid = tile_grid(s, spec, tissue_mask(s))
            print(
                f"slide: {s.vendor}, {s.dimensions[0]}x{s.dimensions[1]} px at {s.mpp} um/px, "
                f"levels {[round(d, 3) for d in s.level_downsamples]}, JPEG tiles decoded "
                f"directly at levels {list(s.direct_levels)}"
            )
        print(
            f"tiles: {len(grid)} of {grid.n_candidates} kept; {spec.tile_px} px at {spec.mpp} "
            f"um/px = {grid.size_l0} level-0 px, read from level {grid.level} at "
            f"{grid.read_px} px{' + resize' if grid.needs_resize else ''}"
        )
        print(f"max |project - plain| over the first tiles: {_max_diff(path, grid)}")
        plain_path(path, grid)  # warm the page cache
        runs_p, runs_b = [], []
        for r in range(args.repeats):
            if r % 2 == 0:
                runs_p.append(project_path(path, spec, args.batch_size))
                runs_b.append(plain_path(path, grid))
            else:
                runs_b.append(plain_path(path, grid))
                runs_p.append(project_path(path, spec, args.batch_size))

    def med(runs: list[dict[str, float]], key: str) -> float:
        return statistics.median(r[key] for r in runs)

    n = len(grid)
    p_wall, p_cpu, b_wall, b_cpu = (
        med(runs_p, "wall"),
        med(runs_p, "cpu"),
        med(runs_b, "wall"),
        med(runs_b, "cpu"),
    )
    share = statistics.median(r["mask_cpu"] / r["cpu"] for r in runs_p)
    print(f"repeats: {args.repeats} (medians)")
    print(f"plain loop:      {n / b_wall:8.1f} tiles/s wall, {n / b_cpu:8.1f} tiles/CPU-s")
    print(
        f"project reader:  {n / p_wall:8.1f} tiles/s wall, {n / p_cpu:8.1f} tiles/CPU-s "
        f"(tissue mask + grid + tiles)"
    )
    print(f"tissue detection share of project time: {share:.1%}")
    print(f"ratio project/plain per core: {b_cpu / p_cpu:.2f}x (wall {b_wall / p_wall:.2f}x)")


if __name__ == "__main__":
    main()
