"""Entry point ``cohort``: build (or reuse) a cohort folder and log it."""

from __future__ import annotations

import hashlib
from pathlib import Path

import _common
import click

from pathgen_batch.config import replace, to_dict
from pathgen_batch.registry import tracked_run
from pathgen_batch.registry.tags import TAG_COHORT, TAG_DATA_DIGEST
from pathgen_batch.synth import CohortConfig, build_cohort


@click.command()
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True)
@click.option("--mode", type=click.Choice(["semi", "synthetic"]), default="semi")
@click.option("--n-patients", type=int, default=0, help="0 = the mode's default.")
@click.option("--n-genes", type=int, default=0, help="0 = the mode's default.")
@click.option("--slide-px", type=int, default=2048)
@click.option("--folds", type=int, default=5)
@click.option("--seed", type=int, default=0)
@click.option("--workers", type=int, default=0, help="Rendering processes, 0 = CPUs.")
@click.option("--workspace", default="workspace")
def main(
    out: Path,
    mode: str,
    n_patients: int,
    n_genes: int,
    slide_px: int,
    folds: int,
    seed: int,
    workers: int,
    workspace: str,
) -> None:
    given = {"mode": mode, "slide_px": slide_px, "folds": folds, "seed": seed}
    if n_patients > 0:
        given["n_patients"] = n_patients
    if n_genes > 0:
        given["n_genes"] = n_genes
    cfg = replace(CohortConfig(), **given)
    with tracked_run(_common.store(workspace), "cohort") as run:
        run.log_params(to_dict(cfg), prefix="cohort.")
        cohort = build_cohort(out, cfg, workers=workers or None)
        meta = out / "cohort.json"
        digest = "sha256:" + hashlib.sha256(meta.read_bytes()).hexdigest()
        run.set_tags(
            {
                TAG_COHORT: f"{out.resolve().name} ({cfg.mode}, {len(cohort.clinical)} patients)",
                TAG_DATA_DIGEST: digest,
                "pathgen.cohort_dir": str(out.resolve()),
            }
        )
        run.log_file(out / "gene_panel.csv", "gene_panel")
        run.log_file(meta, "cohort")
        run.log_text(cohort.inventory() + "\n", "cohort/inventory.txt")
        run.log_metrics(
            {
                "patients": float(len(cohort.clinical)),
                "genes": float(cohort.panel.n_genes),
                "events": float(cohort.clinical["event"].sum()),
            }
        )
        click.echo(f"cohort {out}: {len(cohort.clinical)} patients; run {run.run_id}")


if __name__ == "__main__":
    _common.run_main(main)
