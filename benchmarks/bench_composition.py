"""Does a cheaper encoder still see the tissue? stain-texture v2 against v1, side by side.

On a semi-synthetic cohort (``pathgen-batch synth cohort``), every slide's rendered share of
each of the four tissue classes is known (``composition.parquet``: ``fraction_1..4``), as is
its tumour-class morphology level (cohort v2: ``morphology_level``). Each feature set is
extracted from the same slides (or read from ``--features-v1`` / ``--features-v2`` when given),
mean-pooled per slide, and a ridge regression (alpha 1, features standardised on the training
folds) predicts each target out of fold on the cohort's folds. Printed per target: the
out-of-fold R^2 and Pearson r of each feature set, and the ratio v2 / v1 of R^2; last, the
extraction rate of each (tiles per CPU-second, when extracted here) and the mean R^2 ratio.

    python benchmarks/bench_composition.py --cohort workspace/cohort
    python benchmarks/bench_composition.py --cohort C --features-v1 F1 --features-v2 F2
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from pathgen_batch.cohort import load_cohort
from pathgen_batch.features import build_encoder, extract_cohort, read_slide_features
from pathgen_batch.features.store import feature_uri

TARGETS = ("fraction_1", "fraction_2", "fraction_3", "fraction_4", "morphology_level")


def pooled(features_dir: str | Path, slide_ids: list[str]) -> np.ndarray:
    """(n_slides, D): each slide's mean tile feature."""
    return np.stack(
        [read_slide_features(feature_uri(features_dir, s)).feats.mean(axis=0) for s in slide_ids]
    )


def ridge_oof(x: np.ndarray, y: np.ndarray, folds: np.ndarray, alpha: float = 1.0) -> np.ndarray:
    """Out-of-fold ridge predictions of ``y`` (n,) from ``x`` (n, D)."""
    pred = np.empty_like(y)
    for f in np.unique(folds):
        tr, te = folds != f, folds == f
        mu, sd = x[tr].mean(0), x[tr].std(0) + 1e-8
        a, b = (x[tr] - mu) / sd, (x[te] - mu) / sd
        ym = y[tr].mean()
        w = np.linalg.solve(a.T @ a + alpha * np.eye(a.shape[1]), a.T @ (y[tr] - ym))
        pred[te] = b @ w + ym
    return pred


def scores(y: np.ndarray, pred: np.ndarray) -> tuple[float, float]:
    """(R^2, Pearson r)."""
    r2 = 1.0 - float(np.sum((y - pred) ** 2) / np.sum((y - y.mean()) ** 2))
    return r2, float(np.corrcoef(y, pred)[0, 1])


def extract(cohort: Path, out: Path, feature_set: str) -> float:
    """Extract one feature set; returns tiles per CPU-second."""
    enc = build_encoder("stain-texture", options={"feature_set": feature_set}, device="cpu")
    c0 = time.process_time()
    results = extract_cohort(cohort, out, enc)
    cpu = time.process_time() - c0
    tiles = sum(r.n_tiles for r in results)
    return tiles / cpu if cpu > 0 and tiles else float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cohort", required=True, type=Path)
    ap.add_argument("--features-v1", type=Path, default=None)
    ap.add_argument("--features-v2", type=Path, default=None)
    ap.add_argument("--threads", type=int, default=1, help="torch threads while extracting")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    comp = pd.read_parquet(args.cohort / "composition.parquet")
    cohort = load_cohort(str(args.cohort))
    clinical = cohort.clinical.set_index("patient_id")
    if "fold" not in clinical.columns:
        raise SystemExit(f"{args.cohort}: the clinical table has no fold column")
    slide_ids = comp["slide_id"].astype(str).tolist()
    folds = clinical.loc[comp["patient_id"], "fold"].to_numpy()
    targets = [t for t in TARGETS if t in comp.columns]
    rates: dict[str, float] = {}
    feats: dict[str, np.ndarray] = {}
    with tempfile.TemporaryDirectory(prefix="bench-composition-") as tmp:
        for fs, given in (("v1", args.features_v1), ("v2", args.features_v2)):
            where = given
            if where is None:
                where = Path(tmp) / fs
                rates[fs] = extract(args.cohort, where, fs)
            version = read_slide_features(feature_uri(where, slide_ids[0])).contract.version
            if not version.startswith(fs):
                raise SystemExit(f"{where}: features of stain-texture {version}, not {fs}")
            feats[fs] = pooled(where, slide_ids)
    print(f"cohort {args.cohort}: {len(slide_ids)} slides, {len(np.unique(folds))} folds")
    print(f"{'target':<18} {'v1 R2':>7} {'v1 r':>6} {'v2 R2':>7} {'v2 r':>6} {'v2/v1 R2':>9}")
    ratios = []
    for t in targets:
        y = comp[t].to_numpy(dtype=float)
        (r2a, ra), (r2b, rb) = (scores(y, ridge_oof(feats[fs], y, folds)) for fs in ("v1", "v2"))
        ratio = r2b / r2a if r2a > 0 else float("nan")
        ratios.append(ratio)
        print(f"{t:<18} {r2a:7.3f} {ra:6.3f} {r2b:7.3f} {rb:6.3f} {ratio:9.3f}")
    for fs, rate in rates.items():
        print(f"extraction {fs}: {rate:.1f} tiles/CPU-s")
    print(f"composition R2 v2/v1: {np.nanmean(ratios):.3f} (mean over {len(ratios)} targets)")


if __name__ == "__main__":
    main()
