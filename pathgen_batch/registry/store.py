"""Where runs and registered models live: the tracking and registry store.

Resolution order of the tracking URI: the config's ``tracking_uri`` (CLI ``--tracking-uri``),
then ``MLFLOW_TRACKING_URI``, then the embedded default, a SQLite file inside the workspace::

    <workspace>/mlflow/mlflow.db        tracking + registry store
    <workspace>/mlflow/artifacts/       run and model artifacts

The registry URI is the config's ``registry_uri``, then ``MLFLOW_REGISTRY_URI``, then the
tracking URI. Experiments this package creates in a local SQLite store keep their artifacts in
``artifacts/`` next to the database file, never in the working directory's ``./mlruns``.

An ``http(s)://`` store is probed (``GET /health``) before anything is read or written, so a
server that is down gives one clear error and leaves no partial state.

An authenticated server (``mlflow server --app-name basic-auth``) takes MLflow's standard
``MLFLOW_TRACKING_USERNAME`` / ``MLFLOW_TRACKING_PASSWORD`` (or ``MLFLOW_TRACKING_TOKEN``);
mlflow reads them itself, this package never logs, tags or stores them, and a refused request is
one error naming the user and what was refused (:func:`as_registry_error`).
"""

from __future__ import annotations

import contextlib
import os
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import mlflow
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from pathgen_batch.errors import ConfigError
from pathgen_batch.registry.errors import (
    RegistryError,
    RegistryPermissionError,
    RegistryUnavailableError,
)

DEFAULT_WORKSPACE = "workspace"
DEFAULT_EXPERIMENT = "pathgen"
DB_NAME = "mlflow.db"
ARTIFACTS_DIR = "artifacts"

# mlflow's fluent API (start_run, log_model, register_model, load_model) reads process-global
# URIs; every use of it goes through Store.active(), serialised by this lock.
_GLOBAL_URI_LOCK = threading.RLock()


@dataclass(frozen=True)
class RegistryConfig:
    """How to reach the tracking and registry store.

    workspace: folder of the embedded default store (``<workspace>/mlflow/``).
    tracking_uri, registry_uri: explicit stores; None falls back to the environment
    (``MLFLOW_TRACKING_URI``, ``MLFLOW_REGISTRY_URI``), then to the workspace default.
    experiment: experiment that runs and registrations are logged under.
    timeout_s: how long the reachability probe of a remote store waits.
    """

    workspace: str = DEFAULT_WORKSPACE
    tracking_uri: str | None = None
    registry_uri: str | None = None
    experiment: str = DEFAULT_EXPERIMENT
    timeout_s: float = 5.0

    def __post_init__(self) -> None:
        if not isinstance(self.workspace, str) or not self.workspace.strip():
            raise ConfigError(
                f"RegistryConfig.workspace: expected a folder path, got {self.workspace!r}"
            )
        if not isinstance(self.experiment, str) or not self.experiment.strip():
            raise ConfigError(
                f"RegistryConfig.experiment: expected a non-empty name, got {self.experiment!r}"
            )
        for name in ("tracking_uri", "registry_uri"):
            v = getattr(self, name)
            if v is not None and (not isinstance(v, str) or not v.strip()):
                raise ConfigError(f"RegistryConfig.{name}: expected a URI or None, got {v!r}")
        t = self.timeout_s
        if isinstance(t, bool) or not isinstance(t, int | float) or not t > 0:
            raise ConfigError(f"RegistryConfig.timeout_s: expected a positive number, got {t!r}")


def default_tracking_uri(workspace: str | Path) -> str:
    """``sqlite:///<abs workspace>/mlflow/mlflow.db``."""
    db = Path(workspace).expanduser().resolve() / "mlflow" / DB_NAME
    return f"sqlite:///{db}"


def resolve_tracking_uri(cfg: RegistryConfig) -> str:
    return (
        cfg.tracking_uri
        or os.environ.get("MLFLOW_TRACKING_URI")
        or default_tracking_uri(cfg.workspace)
    )


def resolve_registry_uri(cfg: RegistryConfig) -> str:
    return cfg.registry_uri or os.environ.get("MLFLOW_REGISTRY_URI") or resolve_tracking_uri(cfg)


def sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI, else None."""
    if not uri.startswith("sqlite:///"):
        return None
    return Path(unquote(uri[len("sqlite:///") :]))


def is_remote(uri: str) -> bool:
    return urlparse(uri).scheme in ("http", "https")


def artifact_root_for(tracking_uri: str, workspace: str | Path) -> str | None:
    """Artifact location of experiments created here, or None to let a server decide."""
    if is_remote(tracking_uri) or tracking_uri.startswith("databricks"):
        return None
    db = sqlite_path(tracking_uri)
    root = (
        db.parent / ARTIFACTS_DIR
        if db is not None
        else Path(workspace).expanduser().resolve() / "mlflow" / ARTIFACTS_DIR
    )
    return root.resolve().as_uri()


def probe(uri: str, timeout_s: float) -> None:
    """Raise RegistryUnavailableError unless the store at ``uri`` answers (or can be created)."""
    if is_remote(uri):
        url = uri.rstrip("/") + "/health"
        try:
            with urllib.request.urlopen(url, timeout=timeout_s) as resp:
                status = resp.status
        except urllib.error.HTTPError as e:
            status = e.code
        except (urllib.error.URLError, OSError) as e:
            reason = getattr(e, "reason", e)
            raise RegistryUnavailableError(
                f"MLflow server {uri} is not reachable ({reason}); start it or point "
                "--tracking-uri / MLFLOW_TRACKING_URI at a running one"
            ) from e
        if status != 200:
            raise RegistryUnavailableError(
                f"MLflow server {uri} answered HTTP {status} to {url}; is it an MLflow server?"
            )
        return
    db = sqlite_path(uri)
    if db is not None:
        try:
            db.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise RegistryUnavailableError(
                f"tracking store {uri}: cannot create folder {db.parent} ({e})"
            ) from e


class Store:
    """An opened tracking + registry store (see :func:`open_store`)."""

    def __init__(self, cfg: RegistryConfig) -> None:
        self.config = cfg
        self.tracking_uri = resolve_tracking_uri(cfg)
        self.registry_uri = resolve_registry_uri(cfg)
        self.client = MlflowClient(tracking_uri=self.tracking_uri, registry_uri=self.registry_uri)
        self._experiment_id: str | None = None

    def __repr__(self) -> str:
        return f"Store(tracking={self.tracking_uri!r}, registry={self.registry_uri!r})"

    @property
    def is_remote(self) -> bool:
        return is_remote(self.tracking_uri) or is_remote(self.registry_uri)

    @property
    def authenticated_user(self) -> str | None:
        """The user name a remote store authenticates each request with, else None."""
        user = os.environ.get("MLFLOW_TRACKING_USERNAME", "").strip()
        return user if self.is_remote and user else None

    @property
    def artifact_root(self) -> str | None:
        return artifact_root_for(self.tracking_uri, self.config.workspace)

    def experiment_id(self) -> str:
        """Id of the configured experiment, created (with a local artifact root) if missing."""
        if self._experiment_id is not None:
            return self._experiment_id
        name = self.config.experiment
        exp = call(f"experiment {name!r}", self.client.get_experiment_by_name, name)
        if exp is None:
            try:
                exp_id = self.client.create_experiment(name, artifact_location=self.artifact_root)
            except MlflowException as e:
                if e.error_code != "RESOURCE_ALREADY_EXISTS":
                    raise as_registry_error(e, f"experiment {name!r}") from e
                again = self.client.get_experiment_by_name(name)
                if again is None:
                    raise as_registry_error(e, f"experiment {name!r}") from e
                exp_id = again.experiment_id
        else:
            if exp.lifecycle_stage == "deleted":
                raise RegistryError(
                    f"experiment {name!r} is deleted in {self.tracking_uri}; restore it or "
                    "choose another --experiment"
                )
            exp_id = exp.experiment_id
        self._experiment_id = str(exp_id)
        return self._experiment_id

    def experiment_artifact_location(self) -> str:
        """Artifact location of the configured experiment (created if missing)."""
        exp = call("experiment", self.client.get_experiment, self.experiment_id())
        return str(exp.artifact_location)

    @contextlib.contextmanager
    def active(self) -> Iterator[Store]:
        """Point mlflow's process-global URIs at this store for the duration of the block.

        The previous URIs (module state and the ``MLFLOW_*_URI`` environment variables that
        mlflow mirrors them to) are restored afterwards.
        """
        from mlflow.tracking._model_registry import utils as registry_utils
        from mlflow.tracking._tracking_service import utils as tracking_utils

        with _GLOBAL_URI_LOCK:
            env = {k: os.environ.get(k) for k in _URI_ENV}
            old_tracking = getattr(tracking_utils, "_tracking_uri", None)
            old_registry = getattr(registry_utils, "_registry_uri", None)
            mlflow.set_tracking_uri(self.tracking_uri)
            mlflow.set_registry_uri(self.registry_uri)
            try:
                yield self
            finally:
                mlflow.set_tracking_uri(old_tracking)  # type: ignore[arg-type]
                registry_utils._registry_uri = old_registry
                for k, v in env.items():
                    if v is None:
                        os.environ.pop(k, None)
                    else:
                        os.environ[k] = v


_URI_ENV = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")


def open_store(cfg: RegistryConfig | None = None) -> Store:
    """Resolve the URIs of ``cfg``, probe the store and return it; nothing is written."""
    cfg = cfg or RegistryConfig()
    store = Store(cfg)
    probe(store.tracking_uri, cfg.timeout_s)
    if store.registry_uri != store.tracking_uri:
        probe(store.registry_uri, cfg.timeout_s)
    return store


_NOT_FOUND = ("RESOURCE_DOES_NOT_EXIST", "NOT_FOUND")


def as_registry_error(e: MlflowException, what: str) -> RegistryError:
    """Translate an MlflowException into a typed registry error naming ``what``."""
    from pathgen_batch.registry.errors import UnknownModelError

    msg = str(e.message if hasattr(e, "message") else e).strip().splitlines()[0][:300]
    user = os.environ.get("MLFLOW_TRACKING_USERNAME", "").strip() or "anonymous"
    if e.error_code == "PERMISSION_DENIED" or "error code 403" in msg:
        return RegistryPermissionError(
            f"{what}: permission denied for MLflow user {user!r} (ask the server's admin for "
            "EDIT or MANAGE on this model)"
        )
    if e.error_code == "UNAUTHENTICATED" or "error code 401" in msg:
        return RegistryPermissionError(
            f"{what}: the MLflow server refused the credentials of user {user!r} (set "
            "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD)"
        )
    if e.error_code in _NOT_FOUND:
        return UnknownModelError(f"{what}: {msg}")
    lowered = msg.lower()
    if "max retries" in lowered or "connection" in lowered or "failed to establish" in lowered:
        return RegistryUnavailableError(f"{what}: store unreachable ({msg})")
    return RegistryError(f"{what}: {msg}")


def call(what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
    """Call an mlflow client function; its errors become typed registry errors."""
    try:
        return fn(*args, **kwargs)
    except MlflowException as e:
        raise as_registry_error(e, what) from e
