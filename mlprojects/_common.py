"""Shared helpers of the MLproject entry points (run as ``python mlprojects/<entry>.py``)."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

import click

from pathgen_batch.config import load_json, replace, to_dict
from pathgen_batch.errors import PathgenError
from pathgen_batch.registry import RegistryConfig, Store, open_store
from pathgen_batch.registry.gate import evaluation_digest
from pathgen_batch.registry.tags import TAG_COHORT, TAG_DATA_DIGEST, TAG_EVAL_DIGEST
from pathgen_batch.registry.tracking import RunLog
from pathgen_batch.training.config import CVConfig

TRAINED = ("generator", "fusion", "attention_mil", "omics_mlp")


def run_main(command: click.Command) -> None:
    """Run a click entry point; a PathgenError is one line on stderr and exit status 2."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    try:
        command.main(standalone_mode=False)
    except PathgenError as e:
        click.echo(f"Error: {e}", err=True)
        sys.exit(2)
    except click.ClickException as e:
        e.show()
        sys.exit(e.exit_code)


def set_threads(threads: int) -> None:
    """torch intra-op threads: small models gain nothing from more on a shared CPU."""
    import torch

    if threads < 1:
        raise click.BadParameter(f"expected >= 1, got {threads}", param_hint="--threads")
    torch.set_num_threads(threads)


def store(workspace: str) -> Store:
    """The tracking store: MLFLOW_TRACKING_URI (set by `mlflow run`), else the workspace's."""
    return open_store(RegistryConfig(workspace=workspace))


def cv_config(path: str, epochs: int, folds: int) -> CVConfig:
    """CVConfig from a JSON file ("" = defaults); ``epochs`` > 0 caps every model's epochs,
    ``folds`` > 0 draws that many new stratified folds."""
    cfg = load_json(CVConfig, path) if path else CVConfig()
    if epochs > 0:
        data = to_dict(cfg)
        for name in TRAINED:
            data[name]["epochs"] = epochs
            data[name]["patience"] = min(data[name]["patience"], epochs)
        cfg = replace(cfg, **data)
    if folds > 0:
        cfg = replace(cfg, folds=folds)
    return cfg


def data_tags(cohort_dir: Path, data: Any) -> dict[str, str]:
    """Run tags naming the training cohort and the digest of the training data."""
    return {
        TAG_COHORT: f"{cohort_dir.resolve().name} ({data.n_patients} patients)",
        TAG_DATA_DIGEST: data.digest,
    }


def eval_digest(data: Any, cfg: CVConfig) -> str:
    """Evaluation digest of a cross-validation of ``data`` under ``cfg`` (held-out folds)."""
    from pathgen_batch.training.cv import plan_folds

    plans = plan_folds(data, cfg)
    return evaluation_digest(
        data.digest, {p.fold: [data.patient_ids[i] for i in p.test] for p in plans}
    )


def loss_figure(histories: dict[str, dict[str, Any]]) -> Any:
    """Per-epoch training and validation loss of each fit, one panel per fit."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = max(1, len(histories))
    fig, axes = plt.subplots(1, n, figsize=(4.5 * n, 3.2), squeeze=False)
    for ax, (name, h) in zip(axes[0], histories.items(), strict=False):
        ax.plot(range(1, len(h["train_loss"]) + 1), h["train_loss"], label="train")
        ax.plot(range(1, len(h["val_loss"]) + 1), h["val_loss"], label="validation")
        ax.axvline(h["best_epoch"], color="grey", linestyle=":", label="best epoch")
        ax.set_title(name)
        ax.set_xlabel("epoch")
        ax.set_ylabel("loss")
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def log_training(run: RunLog, kind: str, model: Any, cfg: Any, bundle: Path) -> None:
    """Configs, gene panel, contract, loss curves and the bundle manifest of a trained model."""
    import matplotlib.pyplot as plt

    run.log_config(kind, cfg)
    run.log_file(bundle / "gene_panel.csv", "gene_panel")
    run.log_file(bundle / "bundle.json", f"bundle_{kind}")
    run.log_dict(model.contract.to_dict(), "feature_contract.json")
    history = model.provenance.get("history")
    if isinstance(history, dict) and history.get("train_loss"):
        fig = loss_figure({kind: history})
        run.log_figure(fig, f"plots/{kind}_loss.png")
        plt.close(fig)
        run.log_metrics(
            {
                f"{kind}/best_epoch": float(history["best_epoch"]),
                f"{kind}/best_val_loss": float(history["best_val_loss"]),
            }
        )


__all__ = [
    "TAG_EVAL_DIGEST",
    "cv_config",
    "data_tags",
    "eval_digest",
    "log_training",
    "loss_figure",
    "run_main",
    "set_threads",
    "store",
]
