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
    count_option,
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
@count_option(
    "--folds", 0, 0, "Draw this many new stratified folds (>= 2); 0 = the cohort's fold column."
)
@count_option(
    "--repeats",
    1,
    1,
    "Repeat the K-fold CV this many times, each with new stratified folds and seed SEED + r "
    "(recorded); 1 = one CV on the folds above.",
)
@count_option(
    "--workers",
    1,
    0,
    "Processes training folds side by side, each with --threads torch threads; 0 = one per "
    "CPU. Results do not depend on it.",
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
    repeats: int,
    workers: int,
    quiet: bool,
    tracking: Tracking,
) -> None:
    """Cross-validate generator, fusion model and baselines; print and write the results.

    Beside the models: CoxNet on expression, Cox on grade, a Kaplan-Meier null, ridge from
    mean-pooled tiles and the fusion model fed ridge expression, on the same folds; corrected
    resampled t-tests (Holm across the table), TOST of synthetic vs real, bootstrap CIs of the
    pooled C. Writes metrics_per_fold.csv, fidelity_per_fold.csv, conformal_per_fold.csv,
    fidelity_baselines_per_fold.csv, summary.json, table.txt, oof_predictions.parquet,
    baseline_oof.parquet, synthetic_expression.parquet and histories.json (with R > 1 each
    repeat's own files in repeat_<r>/).
    """
    from pathgen_batch.training.data import load_training_data
    from pathgen_batch.training.overrides import cv_config
    from pathgen_batch.training.repeated_cv import (
        held_out_patients,
        plan_repeats,
        run_repeated_cv,
    )

    set_threads(threads)
    cfg = cv_config(config_file, epochs=epochs or None, folds=folds or None, seed=seed)
    t0 = time.perf_counter()
    data = load_training_data(cohort_dir, features_dir, settings=cohort_settings())

    def echo(line: str) -> None:
        click.echo(line, err=True)

    with tracking.run("evaluate") as run:
        if run is not None:
            from pathgen_batch.registry.step_logs import log_evaluation_start

            held_out = held_out_patients(data, plan_repeats(data, cfg, repeats))
            digest = log_evaluation_start(run, cohort_dir, data, held_out, cfg)
        result = run_repeated_cv(
            data,
            cfg,
            repeats,
            out,
            device=device,
            progress=progress(run, quiet),
            echo=echo,
            workers=workers,
        )
        click.echo(result.table())
        click.echo(f"\nresults in {out}; wall time {time.perf_counter() - t0:.1f}s")
        if run is not None:
            from pathgen_batch.registry.step_logs import log_evaluation

            flat = log_evaluation(run, result, out)
            shown = {k: flat[k] for k in sorted(flat) if k.startswith(("synthetic/", "fidelity/"))}
            click.echo(f"evaluation run {run.run_id}, digest {digest}: {shown}")
