"""Registering a model bundle as a new version of ``pathgen-generator`` or ``pathgen-fusion``.

The bundle is checked by loading it (every file digest, key and tensor shape), logged as a
pyfunc "model from code" into the training run (or a new registration run), and registered
with tags that carry the feature contract, gene panel digest, training cohort and data digest,
the evaluation digest and cross-validated metrics the gate compares, and the code version.
The package's Python sources travel with the model (``code_paths``), so any MLflow client
with the pinned requirements can load it.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
from mlflow.exceptions import MlflowException

import pathgen_batch
from pathgen_batch.errors import DataError
from pathgen_batch.registry.errors import RegistryError
from pathgen_batch.registry.pyfunc import (
    BUNDLE_ARTIFACT,
    input_example,
    pip_requirements,
    signature_for,
)
from pathgen_batch.registry.store import Store, as_registry_error, call
from pathgen_batch.registry.tags import (
    DEFAULT_NAMES,
    ENCODER_MODEL,
    TAG_CODE_VERSION,
    TAG_COHORT,
    TAG_CONTRACT,
    TAG_CONTRACT_DIGEST,
    TAG_DATA_DIGEST,
    TAG_EVAL_DIGEST,
    TAG_KIND,
    TAG_MODEL,
    TAG_N_GENES,
    TAG_PANEL_DIGEST,
    TAG_RISK_CUTS,
    cv_for_kind,
    cv_from_run_metrics,
    cv_tags,
)
from pathgen_batch.registry.versions import check_model_name

MODEL_CODE = Path(__file__).with_name("pyfunc_model.py")
MODEL_ARTIFACT_NAME = "model"
RUN_TAG_REGISTERED = "pathgen.registered"


@dataclass(frozen=True)
class Registered:
    """A new registered version."""

    name: str
    version: str
    run_id: str
    model_uri: str  # models:/<name>/<version>
    source: str  # the logged model's URI
    tags: dict[str, str]

    def summary(self) -> str:
        return f"registered {self.name} v{self.version} (run {self.run_id}): {self.model_uri}"


def code_version() -> str:
    """Package version, plus the git commit of the source tree when there is one."""
    version = pathgen_batch.__version__
    root = Path(pathgen_batch.__file__).resolve().parent.parent
    try:
        res = subprocess.run(
            ["git", "rev-parse", "--short=12", "HEAD"],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return version
    commit = res.stdout.strip()
    return f"{version}+g{commit}" if res.returncode == 0 and commit else version


def _copy_sources(dest: Path) -> Path:
    """Copy the package's ``.py`` files (no caches) to ``dest/pathgen_batch``."""
    src = Path(pathgen_batch.__file__).resolve().parent
    out = dest / "pathgen_batch"
    for f in src.rglob("*.py"):
        if "__pycache__" in f.parts:
            continue
        target = out / f.relative_to(src)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(f, target)
    return out


def version_tags(
    model: Any,
    *,
    cv: Mapping[str, float] | None = None,
    eval_digest: str | None = None,
    cohort: str | None = None,
    data_digest: str | None = None,
) -> dict[str, str]:
    """The registry tags of a loaded bundle (see :mod:`pathgen_batch.registry.tags`)."""
    prov = dict(getattr(model, "provenance", {}) or {})
    tags = {
        TAG_KIND: str(model.kind),
        TAG_MODEL: str(model.model_name),
        TAG_CONTRACT: model.contract.to_json(),
        TAG_CONTRACT_DIGEST: model.contract.digest,
        TAG_PANEL_DIGEST: model.panel.digest,
        TAG_N_GENES: str(model.panel.n_genes),
        TAG_CODE_VERSION: code_version(),
    }
    cuts = getattr(model, "risk_cuts", None)
    if cuts is not None:
        tags[TAG_RISK_CUTS] = json.dumps(cuts.to_dict(), sort_keys=True)
    digest = data_digest or prov.get("cohort_digest")
    if digest:
        tags[TAG_DATA_DIGEST] = str(digest)
    if cohort:
        tags[TAG_COHORT] = cohort
    if eval_digest:
        tags[TAG_EVAL_DIGEST] = eval_digest
    tags.update(cv_tags(cv_for_kind(cv or {}, str(model.kind))))
    return tags


@contextlib.contextmanager
def _in_run(store: Store, run_id: str | None, run_name: str) -> Iterator[str]:
    """Make ``run_id`` (or a new run) mlflow's active run; yields its id."""
    active = mlflow.active_run()
    if active is not None and (run_id is None or active.info.run_id == run_id):
        yield active.info.run_id
        return
    if run_id is not None:
        call(f"run {run_id}", store.client.get_run, run_id)
        with mlflow.start_run(run_id=run_id, nested=active is not None) as run:
            yield run.info.run_id
        return
    with mlflow.start_run(
        experiment_id=store.experiment_id(), run_name=run_name, nested=active is not None
    ) as run:
        yield run.info.run_id


def register_bundle(
    store: Store,
    bundle_dir: str | Path,
    *,
    name: str | None = None,
    run_id: str | None = None,
    eval_run_id: str | None = None,
    cv: Mapping[str, float] | None = None,
    eval_digest: str | None = None,
    cohort: str | None = None,
    data_digest: str | None = None,
    description: str | None = None,
) -> Registered:
    """Log ``bundle_dir`` as a pyfunc model and register it as a new version.

    run_id: the training run to log the model into (default: a new run ``register-<name>``).
    cv, eval_digest: the cross-validated metrics and evaluation digest the gate compares;
    default: the ``cv/*`` metrics and ``pathgen.eval_digest`` tag of ``eval_run_id`` (or of
    ``run_id``). name: default the bundle's own registry name.
    """
    from pathgen_batch.inference.bundle import load_bundle

    root = Path(bundle_dir)
    if not root.is_dir():
        raise DataError(f"bundle: {root} is not a folder")
    model = load_bundle(root)
    name = check_model_name(name or getattr(model, "name", None) or DEFAULT_NAMES[model.kind])
    source_run = eval_run_id or run_id
    if source_run is not None and (cv is None or eval_digest is None):
        run = call(f"run {source_run}", store.client.get_run, source_run)
        if cv is None:
            cv = cv_from_run_metrics(run.data.metrics)
        if eval_digest is None:
            eval_digest = run.data.tags.get(TAG_EVAL_DIGEST)
        if data_digest is None:
            data_digest = run.data.tags.get(TAG_DATA_DIGEST)
        if cohort is None:
            cohort = run.data.tags.get(TAG_COHORT)
    tags = version_tags(
        model, cv=cv, eval_digest=eval_digest, cohort=cohort, data_digest=data_digest
    )
    if eval_run_id:
        tags["pathgen.eval_run_id"] = eval_run_id
    return _log_and_register(
        store,
        stage=lambda dest: shutil.copytree(root, dest),
        code_file=MODEL_CODE,
        signature=signature_for(model),
        example=input_example(model),
        name=name,
        tags=tags,
        run_id=run_id,
        description=description,
        what=str(root),
    )


def _log_and_register(
    store: Store,
    *,
    stage: Callable[[Path], Any],
    code_file: Path,
    signature: Any,
    example: Any,
    name: str,
    tags: dict[str, str],
    run_id: str | None,
    description: str | None,
    what: str,
) -> Registered:
    """Stage the bundle artifact (``stage(dest)`` fills folder ``dest``), log it as a model
    from code into ``run_id`` (or a new run) and register a version of ``name``."""
    with tempfile.TemporaryDirectory(prefix="pathgen-register-") as tmp, store.active():
        code = _copy_sources(Path(tmp) / "code")
        staged = Path(tmp) / BUNDLE_ARTIFACT  # the artifact folder keeps the name "bundle"
        stage(staged)
        with _in_run(store, run_id, f"register-{name}") as rid:
            try:
                info = mlflow.pyfunc.log_model(
                    name=MODEL_ARTIFACT_NAME,
                    python_model=str(code_file),
                    artifacts={BUNDLE_ARTIFACT: str(staged)},
                    code_paths=[str(code)],
                    pip_requirements=pip_requirements(),
                    signature=signature,
                    input_example=example,
                )
                mv = mlflow.register_model(info.model_uri, name, tags=tags)
            except MlflowException as e:
                raise as_registry_error(e, f"registering {what} as {name!r}") from e
            version = str(mv.version)
            call("run tag", store.client.set_tag, rid, f"{RUN_TAG_REGISTERED}.{name}", version)
    if description:
        call(
            f"{name} v{version} description",
            store.client.update_model_version,
            name,
            version,
            description,
        )
    if mv.status not in (None, "READY"):
        raise RegistryError(f"{name} v{version}: registration ended in status {mv.status}")
    return Registered(name, version, rid, f"models:/{name}/{version}", str(info.model_uri), tags)


def register_encoder(
    store: Store,
    weights: str | Path,
    *,
    encoder: str = "torchscript",
    options: Mapping[str, Any] | None = None,
    name: str = ENCODER_MODEL,
    run_id: str | None = None,
    description: str | None = None,
) -> Registered:
    """Register a tile encoder that has a weights file as a version of ``pathgen-encoder``.

    The encoder is built once from ``weights`` and ``options`` (as ``features extract`` would)
    to fix its feature contract; the version carries the weights file and the contract, and
    loads back through :func:`pathgen_batch.features.encoder_for_contract`, which checks the
    weights' digest against the contract.
    """
    from pathgen_batch.registry.encoder import (
        ENCODER_CODE,
        build_registered_encoder,
        encoder_example,
        encoder_signature,
        write_encoder_bundle,
    )

    name = check_model_name(name)
    enc = build_registered_encoder(encoder, weights, options)
    tags = {
        TAG_KIND: "encoder",
        TAG_MODEL: enc.contract.encoder,
        TAG_CONTRACT: enc.contract.to_json(),
        TAG_CONTRACT_DIGEST: enc.contract.digest,
        TAG_CODE_VERSION: code_version(),
    }
    return _log_and_register(
        store,
        stage=lambda dest: write_encoder_bundle(dest, enc.contract, Path(weights)),
        code_file=ENCODER_CODE,
        signature=encoder_signature(enc.contract),
        example=encoder_example(enc.contract),
        name=name,
        tags=tags,
        run_id=run_id,
        description=description,
        what=str(weights),
    )
