"""The generator at the paper's panel sizes: 76, 5,000 and 20,000 genes in 6 families.

For each panel size G, in a fresh process (so that its peak memory is its own):

- the patients' expression and gene panel of a cohort of that size (``semi`` mode's 76 real
  genes; ``synthetic`` mode with ``--n-genes G`` above that), as ``pathgen-batch synth cohort``
  makes them, without rendering slides; each patient's bag is ``--tiles`` random feature vectors
  of ``--dim`` values (the generator's cost does not depend on what the features are);
- a generator of the default architecture trained for ``--epochs`` epoch(s) (seconds per epoch);
- the default sampler (``GeneratorTrainConfig().sampler``) on ``--slides`` slides: seconds per
  slide (fastest of ``--repeats``);
- peak resident memory of the process (training and sampling).

At 5,000 genes the same generator also samples with the reference protocol (ancestral DDPM over
all 1000 steps, 3 samples per slide, averaged) on ``--reference-slides`` slide(s), and the last
line gives the default sampler's speed-up over it. Every ancestral step costs the same (one
network call on the same rows and O(G) arithmetic), so by default the reference is timed over
its first ``--reference-steps`` steps (the same network on a schedule of that many steps) and
scaled to 1000; ``--reference-steps 1000`` times all of it (about 5 minutes per slide here).

    python benchmarks/bench_genes.py                      # 76 / 5,000 / 20,000 genes
    python benchmarks/bench_genes.py --genes 76 5000 --slides 8
"""

from __future__ import annotations

import argparse
import dataclasses
import multiprocessing as mp
import resource
import sys
import time
from typing import Any

import numpy as np
import torch

REFERENCE_GENES = 5000
REFERENCE_STEPS = 1000


def _data(n_genes: int, n_patients: int, tiles: int, dim: int, seed: int) -> Any:
    from pathgen_batch.features.contract import FeatureContract
    from pathgen_batch.synth import CohortConfig
    from pathgen_batch.synth.config import SEMI_GENES
    from pathgen_batch.synth.data import cohort_data
    from pathgen_batch.training.data import assemble

    mode = "semi" if n_genes <= SEMI_GENES else "synthetic"
    cd = cohort_data(
        CohortConfig(mode=mode, n_patients=n_patients, n_genes=n_genes, n_families=6, seed=seed)
    )
    clinical = cd.clinical.assign(
        slide_id=[f"{p}-S1" for p in cd.clinical["patient_id"]],
        fold=np.arange(len(cd.clinical)) % 2,
    )
    rng = np.random.default_rng(seed)
    bags = {
        s: (rng.integers(0, 10_000, (tiles, 2)), rng.normal(size=(tiles, dim)).astype(np.float32))
        for s in clinical["slide_id"]
    }
    contract = FeatureContract("random", "v1", dim, 256, 0.5)
    return assemble(
        clinical, cd.expression, cd.panel, bags, contract, ("1", "2", "3"), source="bench"
    )


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def _per_slide(gen: Any, bags: list[np.ndarray], sampler: Any, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        gen.generate(bags, sampler=sampler, batch_size=len(bags))
        best = min(best, time.perf_counter() - t0)
    return best / len(bags)


def measure(n_genes: int, args: argparse.Namespace) -> dict[str, Any]:
    """One panel size, in this process: training and sampling times, peak memory."""
    from pathgen_batch.models.diffusion import SamplerConfig
    from pathgen_batch.training.config import GeneratorTrainConfig
    from pathgen_batch.training.trainers import train_generator

    torch.set_num_threads(args.threads)
    data = _data(n_genes, args.patients, args.tiles, args.dim, args.seed)
    n = data.n_patients
    tr, va = np.arange(0, n - n // 5), np.arange(n - n // 5, n)
    cfg = dataclasses.replace(GeneratorTrainConfig(), epochs=args.epochs, val_draws=2)
    t0 = time.perf_counter()
    gen = train_generator(data, tr, va, cfg)
    train_s = (time.perf_counter() - t0) / args.epochs
    bags = [data.bags[i] for i in va[: args.slides]]
    out: dict[str, Any] = {
        "genes": data.n_genes,
        "families": data.panel.n_families,
        "params": sum(p.numel() for p in gen.model.parameters()),
        "train_s_per_epoch": train_s,
        "sampler": cfg.sampler,
        "sample_s_per_slide": _per_slide(gen, bags, None, args.repeats),
    }
    if n_genes == REFERENCE_GENES:
        ref = SamplerConfig(name="ddpm", steps=1000, eta=1.0, n_samples=3)
        steps = args.reference_steps
        short = dataclasses.replace(
            gen, diffusion=dataclasses.replace(gen.diffusion, num_timesteps=steps)
        )
        per_slide = _per_slide(short, bags[: args.reference_slides], ref, 1)
        out["reference_s_per_slide"] = per_slide * REFERENCE_STEPS / steps
        out["reference_steps_timed"] = steps
    out["peak_mb"] = _peak_mb()
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--genes", type=int, nargs="+", default=[76, REFERENCE_GENES, 20_000])
    ap.add_argument("--patients", type=int, default=40)
    ap.add_argument("--tiles", type=int, default=64, help="tiles per slide")
    ap.add_argument("--dim", type=int, default=64, help="feature dimension")
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--slides", type=int, default=2, help="slides sampled per panel size")
    ap.add_argument("--reference-slides", type=int, default=1)
    ap.add_argument("--reference-steps", type=int, default=100, help="ancestral steps timed")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    ctx = mp.get_context("spawn")
    rows = []
    for g in args.genes:
        with ctx.Pool(1) as pool:  # a fresh process per size: its peak memory is its own
            row = pool.apply(measure, (g, args))
        rows.append(row)
        s = row["sampler"]
        print(
            f"{row['genes']:>6} genes, {row['families']} families, {row['params'] / 1e6:6.2f} M "
            f"parameters: train {row['train_s_per_epoch']:7.2f} s/epoch; sampling "
            f"({s.name}, {s.steps} steps, {s.n_samples} samples) {row['sample_s_per_slide']:7.3f} "
            f"s/slide; peak memory {row['peak_mb']:7.0f} MB",
            flush=True,
        )
    for row in rows:
        if "reference_s_per_slide" in row:
            ref, ours = row["reference_s_per_slide"], row["sample_s_per_slide"]
            timed = row["reference_steps_timed"]
            how = "" if timed == REFERENCE_STEPS else f" (timed over {timed} steps, scaled)"
            print(
                f"at {row['genes']} genes the reference protocol (ddpm, 1000 steps, 3 samples) "
                f"takes {ref:.2f} s/slide{how}: the default sampler is {ref / ours:.1f}x faster"
            )
    print(
        f"({args.patients} patients, {args.tiles} tiles x {args.dim} features per slide, "
        f"{args.threads} thread(s), {sys.platform})"
    )


if __name__ == "__main__":
    main()
