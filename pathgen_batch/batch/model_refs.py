"""Which models a run scores with, and the checks made before any slide is read.

A model is given either as a bundle folder (``--generator DIR``) or as a registry URI
(``models:/pathgen-generator/Production``, ``models:/pathgen-fusion/3``,
``models:/pathgen-fusion@champion``). A registry URI is resolved once, on the driver, to a
version number, so every worker of a run uses the same version even if Production moves
during the run. Generator and fusion model must share their feature contract and gene panel;
:func:`check_pair` compares them from the bundles' manifests and panels, without loading
weights. Bundles are loaded with ``torch.load(weights_only=True)`` (no unpickling).
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import unquote, urlparse

from pathgen_batch import storage
from pathgen_batch.errors import ConfigError, DataError
from pathgen_batch.features.contract import FeatureContract
from pathgen_batch.omics.panel import GenePanel

Kind = Literal["generator", "fusion"]
DEFAULT_GENERATOR = "models:/pathgen-generator/Production"
DEFAULT_FUSION = "models:/pathgen-fusion/Production"
_BUNDLE_IN_ARTIFACTS = ("artifacts", "bundle")


@dataclass(frozen=True)
class ModelRef:
    """A resolved model: where its bundle is and what to call it in the output tables.

    uri: what was asked for; name, version: registered name and version number (or the
    bundle's own name and ``bundle:<digest>`` for a folder); path: the bundle folder on the
    driver's machine; pinned: ``models:/name/<version>`` for registry models.
    """

    uri: str
    kind: Kind
    name: str
    version: str
    path: str
    pinned: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class RegistryAccess:
    """How to reach the model registry (see ``pathgen_batch.registry.RegistryConfig``)."""

    workspace: str = "workspace"
    tracking_uri: str | None = None


def is_registry_uri(uri: str) -> bool:
    return uri.startswith("models:/")


def parse_registry_uri(uri: str) -> tuple[str, str]:
    """``models:/name/ref`` or ``models:/name@alias`` -> (name, ref); ref keeps '@' for aliases."""
    body = uri[len("models:/") :].strip("/")
    if "@" in body and "/" not in body:
        name, alias = body.split("@", 1)
        ref = f"@{alias}"
    elif body.count("/") == 1:
        name, ref = body.split("/")
    else:
        raise ConfigError(
            f"model URI {uri!r}: expected models:/<name>/<version|stage> or models:/<name>@<alias>"
        )
    if not name or not ref or ref == "@":
        raise ConfigError(f"model URI {uri!r}: name and version/stage/alias must not be empty")
    return name, ref


def _manifest(path: Path) -> dict[str, Any]:
    from pathgen_batch.inference.bundle import read_manifest

    return read_manifest(path)


def bundle_version(path: Path) -> str:
    """``bundle:<first 16 hex of sha256(bundle.json)>``: the manifest lists every file's digest,
    so equal versions mean identical bundles."""
    data = (path / "bundle.json").read_bytes()
    return "bundle:" + hashlib.sha256(data).hexdigest()[:16]


def _local_artifact_path(uri: str) -> Path | None:
    parsed = urlparse(uri)
    if parsed.scheme == "file":
        return Path(unquote(parsed.path))
    if parsed.scheme == "" and uri.startswith("/"):
        return Path(uri)
    return None


def _from_registry(uri: str, kind: Kind, access: RegistryAccess) -> ModelRef:
    from pathgen_batch import registry

    name, ref = parse_registry_uri(uri)
    store = registry.open_store(
        registry.RegistryConfig(workspace=access.workspace, tracking_uri=access.tracking_uri)
    )
    mv = registry.resolve_version(store, name, ref)
    version = str(mv.version)
    root = _local_artifact_path(registry.check_artifacts(store, mv))
    if root is not None:
        path = root.joinpath(*_BUNDLE_IN_ARTIFACTS)
    else:
        path = registry.fetch_bundle(store, name, version)
    return ModelRef(
        uri=uri,
        kind=kind,
        name=name,
        version=version,
        path=str(path),
        pinned=f"models:/{name}/{version}",
    )


def resolve_model(uri: str, kind: Kind, access: RegistryAccess | None = None) -> ModelRef:
    """A bundle folder or registry URI -> :class:`ModelRef` (manifest checked, kind checked)."""
    if not isinstance(uri, str) or not uri.strip():
        raise ConfigError(f"{kind}: expected a bundle folder or models:/ URI, got {uri!r}")
    if is_registry_uri(uri):
        ref = _from_registry(uri, kind, access or RegistryAccess())
    else:
        p = Path(uri).expanduser()
        if not p.is_dir():
            raise ConfigError(f"{kind}: bundle folder {p} not found")
        m = _manifest(p)
        ref = ModelRef(
            uri=uri,
            kind=kind,
            name=str(m["name"]),
            version=bundle_version(p),
            path=str(p.resolve()),
        )
    m = _manifest(Path(ref.path))
    if m["kind"] != kind:
        raise ConfigError(f"{kind}: {uri} is a {m['kind']} bundle, not a {kind}")
    return ref


@dataclass(frozen=True)
class PairInfo:
    """What generator and fusion model agree on."""

    contract: FeatureContract
    panel: GenePanel
    grade_classes: tuple[str, ...]


def check_pair(generator: ModelRef, fusion: ModelRef) -> PairInfo:
    """Compare feature contracts and gene panels of the two bundles (manifests and panels
    only); a DataError names every field that differs."""
    gm, fm = _manifest(Path(generator.path)), _manifest(Path(fusion.path))
    gc = FeatureContract.from_dict(gm["feature_contract"])
    fc = FeatureContract.from_dict(fm["feature_contract"])
    what = (
        f"generator {generator.name} {generator.version} vs fusion {fusion.name} {fusion.version}"
    )
    gc.check_matches(fc, what=f"feature contract of {what}")
    gp = GenePanel.read(Path(generator.path) / "gene_panel.csv")
    fp = GenePanel.read(Path(fusion.path) / "gene_panel.csv")
    if gp.digest != gm["gene_panel_digest"] or fp.digest != fm["gene_panel_digest"]:
        raise DataError(f"{what}: a gene panel file does not match its bundle's manifest")
    if gp.digest != fp.digest:
        gp.check_matches(fp, what=f"gene panel of {what}")
        raise DataError(f"gene panel of {what} mismatch: digests {gp.digest} vs {fp.digest}")
    return PairInfo(contract=gc, panel=gp, grade_classes=tuple(fm["grade_classes"]))


@dataclass(frozen=True)
class EncoderRef:
    """The weights of the models' encoder: a file on the driver or an ``s3://`` object (None
    for an encoder without weights) and, for a registry version, its pinned URI (workers
    elsewhere fetch it again)."""

    path: str | None = None
    pinned: str | None = None


def resolve_encoder(
    spec: str | None, contract: FeatureContract, access: RegistryAccess | None = None
) -> EncoderRef:
    """The weights of ``contract``'s encoder from ``spec`` (a file, a registry URI, or None:
    the newest registered version with exactly this contract), checked against it."""
    from pathgen_batch.features import check_weights
    from pathgen_batch.features.encoders import get_entry

    if not get_entry(contract.encoder).needs_weights:
        if spec is not None:
            raise ConfigError(
                f"encoder_weights: the models' encoder {contract.encoder} takes no weights"
            )
        return EncoderRef()
    if spec is not None and not is_registry_uri(spec):
        check_weights(contract, spec)
        if storage.is_s3(spec):  # every node fetches it into its own cache
            return EncoderRef(path=spec)
        return EncoderRef(path=str(Path(spec).expanduser().resolve()))
    from pathgen_batch import registry

    access = access or RegistryAccess()
    store = registry.open_store(
        registry.RegistryConfig(workspace=access.workspace, tracking_uri=access.tracking_uri)
    )
    if spec is None:
        found = registry.find_encoder(store, contract)
        if found is None:
            raise ConfigError(
                f"the models were trained on features of {contract.describe()}; give that "
                "encoder's weights (--encoder-weights FILE or models:/pathgen-encoder/<version>) "
                "or register them (pathgen-batch models register-encoder)"
            )
    else:
        name, ref = parse_registry_uri(spec)
        found = registry.fetch_encoder(store, name, ref, contract)
    return EncoderRef(path=found.path, pinned=found.pinned)


def local_encoder_weights(
    ref: EncoderRef, contract: FeatureContract, access: RegistryAccess | None = None
) -> str | None:
    """The encoder's weights file on this machine (the pinned registry version fetched again
    when the driver's file is not visible here)."""
    if ref.path is None or Path(ref.path).is_file() or ref.pinned is None:
        return ref.path
    return resolve_encoder(ref.pinned, contract, access).path


def local_bundle(ref: ModelRef, access: RegistryAccess | None = None) -> Path:
    """The bundle folder of ``ref`` on this machine: its path when it exists here (a shared
    file system, or the driver's machine), else the pinned registry version fetched again."""
    p = Path(ref.path)
    if (p / "bundle.json").is_file():
        return p
    if ref.pinned is None:
        raise ConfigError(
            f"{ref.kind}: bundle folder {p} is not visible on this node; put bundles on a shared "
            "file system or score with registry models (models:/...)"
        )
    again = _from_registry(ref.pinned, ref.kind, access or RegistryAccess())
    return Path(again.path)


def load_models(
    generator: ModelRef,
    fusion: ModelRef,
    device: str = "cpu",
    access: RegistryAccess | None = None,
) -> tuple[Any, Any]:
    """(TrainedGenerator, TrainedFusion) loaded on ``device``; kinds checked."""
    from pathgen_batch.inference import TrainedFusion, TrainedGenerator, load_bundle

    gen = load_bundle(local_bundle(generator, access), device=device)
    fus = load_bundle(local_bundle(fusion, access), device=device)
    if not isinstance(gen, TrainedGenerator):
        raise ConfigError(f"generator: {generator.uri} does not hold a generator")
    if not isinstance(fus, TrainedFusion):
        raise ConfigError(f"fusion: {fusion.uri} does not hold a fusion model")
    return gen, fus
