"""Tile encoder throughput next to the JPEG decode rate of the same tiles (the limit).

The tiles are real H&E (the project's texture sources, mirrored and cut into ``--tile-px``
squares), JPEG-encoded once at quality 85 as a slide scanner stores them. Measured in one run:

- decode: PIL decodes each JPEG to an RGB uint8 array (what every slide read pays per tile);
- each encoder family: ``stain-texture`` (its default feature set, v2, and v1 beside it),
  ``resnet50-trunc``, a ViT-S/16 (``timm:`` with timm's
  ``vit_small_patch16_224``) and a ViT-L/16 (the ``uni`` recipe), all with random weights
  written to a temporary file and loaded back as a user's weights would be.

Rates are tiles per CPU-second (``time.process_time``, all threads of the process, so a
multi-threaded encoder is charged for every core it uses) and tiles per wall second;
``--threads 1`` gives the rate of one core. The ratios
printed last are decode rate / encoder rate per CPU-second: how many times slower than reading
the tiles each encoder is. ViTs need timm (``make venv`` installs it); without it they are
skipped with a note.

    python benchmarks/bench_encoders.py                   # CPU, a few minutes at most on 2 cores
    python benchmarks/bench_encoders.py --only vit-l --device cuda --tiles 8192 --batch 256 \\
        --decode-threads 8 --json out.json                # GPU: decode threads feed the device
    python benchmarks/bench_encoders.py --only vit-l --device cuda --slide-px 32768 ...

With ``--slide-px N`` each encoder also embeds one pyramidal slide of N x N px at
``--slide-mpp`` (written here like ``bench_tiles.py`` writes its slide: JPEG tiles, real H&E
texture, about half tissue) end to end with ``extract_slide``: open, tissue mask, tile grid,
tile reading in a background thread, encoding. Slides per hour = 3600 / its seconds.
"""

from __future__ import annotations

import argparse
import io
import json
import tempfile
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from pathgen_batch.assets import he_texture_sources
from pathgen_batch.errors import ConfigError
from pathgen_batch.features import build_encoder, extract_slide
from pathgen_batch.features.encoder import Encoder
from pathgen_batch.features.resnet import ResNet50Trunc
from pathgen_batch.features.timm_encoder import TimmEncoderConfig, build_network, recipe_for

IMAGENET = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
# family -> (encoder name, options, default tile count on the CPU)
FAMILIES: dict[str, tuple[str, dict[str, Any], int]] = {
    "stain-texture": ("stain-texture", {}, 1024),  # the default feature set, v2
    "stain-texture-v1": ("stain-texture", {"feature_set": "v1"}, 128),
    "resnet50-trunc": ("resnet50-trunc", {}, 32),
    "vit-s": ("timm:vit_small_patch16_224", IMAGENET, 32),
    "vit-l": ("uni", {}, 6),
}


def jpeg_tiles(n: int, px: int, seed: int = 0) -> list[bytes]:
    """``n`` JPEG-encoded RGB tiles of side ``px`` cut from real H&E at random places."""
    _, png = he_texture_sources()
    img = np.asarray(Image.open(png).convert("RGB"))  # (1000, 1000, 3)
    atlas = np.concatenate([img, img[:, ::-1]], axis=1)
    atlas = np.concatenate([atlas, atlas[::-1]], axis=0)  # (2000, 2000, 3)
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        y, x = rng.integers(0, atlas.shape[0] - px, size=2)
        buf = io.BytesIO()
        Image.fromarray(atlas[y : y + px, x : x + px]).save(buf, format="JPEG", quality=85)
        out.append(buf.getvalue())
    return out


def decode(blob: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(blob)).convert("RGB"))  # (px, px, 3) uint8


def timed(fn: Callable[[], int]) -> dict[str, float]:
    """Run ``fn`` (returns a tile count); tiles per CPU-second and per wall second."""
    c0, w0, t0 = time.process_time(), time.perf_counter(), time.time()
    n = fn()
    cpu, wall = time.process_time() - c0, time.perf_counter() - w0
    return {
        "tiles": n,
        "cpu_s": cpu,
        "wall_s": wall,
        "per_cpu_s": n / cpu,
        "per_s": n / wall,
        "t0": t0,  # epoch seconds of the timed span (to match GPU utilisation samples)
        "t1": t0 + wall,
    }


def weights_for(family: str, name: str, folder: Path) -> str | None:
    """A random-weight file of the family, written as a user's weights file would be."""
    if family.startswith("stain-texture"):
        return None
    torch.manual_seed(0)
    if family == "resnet50-trunc":
        state = ResNet50Trunc().state_dict()
    else:
        opts = FAMILIES[family][1]
        model = build_network(recipe_for(name, TimmEncoderConfig(weights="-", **opts)), name)
        state = model.state_dict()
    path = folder / f"{family}.pth"
    torch.save(state, path)
    return str(path)


def decoded_batches(
    blobs: list[bytes], size: int, pool: ThreadPoolExecutor, ahead: int = 4
) -> Iterator[np.ndarray]:
    """(B, px, px, 3) batches, decoded by ``pool``'s threads ``ahead`` batches in advance."""
    groups = iter([blobs[i : i + size] for i in range(0, len(blobs), size)])
    queued: deque[list[Future[np.ndarray]]] = deque()
    for g in islice(groups, ahead):
        queued.append([pool.submit(decode, b) for b in g])
    while queued:
        futures = queued.popleft()
        nxt = next(groups, None)
        if nxt is not None:
            queued.append([pool.submit(decode, b) for b in nxt])
        yield np.stack([f.result() for f in futures])


def encode_all(enc: Encoder, blobs: list[bytes], batch: int, threads: int) -> int:
    """Decode (in ``threads`` threads, ahead of the encoder) and encode every tile."""
    with ThreadPoolExecutor(threads) as pool:
        for b in decoded_batches(blobs, batch, pool):
            enc.encode(b)
    if enc.device.type == "cuda":
        torch.cuda.synchronize()
    return len(blobs)


def write_bench_slide(folder: Path, px: int, mpp: float) -> Path:
    """A pyramidal JPEG slide of ``px`` x ``px`` at ``mpp``, as ``bench_tiles.py`` writes it."""
    from bench_tiles import render_level0, write_slide  # the benchmark beside this one

    t0 = time.perf_counter()
    path = folder / "bench_slide.svs"
    write_slide(path, render_level0(px), mpp, step=4, quality=85)
    print(f"slide {px} x {px} px at {mpp} um/px written in {time.perf_counter() - t0:.0f} s")
    return path


def slide_rate(enc: Encoder, path: Path, batch: int) -> dict[str, float]:
    """One slide end to end (open, mask, grid, read, encode): seconds and slides per hour."""
    t0 = time.time()
    sf = extract_slide(path, enc, batch_size=batch)
    seconds = float(sf.extraction["seconds"])
    n = len(sf.feats)
    return {
        "tiles": n,
        "seconds": seconds,
        "encode_seconds": float(sf.extraction["encode_seconds"]),
        "slides_per_hour": 3600.0 / seconds,
        "tiles_per_s": n / seconds,
        "t0": t0,
        "t1": time.time(),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--tile-px", type=int, default=224)
    ap.add_argument("--only", nargs="*", choices=list(FAMILIES), default=list(FAMILIES))
    ap.add_argument(
        "--tiles", type=int, default=None, help="Tiles per encoder (default: per family)."
    )
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--device", default="cpu")
    ap.add_argument(
        "--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)."
    )
    ap.add_argument("--decode-threads", type=int, default=0, help="0: decode inline, untimed.")
    ap.add_argument("--json", type=Path, default=None, help="Also write the figures here.")
    ap.add_argument("--slide-px", type=int, default=0, help="Also embed one slide this wide.")
    ap.add_argument("--slide-mpp", type=float, default=0.5)
    args = ap.parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    n_max = max(args.tiles or FAMILIES[f][2] for f in args.only)
    unique = jpeg_tiles(min(max(n_max, 256), 2048), args.tile_px)  # repeated beyond 2048
    blobs = (unique * -(-max(n_max, 256) // len(unique)))[: max(n_max, 256)]
    dec = timed(lambda: sum(1 for b in unique if decode(b).size))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} intra-op threads, {args.device}")
    print(f"jpeg decode  {dec['per_cpu_s']:9.1f} tiles/CPU-s  {dec['per_s']:9.1f} tiles/s")
    results: dict[str, Any] = {"decode": dec, "tile_px": args.tile_px, "device": args.device}
    with tempfile.TemporaryDirectory() as tmp:
        slide = (
            write_bench_slide(Path(tmp), args.slide_px, args.slide_mpp) if args.slide_px else None
        )
        for family in args.only:
            name, opts, n_default = FAMILIES[family]
            n = args.tiles or n_default
            try:
                weights = weights_for(family, name, Path(tmp))
                opts = {**opts, "tile_px": args.tile_px}
                if family.startswith("vit"):  # the network sees whole batches, unpadded
                    opts["micro_batch"] = min(args.batch, n)
                enc = build_encoder(name, weights=weights, device=args.device, options=opts)
            except ConfigError as e:
                print(f"{family:16s} skipped: {e}")
                continue
            enc.encode(np.stack([decode(b) for b in blobs[: min(args.batch, n)]]))  # warm-up
            if args.decode_threads > 0:
                r = timed(
                    lambda e=enc, k=n: encode_all(e, blobs[:k], args.batch, args.decode_threads)
                )
            else:
                tiles = np.stack([decode(b) for b in blobs[:n]])
                step = args.batch

                def run(e: Encoder = enc, t: np.ndarray = tiles, s: int = step) -> int:
                    for i in range(0, len(t), s):
                        e.encode(t[i : i + s])
                    if e.device.type == "cuda":
                        torch.cuda.synchronize()
                    return len(t)

                r = timed(run)
            r["encoder"] = enc.contract.describe()
            if slide is not None:
                r["slide"] = slide_rate(enc, slide, args.batch)
                sr = r["slide"]
                print(
                    f"{family:16s} slide {args.slide_px} px: {sr['tiles']} tiles in "
                    f"{sr['seconds']:.1f} s (encoder {sr['encode_seconds']:.1f} s), "
                    f"{sr['slides_per_hour']:.0f} slides/h, {sr['tiles_per_s']:.0f} tiles/s"
                )
            results[family] = r
            print(
                f"{family:16s}{r['per_cpu_s']:9.1f} tiles/CPU-s  {r['per_s']:9.1f} tiles/s  ({n})"
            )
            del enc
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    print("decode / encoder, per CPU-second (how many times slower than reading the tiles):")
    for family in args.only:
        if family in results:
            ratio = dec["per_cpu_s"] / results[family]["per_cpu_s"]
            print(f"  {family:16s} {ratio:9.1f}x")


if __name__ == "__main__":
    main()
