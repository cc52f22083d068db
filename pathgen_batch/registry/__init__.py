"""The model registry: the only code of the project that talks to MLflow.

::

    from pathgen_batch.registry import RegistryConfig, open_store, register_bundle, promote

    store = open_store(RegistryConfig(workspace="workspace"))     # or tracking_uri="http://..."
    v = register_bundle(store, "workspace/models/generator", eval_run_id=cv_run_id)
    register_encoder(store, "uni.pt", encoder="torchscript", options={"dim": 1024})
    promote(store, v.name, v.version, "Staging")
    promote(store, v.name, v.version, "Production")                # through the gate
    rollback(store, v.name, reason="drift on site B")

Stores (:mod:`.store`), registration of bundles as pyfunc models (:mod:`.register`,
:mod:`.pyfunc`), stages and aliases behind the gate (:mod:`.promote`, :mod:`.gate`), reads
and lineage (:mod:`.versions`, :mod:`.lineage`), run logging (:mod:`.tracking`) and what each
``pathgen-batch`` step logs into its run when tracking is on (:mod:`.step_logs`).
"""

import warnings

# mlflow.pyfunc warns at import time about its own "Any" type hints; that warning is about
# mlflow's code, not ours, and would fail test runs that treat warnings as errors.
with warnings.catch_warnings():
    warnings.filterwarnings(
        "ignore", message=r".*Any type hint is inferred as AnyType.*", category=UserWarning
    )
    import mlflow.pyfunc  # noqa: F401

from pathgen_batch.registry.encoder import EncoderWeights, fetch_encoder, find_encoder
from pathgen_batch.registry.errors import (
    GateRefusedError,
    MissingArtifactsError,
    RegistryConflictError,
    RegistryError,
    RegistryPermissionError,
    RegistryUnavailableError,
    UnknownModelError,
)
from pathgen_batch.registry.gate import (
    BaselineRule,
    GateConfig,
    GateReport,
    MetricRule,
    VersionFacts,
    evaluate_gate,
)
from pathgen_batch.registry.lineage import Lineage, lineage
from pathgen_batch.registry.promote import ChangeResult, model_lock, promote, rollback
from pathgen_batch.registry.register import Registered, register_bundle, register_encoder
from pathgen_batch.registry.store import (
    RegistryConfig,
    Store,
    default_tracking_uri,
    open_store,
)
from pathgen_batch.registry.tags import (
    ENCODER_MODEL,
    FUSION_MODEL,
    GENERATOR_MODEL,
    STAGE_ALIASES,
)
from pathgen_batch.registry.tracking import RunLog, cv_metrics, tracked_run
from pathgen_batch.registry.versions import (
    VersionSummary,
    audit_trail,
    check_artifacts,
    fetch_bundle,
    list_models,
    list_versions,
    production_version,
    resolve_version,
)

__all__ = [
    "ENCODER_MODEL",
    "FUSION_MODEL",
    "GENERATOR_MODEL",
    "STAGE_ALIASES",
    "BaselineRule",
    "ChangeResult",
    "EncoderWeights",
    "GateConfig",
    "GateRefusedError",
    "GateReport",
    "Lineage",
    "MetricRule",
    "MissingArtifactsError",
    "Registered",
    "RegistryConfig",
    "RegistryConflictError",
    "RegistryError",
    "RegistryPermissionError",
    "RegistryUnavailableError",
    "RunLog",
    "Store",
    "UnknownModelError",
    "VersionFacts",
    "VersionSummary",
    "audit_trail",
    "check_artifacts",
    "cv_metrics",
    "default_tracking_uri",
    "evaluate_gate",
    "fetch_bundle",
    "fetch_encoder",
    "find_encoder",
    "lineage",
    "list_models",
    "list_versions",
    "model_lock",
    "open_store",
    "production_version",
    "promote",
    "register_bundle",
    "register_encoder",
    "resolve_version",
    "rollback",
    "tracked_run",
]
