"""``pathgen-batch synth``: build and inspect the semi-synthetic cohort."""

from __future__ import annotations

import time
from pathlib import Path

import click

from pathgen_batch.cli.options import Tracking, count_option, out_option, tracking_options
from pathgen_batch.config import replace, to_dict
from pathgen_batch.synth import CohortConfig, build_cohort, load_built_cohort


@click.group()
def synth() -> None:
    """Build and inspect a cohort of slides, expression and outcomes."""


@synth.command()
@out_option("Cohort folder to write (reused when it already holds the same cohort).")
@click.option(
    "--mode",
    type=click.Choice(["semi", "synthetic"]),
    default="semi",
    show_default=True,
    help="semi: real breast-cancer patients (198); synthetic: simulated, any size.",
)
@click.option(
    "--n-patients",
    type=click.IntRange(min=0),
    default=None,
    help="Patients; 0 = the mode's default (semi: all 198).",
)
@click.option(
    "--n-genes",
    type=click.IntRange(min=0),
    default=None,
    help="Genes; 0 = the mode's default (semi: all 76).",
)
@click.option("--n-families", type=int, default=None, help="Gene families [default: 6].")
@click.option("--n-programs", type=int, default=None, help="Expression programs = tissue classes.")
@click.option("--slide-px", type=int, default=None, help="Slide side in pixels at level 0.")
@click.option("--seed", type=int, default=None, help="Random seed [default: 0].")
@click.option("--folds", type=int, default=None, help="Cross-validation folds [default: 5].")
@click.option(
    "--workers", type=click.IntRange(min=0), default=None, help="Rendering processes; 0 = CPUs."
)
@click.option(
    "--cohort-version",
    type=click.Choice(["1", "2"]),
    default=None,
    help="1: slides follow expression only; 2: also grade morphology [default: 2].",
)
@click.option(
    "--grade-morphology",
    type=click.FloatRange(0.0, 2.0),
    default=None,
    help="Strength of the grade morphology of version 2 [default: 1.0].",
)
@click.option("--overwrite", is_flag=True, help="Replace a cohort built with another config.")
@tracking_options
def cohort(
    out: Path,
    mode: str,
    n_patients: int | None,
    n_genes: int | None,
    n_families: int | None,
    n_programs: int | None,
    slide_px: int | None,
    seed: int | None,
    folds: int | None,
    workers: int | None,
    cohort_version: str | None,
    grade_morphology: float | None,
    overwrite: bool,
    tracking: Tracking,
) -> None:
    """Build a cohort folder: slides/, clinical, expression, gene panel, composition.

    The MLflow entry point ``cohort`` runs this command; inside ``mlflow run`` (or with
    --track) it logs the config, the cohort's digest, gene panel, inventory and counts.
    """
    given = {
        "mode": mode,
        "n_patients": n_patients or None,
        "n_genes": n_genes or None,
        "n_families": n_families,
        "n_programs": n_programs,
        "slide_px": slide_px,
        "seed": seed,
        "folds": folds,
        "version": int(cohort_version) if cohort_version else None,
        "grade_morphology": grade_morphology,
    }
    cfg = replace(CohortConfig(), **{k: v for k, v in given.items() if v is not None})
    with tracking.run("cohort") as run:
        t0 = time.perf_counter()
        c = build_cohort(out, cfg, workers=workers or None, overwrite=overwrite)
        n = len(c.clinical)
        how = "reused (same config)" if c.reused else f"built in {time.perf_counter() - t0:.1f} s"
        click.echo(
            f"cohort {out}: {n} patients, {len(c.slides)} slides, "
            f"{c.panel.n_genes} genes in {c.panel.n_families} families; {how}"
        )
        if run is not None:
            from pathgen_batch.registry.step_logs import log_cohort

            log_cohort(
                run,
                out,
                to_dict(cfg),
                n_patients=n,
                n_genes=c.panel.n_genes,
                n_events=int(c.clinical["event"].sum()),
                inventory=c.inventory(),
            )
            click.echo(f"cohort run {run.run_id}")


@synth.command()
@click.argument("cohort_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--features",
    "features_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Tile features of the cohort: also measure grade from the slide, from expression and "
    "from both, and expression from the slide (out of fold, untuned models).",
)
def inventory(cohort_dir: Path, features_dir: Path | None) -> None:
    """Summarise a cohort folder: grades, events, folds, families, slides, disk."""
    click.echo(load_built_cohort(cohort_dir).inventory())
    if features_dir is not None:
        from pathgen_batch.training.data import load_training_data
        from pathgen_batch.training.links import cohort_links, links_lines

        links = cohort_links(load_training_data(cohort_dir, features_dir))
        click.echo("\n".join(links_lines(links)))


@synth.command()
@click.argument("cohort_dir", type=click.Path(file_okay=False, exists=True, path_type=Path))
@out_option("Folder to copy the slides into (slides already there are kept).")
@count_option(
    "--fold",
    0,
    0,
    "Copy the slides of this fold's patients (the demo holds fold 0 out of training).",
)
@click.option(
    "--bad-files/--no-bad-files",
    default=True,
    show_default=True,
    help="Also write a truncated slide, an empty file, a text file and an undecodable slide.",
)
def archive(cohort_dir: Path, out: Path, fold: int, bad_files: bool) -> None:
    """Write an archive to score: one fold's slides of a local cohort, and four bad files."""
    from pathgen_batch.synth.archive import held_out_archive

    click.echo(held_out_archive(cohort_dir, out, fold, bad_files).summary())
