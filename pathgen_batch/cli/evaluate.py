"""``pathgen-batch evaluate``: patient-level cross-validation of the PathGen protocol."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import click

from pathgen_batch.cli.train import data_options, epoch_line, set_threads
from pathgen_batch.config import load_json, replace, to_dict
from pathgen_batch.training.config import CVConfig


def _with_overrides(
    cfg: CVConfig, folds: int | None, epochs: int | None, seed: int | None
) -> CVConfig:
    over: dict[str, Any] = {}
    if folds is not None:
        over["folds"] = folds
    if seed is not None:
        over["seed"] = seed
    if epochs is not None:
        for key in ("generator", "fusion", "attention_mil", "omics_mlp"):
            over[key] = {**to_dict(getattr(cfg, key)), "epochs": epochs}
    return replace(cfg, **over)


@click.command()
@data_options
@click.option(
    "--folds",
    type=click.IntRange(min=2),
    default=None,
    help="New stratified folds [default: the cohort's fold column].",
)
@click.option("--quiet", is_flag=True, help="No per-epoch progress lines.")
def evaluate(
    cohort_dir: Path,
    features_dir: Path,
    out: Path,
    config_file: Path | None,
    epochs: int | None,
    seed: int | None,
    device: str,
    threads: int,
    folds: int | None,
    quiet: bool,
) -> None:
    """Cross-validate generator, fusion model and baselines; print and write the results.

    Writes metrics_per_fold.csv, fidelity_per_fold.csv, conformal_per_fold.csv, summary.json,
    table.txt, oof_predictions.parquet, synthetic_expression.parquet and histories.json.
    """
    from pathgen_batch.training.cv import run_cv
    from pathgen_batch.training.data import load_training_data

    set_threads(threads)
    cfg = load_json(CVConfig, config_file) if config_file else CVConfig()
    cfg = _with_overrides(cfg, folds, epochs, seed)
    t0 = time.perf_counter()
    data = load_training_data(cohort_dir, features_dir)

    def echo(line: str) -> None:
        click.echo(line, err=True)

    result = run_cv(
        data,
        cfg,
        out,
        device=device,
        progress=None if quiet else epoch_line,
        echo=echo,
    )
    click.echo(result.table())
    click.echo(f"\nresults in {out}; wall time {time.perf_counter() - t0:.1f}s")
