"""What each step of the project logs into its tracked run.

The ``pathgen-batch`` commands that ``mlflow run`` runs (``synth cohort``, ``features extract``,
``evaluate``, ``train generator``, ``train fusion``, ``models register``) call these inside
:func:`~pathgen_batch.registry.tracking.tracked_run` when tracking is on:

==================  ==========================================================================
cohort              params ``cohort.*``; tags cohort, data digest (sha256 of cohort.json),
                    cohort folder; artifacts gene_panel/, cohort/ (cohort.json, inventory.txt);
                    metrics patients, genes, events
features            params ``features.*``; tag feature contract digest; feature_contract.json;
                    metrics slides, slides_extracted, tiles, tiles_per_s
evaluate            tags cohort, data digest, eval digest; params ``cv.*`` + configs/cv.json;
                    gene_panel/; per-epoch losses; ``cv/<condition>/<metric>`` means,
                    cv/summary.json and the per-fold tables; plots/cv_metrics.png
train generator,    tags cohort, data digest; params ``<kind>.*`` + configs/<kind>.json;
train fusion        per-epoch losses; gene_panel/, bundle_<kind>/bundle.json,
                    feature_contract.json, plots/<kind>_loss.png; metrics best epoch and
                    best validation loss; the bundle registered as a new version
register            tag ``pathgen.registered_version``
==================  ==========================================================================
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pathgen_batch import storage
from pathgen_batch.registry.gate import evaluation_digest
from pathgen_batch.registry.register import Registered, register_bundle
from pathgen_batch.registry.tags import TAG_COHORT, TAG_DATA_DIGEST, TAG_EVAL_DIGEST
from pathgen_batch.registry.tracking import RunLog

CV_FILES = (
    "metrics_per_fold.csv",
    "fidelity_per_fold.csv",
    "conformal_per_fold.csv",
    "table.txt",
    "histories.json",
)
CV_PLOTTED = ("harrell_c", "macro_auc", "ibs")


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _log_figure(run: RunLog, fig: Any, artifact_file: str) -> None:
    try:
        run.log_figure(fig, artifact_file)
    finally:
        _pyplot().close(fig)


def data_tags(cohort_dir: Path, data: Any) -> dict[str, str]:
    """Run tags naming the training cohort and the digest of the training data
    (``TrainingData``: ``n_patients``, ``digest``)."""
    return {
        TAG_COHORT: f"{Path(cohort_dir).resolve().name} ({data.n_patients} patients)",
        TAG_DATA_DIGEST: data.digest,
    }


def log_cohort(
    run: RunLog,
    cohort_dir: Path,
    params: Mapping[str, Any],
    *,
    n_patients: int,
    n_genes: int,
    n_events: int,
    inventory: str,
) -> None:
    """A built cohort: its config, digest, gene panel, metadata, inventory and counts."""
    root = Path(cohort_dir)
    meta = root / "cohort.json"
    run.log_params(params, prefix="cohort.")
    run.set_tags(
        {
            TAG_COHORT: f"{root.resolve().name} ({params.get('mode')}, {n_patients} patients)",
            TAG_DATA_DIGEST: "sha256:" + hashlib.sha256(meta.read_bytes()).hexdigest(),
            "pathgen.cohort_dir": str(root.resolve()),
        }
    )
    run.log_file(root / "gene_panel.csv", "gene_panel")
    run.log_file(meta, "cohort")
    run.log_text(inventory + "\n", "cohort/inventory.txt")
    run.log_metrics(
        {"patients": float(n_patients), "genes": float(n_genes), "events": float(n_events)}
    )


def log_features(run: RunLog, params: Mapping[str, Any], contract: Any, results: list[Any]) -> None:
    """A feature extraction: settings, the encoder's contract and what was extracted.

    ``results``: one ``SlideResult`` (status, n_tiles, seconds) per slide."""
    run.log_params(params, prefix="features.")
    run.log_dict(contract.to_dict(), "feature_contract.json")
    run.set_tags({"pathgen.feature_contract_digest": contract.digest})
    done = [r for r in results if r.status == "done"]
    tiles = sum(r.n_tiles for r in done)
    secs = sum(r.seconds for r in done)
    run.log_metrics(
        {
            "slides": float(len(results)),
            "slides_extracted": float(len(done)),
            "tiles": float(tiles),
            "tiles_per_s": tiles / secs if secs > 0 else 0.0,
        }
    )


def loss_figure(histories: Mapping[str, Mapping[str, Any]]) -> Any:
    """Per-epoch training and validation loss of each fit, one panel per fit."""
    plt = _pyplot()
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


def log_trained(run: RunLog, kind: str, model: Any, cfg: Any, bundle: str | Path) -> None:
    """A trained model's config, gene panel, contract, loss curves and bundle manifest (the
    bundle in a folder or on S3: its small files are read through the storage door)."""
    run.log_config(kind, cfg)
    for name, artifact in (("gene_panel.csv", "gene_panel"), ("bundle.json", f"bundle_{kind}")):
        text = storage.read_bytes(storage.join(str(bundle), name)).decode()
        run.log_text(text, f"{artifact}/{name}")
    run.log_dict(model.contract.to_dict(), "feature_contract.json")
    history = model.provenance.get("history")
    if isinstance(history, dict) and history.get("train_loss"):
        _log_figure(run, loss_figure({kind: history}), f"plots/{kind}_loss.png")
        run.log_metrics(
            {
                f"{kind}/best_epoch": float(history["best_epoch"]),
                f"{kind}/best_val_loss": float(history["best_val_loss"]),
                **(
                    {f"{kind}/best_val_{history['select_on']}": float(history["best_val_score"])}
                    if history.get("select_on", "loss") != "loss"
                    else {}
                ),
            }
        )


def register_trained(run: RunLog, bundle: str | Path, eval_run_id: str | None) -> Registered:
    """Register ``bundle`` as a new version logged into ``run``."""
    return register_bundle(run.store, bundle, run_id=run.run_id, eval_run_id=eval_run_id)


def metric_figure(metrics: Any) -> Any:
    """Box plots per condition of the CV metrics in ``CV_PLOTTED``; ``metrics``: a frame of
    (fold x condition) rows with a ``condition`` column and one column per metric."""
    plt = _pyplot()
    conds = list(dict.fromkeys(metrics["condition"]))
    fig, axes = plt.subplots(1, len(CV_PLOTTED), figsize=(4.5 * len(CV_PLOTTED), 3.4))
    for ax, m in zip(axes, CV_PLOTTED, strict=True):
        ax.boxplot([metrics.loc[metrics["condition"] == c, m].to_numpy() for c in conds])
        ax.set_xticks(range(1, len(conds) + 1), conds, rotation=30, ha="right", fontsize=8)
        ax.set_title(f"{m} per fold")
    fig.tight_layout()
    return fig


def log_evaluation_start(
    run: RunLog,
    cohort_dir: Path,
    data: Any,
    held_out: Mapping[int, Sequence[str]],
    cfg: Any,
) -> str:
    """Before a cross-validation of ``data`` (``n_patients``, ``digest``) with ``held_out``
    patients per fold: data and evaluation digests, the config, the gene panel. Returns the
    evaluation digest."""
    digest = evaluation_digest(data.digest, held_out)
    run.set_tags({**data_tags(cohort_dir, data), TAG_EVAL_DIGEST: digest})
    run.log_config("cv", cfg)
    run.log_file(Path(cohort_dir) / "gene_panel.csv", "gene_panel")
    return digest


def log_evaluation(run: RunLog, result: Any, out: Path) -> dict[str, float]:
    """A cross-validation's results (``CVResult`` written to ``out``); returns the flat means."""
    flat = run.log_cv(result.summary())
    for name in CV_FILES:
        run.log_file(Path(out) / name, "cv")
    _log_figure(run, metric_figure(result.metrics), "plots/cv_metrics.png")
    return flat
