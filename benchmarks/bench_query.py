"""Queries over the output tables at archive scale: the current layout against the tuned one.

Writes synthetic outputs of S slides x G genes (``predictions`` and ``transcriptomes``, the
project's own table layout, through :class:`pathgen_batch.tables.io.PartWriter` exactly as a
run's consolidation streams them: slide after slide, in input order) once per layout, side by
side, then times through :class:`pathgen_batch.tables.query.OutputStore` (each query a fresh
store, best of ``--repeat``):

- ``query genes``: 10 genes x 100 slides (``OutputStore.genes``);
- ``query slide``: everything about one slide (``OutputStore.slide``);
- ``top-risk``: the 20 highest risks (``OutputStore.top_risk``);
- a full-table aggregate: mean expression per gene over every slide.

Layouts (``PartWriter`` settings; rows are slide-major in both):

- ``current``: row groups of 131,072 rows, part files of 2,000,000 rows;
- ``tuned``: one row group per slide, part files of 2,000,000 rows: a row group's
  ``slide_id`` statistics have min == max, which is what lets pyarrow (and DuckDB through it)
  skip row groups for ``slide_id IN (...)``; with several slides per row group (range
  statistics) ``IN`` prunes nothing (measured: row groups of 16,384 rows, 4 slides of 5,000
  genes, were no faster than ``current`` for ``query genes`` on 10,000 slides). The price:
  every query reads more footer metadata (``query slide`` slower) and each row group has its
  own dictionaries (larger files, slower full-table aggregates).

Ratios (current / tuned) are printed last. The default size finishes in a few minutes on 2
cores; ``--full`` is the archive size of the issue (10,000 slides x 20,000 genes, 200 million
rows; about 2.5 GB per layout, tens of minutes)::

    python benchmarks/bench_query.py                       # 2,000 slides x 5,000 genes
    python benchmarks/bench_query.py --slides 500 --genes 2000
    python benchmarks/bench_query.py --full
"""

from __future__ import annotations

import argparse
import math
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from pathgen_batch.features.contract import FeatureContract
from pathgen_batch.tables import Lineage, prediction_record, records_table, transcriptome_table
from pathgen_batch.tables.io import RUNS_FILE, PartWriter, partition_uri, write_table
from pathgen_batch.tables.query import OutputStore
from pathgen_batch.tables.schemas import PREDICTIONS, RUNS, TRANSCRIPTOMES

RUN = "bench"
CONTRACT = FeatureContract("stain-texture", "v1", 70, 224, 0.5)
LIN = Lineage("pathgen-generator", "1", "pathgen-fusion", "1", CONTRACT.to_json(), CONTRACT.digest)


@dataclass(frozen=True)
class Layout:
    name: str
    group_rows: int | None  # a row group closes at this many rows (whole slides); None: 1 slide
    part_rows: int = 2_000_000


LAYOUTS = (
    Layout("current", group_rows=131_072),
    Layout("tuned", group_rows=None),
)


def slide_ids(n: int) -> list[str]:
    return [f"S{i:06d}" for i in range(n)]


def gene_names(n: int) -> list[str]:
    return [f"GENE{i:05d}" for i in range(n)]


def write_outputs(root: Path, layout: Layout, n_slides: int, n_genes: int, seed: int) -> float:
    """One run of synthetic outputs under ``root`` in ``layout``; seconds taken."""
    t0 = time.perf_counter()
    out = str(root)
    genes = gene_names(n_genes)
    families = [f"family{i % 8}" for i in range(n_genes)]
    writer = PartWriter(
        partition_uri(out, "transcriptomes", RUN),
        TRANSCRIPTOMES,
        RUN,
        part_rows=layout.part_rows,
        group_rows=layout.group_rows or n_genes,
        group_per_write=layout.group_rows is None,
    )
    rng = np.random.default_rng(seed)
    base = rng.normal(5.0, 2.0, n_genes).astype(np.float32)  # (G,) per-gene level
    preds = []
    edges = np.array([0.0, 12.0, 24.0, 48.0, math.inf])
    for sid in slide_ids(n_slides):
        mean = base + rng.normal(0.0, 0.5, n_genes).astype(np.float32)  # (G,)
        std = np.abs(rng.normal(0.2, 0.05, n_genes)).astype(np.float32)
        writer.write(transcriptome_table(sid, genes, families, "sha256:p", mean, std, 8, LIN))
        hz = rng.uniform(0.05, 0.5, 4)
        preds.append(
            prediction_record(
                slide_id=sid,
                source_uri=f"s3://archive/{sid}.svs",
                patient_id=None,
                n_tiles=100,
                slide_mpp=0.5,
                mpp_source="aperio.MPP",
                grade_classes=["G1", "G2", "G3"],
                grade_probs=np.array([0.2, 0.3, 0.5]),
                grade_set=None,
                grade_set_alpha=None,
                bin_edges=edges,
                hazards=hz,
                risk=float(-np.cumprod(1 - hz).sum()),
                risk_lo=None,
                risk_hi=None,
                risk_interval_alpha=None,
                risk_cuts=None,
                gene_panel_digest="sha256:p",
                lineage=LIN,
            )
        )
    writer.close()
    pw = PartWriter(partition_uri(out, "predictions", RUN), PREDICTIONS, RUN)
    pw.write(records_table(preds, "predictions"))
    pw.close()
    now = "2025-01-01T00:00:00+00:00"
    row = {
        "status": "complete",
        "started_at": now,
        "finished_at": now,
        "archive": "s3://archive",
        "output": out,
        "n_slides": n_slides,
        "n_scored": n_slides,
        "n_failed": 0,
        "n_tiles": 100 * n_slides,
        "gene_panel_digest": "sha256:p",
        "features_written": False,
        "features_source_run": None,
        "timings_json": "{}",
        "config_json": "{}",
        "code_version": "bench",
        **LIN.to_dict(),
    }
    write_table(
        partition_uri(out, "runs", RUN), records_table([row], "runs"), RUNS, RUN, name=RUNS_FILE
    )
    return time.perf_counter() - t0


def best_of(fn: Callable[[], Any], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def queries(root: Path, n_slides: int, n_genes: int, seed: int) -> dict[str, Callable[[], Any]]:
    rng = np.random.default_rng(seed + 1)
    genes = [gene_names(n_genes)[i] for i in rng.choice(n_genes, 10, replace=False)]
    slides = [slide_ids(n_slides)[i] for i in rng.choice(n_slides, min(100, n_slides), False)]
    one = slide_ids(n_slides)[n_slides // 2]
    out = str(root)

    def genes_query() -> None:
        with OutputStore(out) as s:
            frame = s.genes(genes, slides)
        assert frame.shape == (len(slides), 2 + 2 * len(genes)), frame.shape

    def slide_query() -> None:
        with OutputStore(out) as s:
            summary = s.slide(one)
        assert len(summary.prediction) == 1 and len(summary.top_genes) == 10

    def top_risk() -> None:
        with OutputStore(out) as s:
            assert len(s.top_risk(20)) == 20

    def aggregate() -> None:
        with OutputStore(out) as s:
            per_gene = s.query(
                "SELECT gene, avg(mean) AS m, count(*) AS n FROM transcriptomes GROUP BY gene"
            )
        assert len(per_gene) == n_genes and int(per_gene["n"].iloc[0]) == n_slides

    return {
        "query genes (10 x 100)": genes_query,
        "query slide": slide_query,
        "top-risk 20": top_risk,
        "aggregate per gene": aggregate,
    }


def size_of(root: Path) -> tuple[int, int]:
    files = list((root / "transcriptomes").rglob("*.parquet"))
    return sum(f.stat().st_size for f in files), len(files)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--slides", type=int, default=2000)
    ap.add_argument("--genes", type=int, default=5000)
    ap.add_argument("--full", action="store_true", help="10,000 slides x 20,000 genes")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workdir", type=Path, default=None, help="[a temporary folder]")
    ap.add_argument("--keep", action="store_true", help="keep the outputs written")
    args = ap.parse_args()
    n_slides, n_genes = (10_000, 20_000) if args.full else (args.slides, args.genes)
    work = args.workdir or Path(tempfile.mkdtemp(prefix="pgb-bench-query-"))
    print(f"{n_slides} slides x {n_genes} genes = {n_slides * n_genes:,} transcriptome rows")
    results: dict[str, dict[str, float]] = {lay.name: {} for lay in LAYOUTS}
    try:
        runs = {}
        for layout in LAYOUTS:
            root = work / layout.name
            shutil.rmtree(root, ignore_errors=True)
            wrote = write_outputs(root, layout, n_slides, n_genes, args.seed)
            size, n_files = size_of(root)
            print(
                f"[{layout.name}] wrote in {wrote:.1f} s: {n_files} transcriptome files, "
                f"{size / 1e6:.1f} MB"
            )
            runs[layout.name] = queries(root, n_slides, n_genes, args.seed)
        for name in runs["current"]:
            for _ in range(args.repeat):
                for layout in LAYOUTS:
                    sec = best_of(runs[layout.name][name], 1)
                    best = results[layout.name].get(name, math.inf)
                    results[layout.name][name] = min(best, sec)
            print(f"{name:<24} " + "  ".join(f"{k} {v[name]:.3f} s" for k, v in results.items()))
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    cur, new = results["current"], results["tuned"]
    print("\nquery                     current    tuned   current/tuned")
    for name in cur:
        print(f"{name:<24} {cur[name]:8.3f} {new[name]:8.3f} {cur[name] / new[name]:10.1f}x")


if __name__ == "__main__":
    pa.set_cpu_count(pa.cpu_count())
    main()
