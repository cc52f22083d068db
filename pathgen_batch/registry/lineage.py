"""Run-to-registry lineage: from a registered version to the run that trained it."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from dataclasses import dataclass, field
from typing import Any

from mlflow.exceptions import MlflowException

from pathgen_batch.registry.store import Store, as_registry_error
from pathgen_batch.registry.tags import AUDIT_PREFIX, TAG_DATA_DIGEST
from pathgen_batch.registry.versions import artifact_uri, audit_trail, resolve_version


@dataclass(frozen=True)
class Lineage:
    """A registered version and its training run.

    run_*: None / empty when the version was registered without a run or the run is deleted.
    """

    name: str
    version: str
    stage: str
    aliases: tuple[str, ...]
    source: str  # the model URI the version was created from
    artifact_uri: str  # where its files are
    version_tags: dict[str, str]
    run_id: str | None
    run_name: str | None = None
    run_status: str | None = None
    run_start: str | None = None
    experiment_id: str | None = None
    run_artifact_uri: str | None = None
    params: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    run_tags: dict[str, str] = field(default_factory=dict)
    audit: tuple[dict[str, Any], ...] = ()

    @property
    def data_digest(self) -> str | None:
        return self.version_tags.get(TAG_DATA_DIGEST) or self.run_tags.get(TAG_DATA_DIGEST)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "stage": self.stage,
            "aliases": list(self.aliases),
            "source": self.source,
            "artifact_uri": self.artifact_uri,
            "data_digest": self.data_digest,
            "run": {
                "id": self.run_id,
                "name": self.run_name,
                "status": self.run_status,
                "start": self.run_start,
                "experiment_id": self.experiment_id,
                "artifact_uri": self.run_artifact_uri,
                "params": self.params,
                "metrics": self.metrics,
            },
            "tags": self.version_tags,
            "audit": list(self.audit),
        }

    def lines(self) -> list[str]:
        """Human-readable report, one fact per line."""
        alias = " ".join(f"@{a}" for a in self.aliases)
        out = [
            f"{self.name} v{self.version}  stage: {self.stage}  {alias}".rstrip(),
            f"  artifact URI : {self.artifact_uri}",
            f"  model source : {self.source}",
            f"  data digest  : {self.data_digest or '-'}",
        ]
        for k in sorted(self.version_tags):
            if not k.startswith(AUDIT_PREFIX) and k != TAG_DATA_DIGEST:
                out.append(f"  tag {k} = {self.version_tags[k]}")
        if self.run_id is None:
            out.append("  training run : none recorded")
        else:
            out += [
                f"  training run : {self.run_id} ({self.run_name or '-'}, {self.run_status or '?'}"
                f", started {self.run_start or '?'}, experiment {self.experiment_id or '?'})",
                f"  run artifacts: {self.run_artifact_uri or '-'}",
            ]
            out += [f"  param {k} = {self.params[k]}" for k in sorted(self.params)]
            out += [f"  metric {k} = {self.metrics[k]:.6g}" for k in sorted(self.metrics)]
        for e in self.audit:
            out.append("  audit " + json.dumps(e, sort_keys=True, default=str))
        return out


def _ts(ms: int | None) -> str | None:
    if not ms:
        return None
    return dt.datetime.fromtimestamp(ms / 1000, dt.timezone.utc).isoformat(timespec="seconds")


def lineage(store: Store, name: str, version: str | int) -> Lineage:
    """The lineage of ``name`` at ``version`` (number, stage or ``@alias``)."""
    mv = resolve_version(store, name, version)
    run = None
    status: str | None = None
    if mv.run_id:
        try:
            run = store.client.get_run(mv.run_id)
        except MlflowException as e:
            if e.error_code != "RESOURCE_DOES_NOT_EXIST":
                raise as_registry_error(e, f"run {mv.run_id} of {name} v{mv.version}") from e
            status = "deleted"
    common = Lineage(
        name=name,
        version=str(mv.version),
        stage=mv.current_stage or "None",
        aliases=tuple(sorted(mv.aliases or ())),
        source=str(mv.source),
        artifact_uri=artifact_uri(store, mv),
        version_tags=dict(mv.tags or {}),
        audit=tuple(audit_trail(mv)),
        run_id=mv.run_id or None,
        run_status=status,
    )
    if run is None:
        return common
    return dataclasses.replace(
        common,
        run_name=run.info.run_name,
        run_status=run.info.status,
        run_start=_ts(run.info.start_time),
        experiment_id=run.info.experiment_id,
        run_artifact_uri=run.info.artifact_uri,
        params=dict(run.data.params),
        metrics=dict(run.data.metrics),
        run_tags={k: v for k, v in run.data.tags.items() if not k.startswith("mlflow.")},
    )
