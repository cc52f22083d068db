"""Logging a training, evaluation or data run to the tracking store.

:func:`tracked_run` opens a run (or attaches to the one ``mlflow run`` created, found through
``MLFLOW_RUN_ID``) and yields a :class:`RunLog` whose methods log parameters (configs are
flattened to ``section.key``), per-epoch metrics (a progress callback for the fit loops),
cross-validated metrics (``cv/<condition>/<metric>``), files, figures and JSON.

Everything goes through an explicit client and run id, not mlflow's global "active run", so a
RunLog is safe to use from any thread.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlflow.entities import Metric, Param, RunTag

from pathgen_batch.registry.errors import RegistryError
from pathgen_batch.registry.store import Store, call, default_tracking_uri
from pathgen_batch.registry.tags import RUN_CV_PREFIX

log = logging.getLogger(__name__)

MAX_PARAM_LENGTH = 6000
_BATCH = 100


def flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}, "c": [1, 2]}`` -> ``{"a.b": 1, "c": "[1, 2]"}`` (lists as JSON)."""
    out: dict[str, Any] = {}
    for k, v in data.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(flatten(v, key + "."))
        elif isinstance(v, list | tuple):
            out[key] = json.dumps(list(v), default=str)
        else:
            out[key] = v
    return out


def cv_metrics(summary: Mapping[str, Any]) -> dict[str, float]:
    """Cross-validated means from a CV summary (``CVResult.summary()``), flat.

    ``metrics[condition][metric]["mean"]`` -> ``<condition>/<metric>``;
    ``fidelity[key]["mean"]`` -> ``fidelity/<key>``; in a repeated CV's summary, where
    ``fidelity`` holds one section per model, ``fidelity[model][key]["mean"]`` ->
    ``fidelity/<model>/<key>`` and the generator's also -> ``fidelity/<key>``;
    ``conformal[key]["mean"]`` -> ``conformal/<key>``. Non-finite values are left out.
    """
    out: dict[str, float] = {}

    def put(key: str, value: Any) -> None:
        number = isinstance(value, int | float) and not isinstance(value, bool)
        if number and math.isfinite(float(value)):
            out[key] = float(value)

    for cond, per_metric in (summary.get("metrics") or {}).items():
        for m, stats in per_metric.items():
            put(f"{cond}/{m}", (stats or {}).get("mean"))
    for section in ("fidelity", "conformal"):
        for k, stats in (summary.get(section) or {}).items():
            if not isinstance(stats, Mapping):
                continue
            if "mean" in stats:
                put(f"{section}/{k}", stats["mean"])
                continue
            for key, sub in stats.items():  # one section per model
                value = sub.get("mean") if isinstance(sub, Mapping) else None
                put(f"{section}/{k}/{key}", value)
                if k == "generator":
                    put(f"{section}/{key}", value)
    for k, v in (summary.get("pooled_fidelity") or {}).items():
        put(f"pooled_fidelity/{k}", v)
    return out


@dataclass
class RunLog:
    """Logging into one run of ``store``."""

    store: Store
    run_id: str

    def _batch(
        self,
        metrics: list[Metric] | None = None,
        params: list[Param] | None = None,
        tags: list[RunTag] | None = None,
    ) -> None:
        metrics, params, tags = metrics or [], params or [], tags or []
        for i in range(0, max(len(metrics), len(params), len(tags)), _BATCH):
            call(
                f"logging to run {self.run_id}",
                self.store.client.log_batch,
                self.run_id,
                metrics=metrics[i : i + _BATCH],
                params=params[i : i + _BATCH],
                tags=tags[i : i + _BATCH],
            )

    def log_params(self, params: Mapping[str, Any], prefix: str = "") -> None:
        """Log (nested) parameters; values are stringified, over-long ones truncated."""
        flat = flatten(params, prefix)
        items = []
        for k, v in flat.items():
            text = "None" if v is None else str(v)
            items.append(Param(k, text[:MAX_PARAM_LENGTH]))
        self._batch(params=items)

    def log_config(self, name: str, cfg: Any) -> None:
        """A dataclass config as parameters ``<name>.<field>`` and as ``configs/<name>.json``."""
        from pathgen_batch.config import to_dict

        data = to_dict(cfg)
        self.log_params(data, prefix=f"{name}.")
        self.log_dict(data, f"configs/{name}.json")

    def log_metrics(self, metrics: Mapping[str, float], step: int = 0) -> None:
        """Finite metrics at ``step``."""
        import time

        now = int(time.time() * 1000)
        items = [
            Metric(k, float(v), now, int(step))
            for k, v in metrics.items()
            if v is not None and math.isfinite(float(v))
        ]
        self._batch(metrics=items)

    def log_cv(self, summary: Mapping[str, Any]) -> dict[str, float]:
        """Log a CV summary's means as ``cv/<key>`` metrics and the summary as JSON."""
        flat = cv_metrics(summary)
        self.log_metrics({RUN_CV_PREFIX + k: v for k, v in flat.items()})
        self.log_dict(dict(summary), "cv/summary.json")
        return flat

    def progress(self, prefix: str = "") -> Any:
        """A fit-loop progress callback logging ``<model>/train_loss``, ``/val_loss`` and the
        selection score ``/val_<select_on>`` (when it is not the loss) per epoch (step =
        epoch)."""

        def callback(entry: Any) -> None:
            name = f"{prefix}{entry.model}"
            values = {f"{name}/train_loss": entry.train_loss, f"{name}/val_loss": entry.val_loss}
            score = getattr(entry, "val_score", None)
            if score is not None and score == score:  # the selection score, when not the loss
                values[f"{name}/val_{entry.select_on}"] = float(score)
            self.log_metrics(values, step=int(entry.epoch))

        return callback

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        self._batch(tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def log_file(self, path: str | Path, artifact_dir: str | None = None) -> None:
        self._log_artifact(Path(path), artifact_dir, folder=False)

    def log_dir(self, path: str | Path, artifact_dir: str | None = None) -> None:
        self._log_artifact(Path(path), artifact_dir, folder=True)

    def _log_artifact(self, p: Path, artifact_dir: str | None, *, folder: bool) -> None:
        if not (p.is_dir() if folder else p.is_file()):
            kind = "folder" if folder else "file"
            raise RegistryError(f"log_{'dir' if folder else 'file'}: {p} is not a {kind}")
        client = self.store.client
        log = client.log_artifacts if folder else client.log_artifact
        call(f"artifact{'s' if folder else ''} {p.name}", log, self.run_id, str(p), artifact_dir)

    def log_text(self, text: str, artifact_file: str) -> None:
        call(
            f"artifact {artifact_file}",
            self.store.client.log_text,
            self.run_id,
            text,
            artifact_file,
        )

    def log_dict(self, data: Mapping[str, Any], artifact_file: str) -> None:
        text = json.dumps(data, indent=2, sort_keys=True, default=str)
        self.log_text(text + "\n", artifact_file)

    def log_figure(self, figure: Any, artifact_file: str) -> None:
        """A matplotlib figure as an image artifact (saved here, then uploaded)."""
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / Path(artifact_file).name
            figure.savefig(out, dpi=100, bbox_inches="tight")
            parent = str(Path(artifact_file).parent)
            self.log_file(out, None if parent == "." else parent)


def launched_run_id() -> str | None:
    """The run ``mlflow run`` created for this process, if any."""
    rid = os.environ.get("MLFLOW_RUN_ID", "").strip()
    return rid or None


def warn_if_fallback_store(store: Store) -> None:
    """Log a warning when ``mlflow run`` put the run in mlflow's own default store
    (``./mlflow.db``) rather than the workspace store: set ``MLFLOW_TRACKING_URI``."""
    cwd_default = f"sqlite:///{Path.cwd().resolve() / 'mlflow.db'}"
    if launched_run_id() and store.tracking_uri == cwd_default:
        log.warning(
            "mlflow run logs to its own default store %s; to use the workspace store export "
            "MLFLOW_TRACKING_URI=%s before `mlflow run`",
            store.tracking_uri,
            default_tracking_uri(store.config.workspace),
        )


@contextlib.contextmanager
def tracked_run(
    store: Store, run_name: str, tags: Mapping[str, Any] | None = None
) -> Iterator[RunLog]:
    """A run to log into: the ``mlflow run`` launcher's (``MLFLOW_RUN_ID``), else a new one in
    the store's experiment. A new run ends FINISHED, or FAILED when the block raises; the
    launcher's run is ended by the launcher."""
    rid = launched_run_id()
    created = rid is None
    if rid is None:
        exp_id = store.experiment_id()
        run = call(
            f"new run in experiment {store.config.experiment!r}",
            store.client.create_run,
            exp_id,
            run_name=run_name,
        )
        rid = run.info.run_id
    else:
        warn_if_fallback_store(store)
        call(f"run {rid}", store.client.get_run, rid)
    runlog = RunLog(store, rid)
    if tags:
        runlog.set_tags(tags)
    try:
        yield runlog
    except BaseException:
        if created:
            with contextlib.suppress(RegistryError):
                call("end run", store.client.set_terminated, rid, "FAILED")
        raise
    if created:
        call("end run", store.client.set_terminated, rid, "FINISHED")
