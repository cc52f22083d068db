"""Reading the registry: models, versions, stages, aliases, artifacts and audit trails."""

from __future__ import annotations

import json
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import mlflow
from mlflow.entities.model_registry import ModelVersion, RegisteredModel
from mlflow.exceptions import MlflowException

from pathgen_batch.errors import ConfigError
from pathgen_batch.registry.errors import MissingArtifactsError, UnknownModelError
from pathgen_batch.registry.gate import VersionFacts
from pathgen_batch.registry.store import Store, as_registry_error, call
from pathgen_batch.registry.tags import (
    AUDIT_PREFIX,
    PRODUCTION,
    STAGE_ALIASES,
    STAGES,
    TAG_CONTRACT,
    TAG_CONTRACT_DIGEST,
    TAG_EVAL_DIGEST,
    TAG_KIND,
    TAG_PANEL_DIGEST,
    cv_from_run_metrics,
    cv_from_tags,
)

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")

BUNDLE_SUBPATH = "artifacts/bundle"  # the bundle folder inside a version's model artifacts
# files every registered version must have under its model artifact root
REQUIRED_FILES: dict[str, tuple[str, ...]] = {
    "generator": ("MLmodel", "artifacts/bundle/bundle.json", "artifacts/bundle/weights.pt"),
    "fusion": ("MLmodel", "artifacts/bundle/bundle.json", "artifacts/bundle/weights.pt"),
    "encoder": ("MLmodel", "artifacts/bundle/encoder.json"),
}


def check_model_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ConfigError(
            f"model name: expected letters, digits, '.', '_' or '-' (e.g. pathgen-generator), "
            f"got {name!r}"
        )
    return name


def get_registered(store: Store, name: str) -> RegisteredModel:
    """The registered model ``name``; UnknownModelError lists the registered names."""
    check_model_name(name)
    try:
        return store.client.get_registered_model(name)
    except MlflowException as e:
        if e.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise as_registry_error(e, f"model {name!r}") from e
    names = sorted(m.name for m in call("registered models", store.client.search_registered_models))
    shown = ", ".join(names) if names else "none"
    raise UnknownModelError(
        f"no registered model {name!r} in {store.registry_uri} (registered: {shown})"
    )


def list_versions(store: Store, name: str) -> list[ModelVersion]:
    """Every version of ``name``, oldest first (the model must exist)."""
    get_registered(store, name)
    found = call(f"versions of {name!r}", store.client.search_model_versions, f"name='{name}'")
    return sorted(found, key=lambda v: int(v.version))


def resolve_version(store: Store, name: str, ref: str | int) -> ModelVersion:
    """A version of ``name`` by number (``3``), stage (``Production``) or alias (``@champion``).

    The returned entity carries its aliases.
    """
    rm = get_registered(store, name)
    text = str(ref).strip()
    if text.isdigit():
        number = text
    elif text.startswith("@") or text in rm.aliases:
        alias = text.lstrip("@")
        if alias not in rm.aliases:
            shown = ", ".join(f"@{a}" for a in sorted(rm.aliases)) or "none"
            raise UnknownModelError(f"model {name!r} has no alias {alias!r} (aliases: {shown})")
        number = str(rm.aliases[alias])
    elif text.lower() in {s.lower() for s in STAGES}:
        stage = next(s for s in STAGES if s.lower() == text.lower())
        hits = [v for v in list_versions(store, name) if v.current_stage == stage]
        if not hits:
            raise UnknownModelError(f"model {name!r} has no version in stage {stage}")
        number = str(max(hits, key=lambda v: int(v.last_updated_timestamp or 0)).version)
    else:
        raise ConfigError(
            f"version of {name!r}: expected a number, a stage ({', '.join(STAGES)}) or "
            f"@alias, got {ref!r}"
        )
    try:
        return store.client.get_model_version(name, number)
    except MlflowException as e:
        if e.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise as_registry_error(e, f"{name} v{number}") from e
    have = ", ".join(str(v.version) for v in list_versions(store, name)) or "none"
    raise UnknownModelError(f"model {name!r} has no version {number} (versions: {have})")


def stage_versions(store: Store, name: str, stage: str) -> list[ModelVersion]:
    return [v for v in list_versions(store, name) if v.current_stage == stage]


def production_version(store: Store, name: str) -> ModelVersion | None:
    """The Production version of ``name`` (the champion when several claim it), or None."""
    try:
        rm = store.client.get_registered_model(check_model_name(name))
    except MlflowException as e:
        if e.error_code == "RESOURCE_DOES_NOT_EXIST":
            return None
        raise as_registry_error(e, f"model {name!r}") from e
    prod = stage_versions(store, name, PRODUCTION)
    if not prod:
        return None
    champion = rm.aliases.get(STAGE_ALIASES[PRODUCTION])
    for v in prod:
        if champion is not None and str(v.version) == str(champion):
            return v
    return max(prod, key=lambda v: int(v.last_updated_timestamp or 0))


def run_metrics(store: Store, run_id: str | None) -> dict[str, float]:
    if not run_id:
        return {}
    try:
        run = store.client.get_run(run_id)
    except MlflowException as e:
        if e.error_code == "RESOURCE_DOES_NOT_EXIST":
            return {}
        raise as_registry_error(e, f"run {run_id}") from e
    return dict(run.data.metrics)


def version_facts(store: Store, mv: ModelVersion) -> VersionFacts:
    """Gate facts of a version: its tags, and CV metrics from its tags or else its run."""
    tags = dict(mv.tags or {})
    metrics = cv_from_tags(tags) or cv_from_run_metrics(run_metrics(store, mv.run_id))
    return VersionFacts(
        name=mv.name,
        version=str(mv.version),
        kind=tags.get(TAG_KIND, "unknown"),
        stage=mv.current_stage or "None",
        metrics=metrics,
        contract_json=tags.get(TAG_CONTRACT),
        contract_digest=tags.get(TAG_CONTRACT_DIGEST),
        panel_digest=tags.get(TAG_PANEL_DIGEST),
        eval_digest=tags.get(TAG_EVAL_DIGEST),
    )


def artifact_uri(store: Store, mv: ModelVersion) -> str:
    """Where the version's model files are stored (``file://``, ``mlflow-artifacts:/``, ...)."""
    return str(
        call(
            f"{mv.name} v{mv.version} artifacts",
            store.client.get_model_version_download_uri,
            mv.name,
            str(mv.version),
        )
    )


def _listing(store: Store, uri: str) -> set[str]:
    try:
        infos = mlflow.artifacts.list_artifacts(artifact_uri=uri, tracking_uri=store.tracking_uri)
    except MlflowException as e:
        if e.error_code == "RESOURCE_DOES_NOT_EXIST":
            return set()
        raise as_registry_error(e, f"artifacts at {uri}") from e
    except OSError:
        return set()
    return {i.path.rsplit("/", 1)[-1] for i in infos or [] if not i.is_dir}


def check_artifacts(store: Store, mv: ModelVersion) -> str:
    """Raise MissingArtifactsError unless the version's required files exist; returns the URI."""
    kind = dict(mv.tags or {}).get(TAG_KIND, "generator")
    uri = artifact_uri(store, mv)
    required = REQUIRED_FILES.get(kind, ("MLmodel",))
    by_dir: dict[str, list[str]] = {}
    for f in required:
        d, _, base = f.rpartition("/")
        by_dir.setdefault(d, []).append(base)
    missing = []
    for d, names in by_dir.items():
        have = _listing(store, uri.rstrip("/") + ("/" + d if d else ""))
        missing += [f"{d}/{n}" if d else n for n in names if n not in have]
    if missing:
        raise MissingArtifactsError(
            f"{mv.name} v{mv.version}: artifacts missing at {uri}: {', '.join(missing)}; "
            "the version cannot be loaded"
        )
    return uri


def audit_trail(mv: ModelVersion) -> list[dict[str, Any]]:
    """The version's audit events (oldest first)."""
    events = []
    for k in sorted(t for t in (mv.tags or {}) if t.startswith(AUDIT_PREFIX)):
        try:
            events.append(json.loads(mv.tags[k]))
        except json.JSONDecodeError:
            events.append({"raw": mv.tags[k]})
    return events


@dataclass(frozen=True)
class VersionSummary:
    name: str
    version: str
    stage: str
    aliases: tuple[str, ...]
    kind: str
    run_id: str | None
    created: int
    metrics: dict[str, float]


def list_models(store: Store, names: list[str] | None = None) -> list[VersionSummary]:
    """One summary per version of the given (default: all) registered models."""
    if names is None:
        models = call("registered models", store.client.search_registered_models)
        names = sorted(m.name for m in models)
    out = []
    for name in names:
        rm = get_registered(store, name)
        by_version: dict[str, list[str]] = {}
        for alias, v in rm.aliases.items():
            by_version.setdefault(str(v), []).append(alias)
        for mv in list_versions(store, name):
            tags = dict(mv.tags or {})
            out.append(
                VersionSummary(
                    name=name,
                    version=str(mv.version),
                    stage=mv.current_stage or "None",
                    aliases=tuple(sorted(by_version.get(str(mv.version), []))),
                    kind=tags.get(TAG_KIND, "?"),
                    run_id=mv.run_id,
                    created=int(mv.creation_timestamp or 0),
                    metrics=cv_from_tags(tags),
                )
            )
    return out


def fetch_bundle(
    store: Store, name: str, version: str | int, dst: str | Path | None = None
) -> Path:
    """The bundle folder of a version (number, stage or ``@alias``) on this machine.

    A version in a local artifact store is returned in place; one behind a server is
    downloaded into ``dst`` (default: a new temporary folder). Artifacts are checked first.
    """
    mv = resolve_version(store, name, version)
    uri = check_artifacts(store, mv).rstrip("/")
    parsed = urlparse(uri)
    if parsed.scheme == "file":
        return Path(unquote(parsed.path)) / BUNDLE_SUBPATH
    dest = Path(dst) if dst is not None else Path(tempfile.mkdtemp(prefix=f"pathgen-{name}-"))
    dest.mkdir(parents=True, exist_ok=True)
    try:
        out = mlflow.artifacts.download_artifacts(
            artifact_uri=f"{uri}/{BUNDLE_SUBPATH}",
            dst_path=str(dest),
            tracking_uri=store.tracking_uri,
        )
    except MlflowException as e:
        raise as_registry_error(e, f"downloading {name} v{mv.version}") from e
    return Path(out)
