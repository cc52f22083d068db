"""Entry point ``evaluate``: patient-level cross-validation of generator and fusion model.

Logs per-epoch losses of every fit, the cross-validated metrics as ``cv/<condition>/<metric>``
(what the promotion gate compares), the evaluation digest, plots and the result tables.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import _common
import click

from pathgen_batch.registry import tracked_run
from pathgen_batch.registry.tags import TAG_EVAL_DIGEST
from pathgen_batch.training.cv import run_cv
from pathgen_batch.training.data import load_training_data


def _metric_figure(result: Any) -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    frame = result.metrics  # (folds x conditions) rows, one column per metric
    shown = ("harrell_c", "macro_auc", "ibs")
    conds = list(dict.fromkeys(frame["condition"]))
    fig, axes = plt.subplots(1, len(shown), figsize=(4.5 * len(shown), 3.4), squeeze=False)
    for ax, m in zip(axes[0], shown, strict=True):
        data = [frame.loc[frame["condition"] == c, m].to_numpy() for c in conds]
        ax.boxplot(data)
        ax.set_xticks(range(1, len(conds) + 1), conds, rotation=30, ha="right", fontsize=8)
        ax.set_title(f"{m} per fold")
    fig.tight_layout()
    return fig


@click.command()
@click.option(
    "--cohort",
    "cohort_dir",
    type=click.Path(file_okay=False, exists=True, path_type=Path),
    required=True,
)
@click.option(
    "--features",
    "features_dir",
    type=click.Path(file_okay=False, exists=True, path_type=Path),
    required=True,
)
@click.option("--config", default="", help="CVConfig JSON; empty = defaults.")
@click.option("--epochs", type=int, default=0, help="Cap on epochs of every fit; 0 = config.")
@click.option("--folds", type=int, default=0, help="New stratified folds; 0 = cohort's.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True)
@click.option("--device", default="cpu")
@click.option("--threads", type=int, default=1, help="torch intra-op CPU threads.")
@click.option("--workspace", default="workspace")
def main(
    cohort_dir: Path,
    features_dir: Path,
    config: str,
    epochs: int,
    folds: int,
    out: Path,
    device: str,
    threads: int,
    workspace: str,
) -> None:
    _common.set_threads(threads)
    import matplotlib.pyplot as plt

    cfg = _common.cv_config(config, epochs, folds)
    data = load_training_data(cohort_dir, features_dir)
    digest = _common.eval_digest(data, cfg)
    with tracked_run(_common.store(workspace), "evaluate") as run:
        run.set_tags({**_common.data_tags(cohort_dir, data), TAG_EVAL_DIGEST: digest})
        run.log_config("cv", cfg)
        run.log_file(cohort_dir / "gene_panel.csv", "gene_panel")
        result = run_cv(data, cfg, out, device=device, progress=run.progress(), echo=click.echo)
        flat = run.log_cv(result.summary())
        for name in (
            "metrics_per_fold.csv",
            "fidelity_per_fold.csv",
            "conformal_per_fold.csv",
            "table.txt",
            "histories.json",
        ):
            run.log_file(out / name, "cv")
        fig = _metric_figure(result)
        run.log_figure(fig, "plots/cv_metrics.png")
        plt.close(fig)
        click.echo(result.table())
        shown = {k: flat[k] for k in sorted(flat) if k.startswith(("synthetic/", "fidelity/"))}
        click.echo(f"evaluation run {run.run_id}, digest {digest}: {shown}")


if __name__ == "__main__":
    _common.run_main(main)
