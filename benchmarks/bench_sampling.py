"""Sampling speed against fidelity: DDIM with few steps against the reference 1000-step DDPM.

One generator is trained with the default ``GeneratorTrainConfig`` on the training part of one
outer fold (inner validation split for early stopping); then the SAME generator generates the
SAME test slides with:

- DDIM, eta 0, at 10 / 25 / 50 / 100 steps with the default number of samples per slide;
- the reference protocol of the PathGen code: ancestral DDPM over all 1000 steps, 3 samples
  per slide, averaged.

For each: wall time per slide (batches of 16 slides, one process; fastest of ``--repeats``
runs) and the fidelity of the mean
synthetic transcriptome against the real one on the test patients (mean per-gene Pearson across
patients, genes significant at BH q < 0.05, MAE). The last lines give the default sampler's
speed ratio and Pearson difference against the reference, and the training time per epoch of
the default generator and fusion configs.

Without ``--cohort``/``--features`` the default 198-patient semi-synthetic cohort and its
stain-texture features are built into ``--workdir`` (reused by later runs).

    python benchmarks/bench_sampling.py
    python benchmarks/bench_sampling.py --cohort /tmp/c --features /tmp/f --fold 0
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from pathgen_batch.cohort.splits import inner_split
from pathgen_batch.evaluation import expression_fidelity
from pathgen_batch.inference.generator import TrainedGenerator
from pathgen_batch.models.diffusion import SamplerConfig
from pathgen_batch.training.config import FusionTrainConfig, GeneratorTrainConfig
from pathgen_batch.training.data import TrainingData, load_training_data
from pathgen_batch.training.trainers import train_generator, train_predictor

REFERENCE = SamplerConfig(name="ddpm", steps=1000, eta=1.0, n_samples=3)


def prepare(workdir: Path) -> tuple[Path, Path]:
    """Build (or reuse) the default cohort and its features under ``workdir``."""
    from pathgen_batch.features import build_encoder, extract_cohort
    from pathgen_batch.synth import CohortConfig, build_cohort

    cohort, feats = workdir / "cohort", workdir / "features"
    print(f"cohort and features in {workdir} (built once, then reused)", flush=True)
    build_cohort(cohort, CohortConfig())
    extract_cohort(cohort, feats, build_encoder("stain-texture", device="cpu"))
    return cohort, feats


def split(data: TrainingData, fold: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    test = np.flatnonzero(data.folds == fold)
    rest = np.flatnonzero(data.folds != fold)
    strata = data.strata()
    tr, va = inner_split([strata[i] for i in rest], 0.2, seed)
    return rest[tr], rest[va], test


def run_sampler(
    gen: TrainedGenerator,
    data: TrainingData,
    test: np.ndarray,
    cfg: SamplerConfig,
    seed: int,
    repeats: int,
) -> dict[str, float]:
    """Generate the test slides ``repeats`` times (same seed); the fastest run is timed."""
    bags = [data.bags[i] for i in test]
    wall = cpu = float("inf")
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        mean, spread = gen.generate(bags, sampler=cfg, seed=seed)
        wall = min(wall, time.perf_counter() - t0)
        cpu = min(cpu, time.process_time() - c0)
    fid = expression_fidelity(data.expression[test], mean, data.panel.genes).summary
    return {
        "ms_per_slide": 1000 * wall / len(test),
        "cpu_ms_per_slide": 1000 * cpu / len(test),
        "pearson": fid["mean_pearson"],
        "significant": fid["n_significant_pearson"],
        "mae": fid["mae"],
        "spread": float(spread.mean()),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cohort", type=Path, default=None)
    p.add_argument("--features", type=Path, default=None)
    p.add_argument(
        "--workdir", type=Path, default=Path(tempfile.gettempdir()) / "pathgen-bench-sampling"
    )
    p.add_argument(
        "--fold", type=int, default=0, help="Outer fold whose patients are the test set."
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads.")
    p.add_argument("--steps", type=int, nargs="+", default=[10, 25, 50, 100], help="DDIM steps.")
    p.add_argument("--repeats", type=int, default=3, help="Timed runs per sampler (fastest kept).")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    if (args.cohort is None) != (args.features is None):
        p.error("give both --cohort and --features, or neither")
    cohort, feats = (
        (args.cohort, args.features) if args.cohort is not None else prepare(args.workdir)
    )
    data = load_training_data(cohort, feats)
    tr, va, test = split(data, args.fold, args.seed)
    print(
        f"{data.n_patients} patients, {data.n_genes} genes, D={data.feature_dim}, "
        f"{np.mean([b.shape[0] for b in data.bags]):.1f} tiles per slide; fold {args.fold}: "
        f"{len(tr)} train / {len(va)} val / {len(test)} test slides; torch threads "
        f"{torch.get_num_threads()}",
        flush=True,
    )
    gcfg = dataclasses.replace(GeneratorTrainConfig(), seed=args.seed)
    gen = train_generator(data, tr, va, gcfg)
    gh = gen.provenance["history"]
    fus = train_predictor(data, tr, va, dataclasses.replace(FusionTrainConfig(), seed=args.seed))
    fh = fus.provenance["history"]

    default = gen.sampler
    n = default.n_samples
    steps = sorted(set(args.steps) | ({default.steps} if default.name == "ddim" else set()))
    runs: list[tuple[str, SamplerConfig]] = [
        (f"DDIM {s:>4} steps, {n} samples", SamplerConfig("ddim", s, 0.0, n)) for s in steps
    ]
    if default.name != "ddim":
        runs.append((f"{default.name} {default.steps} steps, {n} samples", default))
    runs.append(("DDPM 1000 steps, 3 samples (reference)", REFERENCE))
    gen.generate([data.bags[i] for i in test[:2]], sampler=SamplerConfig("ddim", 5, 0.0, 2))

    print(
        f"\n{'sampler':<40}{'ms/slide':>10}{'cpu ms':>10}{'Pearson':>10}{'signif.':>9}"
        f"{'MAE':>8}{'spread':>8}"
    )
    results: dict[str, dict[str, float]] = {}
    for label, cfg in runs:
        r = run_sampler(gen, data, test, cfg, args.seed, args.repeats)
        results[label] = r
        star = " *" if cfg == default else ""
        print(
            f"{label + star:<40}{r['ms_per_slide']:>10.1f}{r['cpu_ms_per_slide']:>10.1f}"
            f"{r['pearson']:>10.3f}{int(r['significant']):>9d}{r['mae']:>8.3f}{r['spread']:>8.3f}",
            flush=True,
        )
    ref = results[runs[-1][0]]
    dflt = next(results[label] for label, cfg in runs if cfg == default)
    print(
        f"\n(* default sampler: {default.name} {default.steps} steps, eta {default.eta:g}, "
        f"{default.n_samples} samples; {len(test)} test slides, mean of samples vs real)"
    )
    print(
        f"training: generator {gh['seconds'] / gh['epochs_run']:.2f} s/epoch "
        f"({gh['epochs_run']} epochs, best {gh['best_epoch']}, {gh['seconds']:.1f} s); "
        f"fusion {fh['seconds'] / fh['epochs_run']:.2f} s/epoch ({fh['epochs_run']} epochs, "
        f"best {fh['best_epoch']}, {fh['seconds']:.1f} s); {len(tr)} training patients"
    )
    print(
        f"default vs reference: {ref['ms_per_slide'] / dflt['ms_per_slide']:.1f}x faster per "
        f"slide ({ref['cpu_ms_per_slide'] / dflt['cpu_ms_per_slide']:.1f}x in CPU time); mean "
        f"per-gene Pearson {dflt['pearson']:.3f} vs {ref['pearson']:.3f} "
        f"(difference {dflt['pearson'] - ref['pearson']:+.3f})"
    )


if __name__ == "__main__":
    main()
