"""Typed errors of the model registry; all are :class:`~pathgen_batch.errors.PathgenError`."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pathgen_batch.errors import PathgenError

if TYPE_CHECKING:
    from pathgen_batch.registry.gate import GateReport


class RegistryError(PathgenError):
    """A registry operation cannot be done as asked."""


class RegistryUnavailableError(RegistryError):
    """The tracking or registry store cannot be reached; nothing was written."""


class RegistryPermissionError(RegistryError):
    """The registry refused the credentials, or the user may not do what was asked."""


class UnknownModelError(RegistryError):
    """No registered model, version, stage or alias of that name."""


class MissingArtifactsError(RegistryError):
    """A model version's artifacts (MLmodel, bundle files) are missing from the artifact store."""


class GateRefusedError(RegistryError):
    """The promotion gate refused a candidate; ``report`` says which checks failed."""

    def __init__(self, message: str, report: GateReport) -> None:
        super().__init__(message)
        self.report = report


class RegistryConflictError(RegistryError):
    """Concurrent registry changes left a state other than the one this operation made."""
