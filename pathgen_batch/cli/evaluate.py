"""``pathgen-batch evaluate``: patient-level cross-validation of the PathGen protocol.

The MLflow entry point ``evaluate`` runs this command; inside ``mlflow run`` (or with
``--track``) it logs the per-epoch losses, the cross-validated metrics as
``cv/<condition>/<metric>`` (what the promotion gate compares), the evaluation digest, plots and
the result tables.
"""

from __future__ import annotations

import time
from pathlib import Path

import click

from pathgen_batch.cli.cohort import cohort_settings, settings_options
from pathgen_batch.cli.options import (
    Tracking,
    cohort_option,
    cv_config_option,
    device_option,
    epochs_option,
    features_option,
    out_option,
    progress,
    seed_option,
    set_threads,
    threads_option,
    tracking_options,
)


@click.command()
@cohort_option
@settings_options
@features_option
@out_option("Output folder of the result tables.")
@cv_config_option
@epochs_option
@seed_option
@device_option("cpu")
@threads_option
@click.option(
    "--folds",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="Draw this many new stratified folds (>= 2); 0 = the cohort's fold column.",
)
@click.option("--quiet", is_flag=True, help="No per-epoch progress lines.")
@tracking_options
def evaluate(
    cohort_dir: Path,
    features_dir: Path,
    out: Path,
    config_file: Path | None,
    epochs: int,
    seed: int | None,
    device: str,
    threads: int,
    folds: int,
    quiet: bool,
    tracking: Tracking,
) -> None:
    """Cross-validate generator, fusion model and baselines; print and write the results.

    Writes metrics_per_fold.csv, fidelity_per_fold.csv, conformal_per_fold.csv, summary.json,
    table.txt, oof_predictions.parquet, synthetic_expression.parquet and histories.json.
    """
    from pathgen_batch.training.cv import plan_folds, run_cv
    from pathgen_batch.training.data import load_training_data
    from pathgen_batch.training.overrides import cv_config

    set_threads(threads)
    cfg = cv_config(config_file, epochs=epochs or None, folds=folds or None, seed=seed)
    t0 = time.perf_counter()
    data = load_training_data(cohort_dir, features_dir, settings=cohort_settings())

    def echo(line: str) -> None:
        click.echo(line, err=True)

    with tracking.run("evaluate") as run:
        if run is not None:
            from pathgen_batch.registry.step_logs import log_evaluation_start

            held_out = {
                p.fold: [data.patient_ids[i] for i in p.test] for p in plan_folds(data, cfg)
            }
            digest = log_evaluation_start(run, cohort_dir, data, held_out, cfg)
        result = run_cv(data, cfg, out, device=device, progress=progress(run, quiet), echo=echo)
        click.echo(result.table())
        click.echo(f"\nresults in {out}; wall time {time.perf_counter() - t0:.1f}s")
        if run is not None:
            from pathgen_batch.registry.step_logs import log_evaluation

            flat = log_evaluation(run, result, out)
            shown = {k: flat[k] for k in sorted(flat) if k.startswith(("synthetic/", "fidelity/"))}
            click.echo(f"evaluation run {run.run_id}, digest {digest}: {shown}")
