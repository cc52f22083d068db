"""Promotion and rollback: stages, aliases in step, the gate and the audit trail.

Stages go None -> Staging -> Production -> Archived. MLflow deprecates stages in favour of
aliases, so both are kept in step: the Staging version holds the alias ``staging``, the
Production version ``champion``, and ``models:/NAME/Production`` and ``models:/NAME@champion``
resolve to the same version. At most one version is in Staging and one in Production; the
one they replace is archived.

Every change leaves an audit event on each version it touched (tag ``pathgen.audit.NNNN``,
JSON: action, stage, who (the user an authenticated MLflow server knows, see :func:`who`),
authenticated, host, when, why, forced, previous Production version, and for
promotions to Production the gate's report with every metric compared).

Concurrency: every change of one model runs under a lock (a thread lock plus an exclusive
``flock`` on a lock file: next to the SQLite database for a local store, in the temp folder for
a remote one, so it covers processes on one machine). After writing, the state is read back
and compared with what was written (compare-and-set): if another writer slipped in (a process
on another machine promoting the same model through a server), the most recent Production
transition wins, the others are archived, the alias follows, and the losing call raises
:class:`~pathgen_batch.registry.errors.RegistryConflictError`.

All reads and checks (version exists, artifacts present, gate) happen before the first write,
so a refused or failed call changes nothing.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import getpass
import hashlib
import json
import os
import socket
import tempfile
import threading
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlflow.entities.model_registry import ModelVersion

from pathgen_batch.errors import ConfigError
from pathgen_batch.registry.errors import (
    GateRefusedError,
    RegistryConflictError,
    RegistryError,
)
from pathgen_batch.registry.gate import (
    GateConfig,
    GateReport,
    VersionFacts,
    check_compat,
    evaluate_gate,
)
from pathgen_batch.registry.store import Store, call, sqlite_path
from pathgen_batch.registry.tags import (
    ARCHIVED,
    AUDIT_PREFIX,
    PRODUCTION,
    STAGE_ALIASES,
    STAGING,
    TAG_PREVIOUS_PRODUCTION,
    canonical_stage,
)
from pathgen_batch.registry.versions import (
    check_artifacts,
    get_registered,
    list_versions,
    production_version,
    resolve_version,
    version_facts,
)

_THREAD_LOCKS: dict[str, threading.Lock] = {}
_THREAD_LOCKS_GUARD = threading.Lock()
MAX_REASON = 2000


def who(store: Store | None = None) -> str:
    """The acting user: the user the MLflow server authenticated (a remote store with
    ``MLFLOW_TRACKING_USERNAME``), else ``PATHGEN_USER``, else the login name."""
    user = store.authenticated_user if store is not None else None
    if user is not None:
        return user
    env = os.environ.get("PATHGEN_USER", "").strip()
    if env:
        return env
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def lock_path(store: Store, name: str) -> Path:
    """The lock file of model ``name`` in ``store``."""
    db = sqlite_path(store.registry_uri)
    if db is not None:
        return db.parent / f".pathgen-registry-{name}.lock"
    key = hashlib.sha256(store.registry_uri.encode()).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / f"pathgen-registry-{key}-{name}.lock"


@contextlib.contextmanager
def model_lock(store: Store, name: str) -> Iterator[None]:
    """Exclusive lock on changes of model ``name`` (threads and processes of this machine)."""
    path = lock_path(store, name)
    with _THREAD_LOCKS_GUARD:
        tlock = _THREAD_LOCKS.setdefault(str(path), threading.Lock())
    with tlock:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a+") as fh:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


@dataclass(frozen=True)
class ChangeResult:
    """What a promotion or rollback did."""

    name: str
    version: str
    from_stage: str
    to_stage: str
    previous_production: str | None
    archived: tuple[str, ...]
    forced: bool
    gate: GateReport | None
    event: dict[str, Any]

    def summary(self) -> str:
        head = f"{self.name} v{self.version}: {self.from_stage} -> {self.to_stage}"
        parts = [head]
        if self.archived:
            parts.append("archived v" + ", v".join(self.archived))
        if self.gate is not None:
            parts.append(self.gate.summary() + (" (forced)" if self.forced else ""))
        return "; ".join(parts)


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def _event(store: Store, action: str, **fields: Any) -> dict[str, Any]:
    event = {"action": action, "who": who(store), "host": socket.gethostname(), "when": _now()}
    return event | {"authenticated": store.authenticated_user is not None} | fields


def _record(store: Store, name: str, version: str, event: dict[str, Any]) -> None:
    """Append ``event`` to the version's audit trail (tag ``pathgen.audit.NNNN``)."""
    mv = call(f"{name} v{version}", store.client.get_model_version, name, version)
    n = sum(1 for k in (mv.tags or {}) if k.startswith(AUDIT_PREFIX))
    text = json.dumps(event, sort_keys=True, separators=(",", ":"), default=str)
    call(
        f"audit of {name} v{version}",
        store.client.set_model_version_tag,
        name,
        version,
        f"{AUDIT_PREFIX}{n + 1:04d}",
        text,
    )


def _transition(store: Store, mv: ModelVersion, stage: str, archive_existing: bool) -> None:
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message=r".*transition_model_version_stage.*", category=FutureWarning
        )
        call(
            f"{mv.name} v{mv.version} -> {stage}",
            store.client.transition_model_version_stage,
            mv.name,
            str(mv.version),
            stage,
            archive_existing_versions=archive_existing,
        )


def _aliases_of(store: Store, name: str, version: str) -> list[str]:
    rm = get_registered(store, name)
    return [a for a, v in rm.aliases.items() if str(v) == str(version)]


def _drop_stage_aliases(store: Store, name: str, version: str, keep: str | None = None) -> None:
    for alias in _aliases_of(store, name, version):
        if alias in STAGE_ALIASES.values() and alias != keep:
            call(
                f"alias {alias} of {name}",
                store.client.delete_registered_model_alias,
                name,
                alias,
            )


def _set_alias(store: Store, name: str, alias: str, version: str) -> None:
    call(
        f"alias {alias} of {name}",
        store.client.set_registered_model_alias,
        name,
        alias,
        str(version),
    )


def _partners(store: Store, kind: str, gate: GateConfig) -> list[VersionFacts]:
    """Production versions of the models that must fit with a model of ``kind``."""
    out = []
    for other in ("generator", "fusion", "encoder"):
        if other == kind:
            continue
        mv = production_version(store, gate.name_of(other))
        if mv is not None:
            out.append(version_facts(store, mv))
    return out


def _settle(store: Store, name: str, stage: str, expected: str) -> tuple[str, ...]:
    """Compare-and-set check after a transition; repair a split state. Returns archived."""
    alias = STAGE_ALIASES[stage]
    holders = [v for v in list_versions(store, name) if v.current_stage == stage]
    rm = get_registered(store, name)
    current_alias = rm.aliases.get(alias)
    if [str(v.version) for v in holders] == [expected] and str(current_alias) == expected:
        return ()
    if not holders:
        raise RegistryConflictError(
            f"{name}: after moving v{expected} to {stage} no version is in {stage}; another "
            "change ran at the same time; inspect with `pathgen-batch models list`"
        )
    winner = max(holders, key=lambda v: (int(v.last_updated_timestamp or 0), int(v.version)))
    losers = [v for v in holders if v.version != winner.version]
    for v in losers:
        _transition(store, v, ARCHIVED, archive_existing=False)
    _set_alias(store, name, alias, str(winner.version))
    if str(winner.version) != expected:
        raise RegistryConflictError(
            f"{name}: a concurrent change moved v{winner.version} to {stage} after v{expected}; "
            f"v{winner.version} holds {stage} and @{alias}"
        )
    return tuple(str(v.version) for v in losers)


def promote(
    store: Store,
    name: str,
    version: str | int,
    stage: str = PRODUCTION,
    *,
    gate: GateConfig | None = None,
    force: bool = False,
    reason: str = "",
) -> ChangeResult:
    """Move a version to Staging, Production (through the gate) or Archived.

    ``force`` (with a ``reason``) overrides a gate refusal or archiving the Production
    version; missing artifacts are never overridden. Raises GateRefusedError (with the report)
    when the gate refuses, UnknownModelError for unknown names or versions,
    MissingArtifactsError when the version's files are gone.
    """
    try:
        target = canonical_stage(stage)
    except ValueError as e:
        raise ConfigError(str(e)) from e
    if target not in (STAGING, PRODUCTION, ARCHIVED):
        raise ConfigError(f"stage: can promote to Staging, Production or Archived, not {target}")
    reason = (reason or "").strip()[:MAX_REASON]
    if force and not reason:
        raise ConfigError("--force needs --reason: say why the gate is overridden")
    gate = gate or GateConfig()
    with model_lock(store, name):
        mv = resolve_version(store, name, version)
        v = str(mv.version)
        source = mv.current_stage or "None"
        label = f"{name} v{v}"
        if source == target:
            raise RegistryError(f"{label} is already in {target}")
        if target in (STAGING, PRODUCTION):
            check_artifacts(store, mv)
        if target == STAGING and source == PRODUCTION:
            raise RegistryError(
                f"{label} is in Production; promote another version or use rollback"
            )
        if target == ARCHIVED and source == PRODUCTION and not force:
            raise RegistryError(
                f"{label} is in Production; archiving it leaves no Production version "
                "(use rollback, or --force --reason)"
            )
        prod = production_version(store, name)
        prev = str(prod.version) if prod is not None and str(prod.version) != v else None
        report = None
        if target == PRODUCTION:
            facts = version_facts(store, mv)
            report = evaluate_gate(
                facts,
                version_facts(store, prod) if prev is not None and prod is not None else None,
                _partners(store, facts.kind, gate),
                gate.rules_for(facts.kind)
                if facts.kind in ("generator", "fusion", "encoder")
                else (),
                gate.same_evaluation,
                gate.baselines_for(facts.kind)
                if facts.kind in ("generator", "fusion", "encoder")
                else (),
            )
            if not report.passed and not force:
                raise GateRefusedError(report.summary(), report)
        superseded = [
            str(x.version)
            for x in list_versions(store, name)
            if x.current_stage == target and str(x.version) != v and target != ARCHIVED
        ]
        # checks done: from here on, writes
        _transition(store, mv, target, archive_existing=target in (STAGING, PRODUCTION))
        if target == ARCHIVED:
            _drop_stage_aliases(store, name, v)
        else:
            _set_alias(store, name, STAGE_ALIASES[target], v)
            _drop_stage_aliases(store, name, v, keep=STAGE_ALIASES[target])
        if target == PRODUCTION:
            call(
                f"{label} tags",
                store.client.set_model_version_tag,
                name,
                v,
                TAG_PREVIOUS_PRODUCTION,
                prev or "",
            )
        event = _event(
            store,
            "promote" if target != ARCHIVED else "archive",
            stage=target,
            from_stage=source,
            why=reason,
            forced=bool(force),
            overridden=report.failures if report is not None and not report.passed else [],
            previous_production=prev,
            gate=report.to_dict() if report is not None else None,
        )
        _record(store, name, v, event)
        for old in superseded:
            _record(
                store,
                name,
                old,
                _event(store, "superseded", stage=ARCHIVED, from_stage=target, by=v, why=reason),
            )
        archived = tuple(superseded)
        if target in (STAGING, PRODUCTION):
            archived += _settle(store, name, target, v)
        return ChangeResult(name, v, source, target, prev, archived, bool(force), report, event)


def rollback(
    store: Store,
    name: str,
    *,
    gate: GateConfig | None = None,
    force: bool = False,
    reason: str = "",
) -> ChangeResult:
    """Restore the version that was Production before the current one; archive the current.

    The restored version must still fit the other models' Production versions (feature
    contract, gene panel) unless ``force``; metrics are not compared (it passed the gate when
    it was promoted).
    """
    reason = (reason or "").strip()[:MAX_REASON]
    if force and not reason:
        raise ConfigError("--force needs --reason: say why the checks are overridden")
    gate = gate or GateConfig()
    with model_lock(store, name):
        get_registered(store, name)
        cur = production_version(store, name)
        if cur is None:
            raise RegistryError(f"model {name!r} has no Production version to roll back")
        cur_v = str(cur.version)
        prev = (cur.tags or {}).get(TAG_PREVIOUS_PRODUCTION, "")
        if not prev:
            raise RegistryError(
                f"{name} v{cur_v} was the first Production version: nothing to roll back to"
            )
        target = resolve_version(store, name, prev)
        check_artifacts(store, target)
        facts = version_facts(store, target)
        compat = [
            c for other in _partners(store, facts.kind, gate) for c in check_compat(facts, other)
        ]
        report = GateReport(facts, version_facts(store, cur), (), tuple(compat))
        if not report.passed and not force:
            raise GateRefusedError(
                f"rollback of {name} to v{prev} refused: " + "; ".join(report.failures), report
            )
        source = target.current_stage or "None"
        _transition(store, target, PRODUCTION, archive_existing=True)
        _set_alias(store, name, STAGE_ALIASES[PRODUCTION], prev)
        _drop_stage_aliases(store, name, prev, keep=STAGE_ALIASES[PRODUCTION])
        event = _event(
            store,
            "rollback",
            stage=PRODUCTION,
            from_stage=source,
            why=reason,
            forced=bool(force),
            replaces=cur_v,
            previous_production=cur_v,
            gate=report.to_dict(),
        )
        _record(store, name, prev, event)
        _record(
            store,
            name,
            cur_v,
            _event(
                store, "rolled_back", stage=ARCHIVED, from_stage=PRODUCTION, by=prev, why=reason
            ),
        )
        archived = (cur_v, *_settle(store, name, PRODUCTION, prev))
        return ChangeResult(
            name, prev, source, PRODUCTION, cur_v, archived, bool(force), report, event
        )
