"""What the protocol's statistics and baselines add to the time of a repeated CV.

On a cohort of the demo's shape (``--patients`` x ``--genes``, ``--dim``-dimensional tile
features, ``--tiles`` tiles per patient; expression-driven survival, about 25% censored), one
outer fold of a K-fold split (K = ``--folds``): the wall time of every baseline of
:func:`~pathgen_batch.training.baselines.fold_baselines` (CoxNet with its inner CV, Cox on
grade, Kaplan-Meier null, ridge with its inner CV, training mean), and of the patient bootstrap
of the pooled out-of-fold C (``--boot`` resamples of R = ``--repeats`` risk rows). The last
line gives the added time of an R x K run: R * K folds of baselines and one bootstrap per
survival condition (9).

    python benchmarks/bench_protocol.py
    python benchmarks/bench_protocol.py --patients 400 --repeats 5
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from pathgen_batch.cohort.splits import stratified_folds
from pathgen_batch.evaluation import pooled_c_index_ci
from pathgen_batch.features.contract import FeatureContract
from pathgen_batch.omics.panel import GenePanel
from pathgen_batch.training.baselines import (
    BaselineConfig,
    cox_grade,
    coxnet_expression,
    km_null,
    mean_expression,
    ridge_expression,
)
from pathgen_batch.training.data import TrainingData

N_CONDITIONS = 9  # the CV's 5, the 3 survival baselines, the ridge-fed fusion control


def make_cohort(p: int, g: int, d: int, tiles: int, seed: int) -> TrainingData:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(p, g))  # (P, G)
    lin = x[:, : min(5, g)].sum(axis=1) / 2.0  # (P,)
    t_event = rng.exponential(np.exp(-lin))
    t_cens = rng.exponential(3.0 * np.median(t_event), p)
    a = rng.normal(size=(g, d)) / np.sqrt(g)
    return TrainingData(
        patient_ids=tuple(f"p{i}" for i in range(p)),
        slides=tuple((f"s{i}",) for i in range(p)),
        bags=tuple((x[i] @ a + rng.normal(size=(tiles, d))).astype(np.float32) for i in range(p)),
        coords=tuple(np.zeros((tiles, 2), dtype=np.int64) for _ in range(p)),
        tile_slides=tuple(np.zeros(tiles, dtype=np.int64) for _ in range(p)),
        expression=x,
        grade=rng.integers(0, 3, p).astype(np.int64),
        time=np.minimum(t_event, t_cens),
        event=t_event <= t_cens,
        folds=np.zeros(p, dtype=np.int64),
        panel=GenePanel(tuple(f"g{j}" for j in range(g)), ("f",) * g),
        contract=FeatureContract("bench", "v1", d, 224, 0.5),
        grade_classes=("G1", "G2", "G3"),
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--patients", type=int, default=198)
    ap.add_argument("--genes", type=int, default=76)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--tiles", type=int, default=64)
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--boot", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    data = make_cohort(args.patients, args.genes, args.dim, args.tiles, args.seed)
    folds = stratified_folds(data.strata(), args.folds, args.seed)
    train, test = np.flatnonzero(folds != 0), np.flatnonzero(folds == 0)
    cfg = BaselineConfig(seed=args.seed)
    steps = {
        "coxnet": lambda: coxnet_expression(data, train, test, cfg),
        "cox_grade": lambda: cox_grade(data, train, test, cfg),
        "km_null": lambda: km_null(data, train, test),
        "ridge": lambda: ridge_expression(data, train, test, cfg),
        "mean_expression": lambda: mean_expression(data, train, test),
    }
    per_fold = 0.0
    for name, step in steps.items():
        t0 = time.perf_counter()
        out = step()
        dt = time.perf_counter() - t0
        per_fold += dt
        shown = getattr(out, "metrics", None) or {"mean_pearson": out.fidelity["mean_pearson"]}
        key = next(iter(shown))
        print(f"{name:<16} {dt:7.2f} s   {key} {shown[key]:.3f}   {getattr(out, 'params', {})}")
    risk = np.stack(
        [
            data.expression[:, 0] + np.random.default_rng(r).normal(size=data.n_patients)
            for r in range(args.repeats)
        ]
    )  # (R, P)
    t0 = time.perf_counter()
    ci = pooled_c_index_ci(data.event, data.time, risk, n_boot=args.boot, seed=args.seed)
    boot = time.perf_counter() - t0
    print(
        f"bootstrap of pooled C, {args.boot} x {args.repeats} rows: {boot:.2f} s "
        f"({ci.estimate:.3f} [{ci.lo:.3f}, {ci.hi:.3f}])"
    )
    total = args.repeats * args.folds * per_fold + N_CONDITIONS * boot
    print(
        f"baselines {per_fold:.2f} s per fold; {args.repeats} x {args.folds} run adds {total:.0f} s"
    )


if __name__ == "__main__":
    main()
