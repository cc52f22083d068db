"""Registered tile encoders: a weights file plus its feature contract, as an MLflow pyfunc.

Only encoders with a weights file are registered (``torchscript``, ``resnet50-trunc`` and the
timm-built foundation models: ``uni``, ``virchow2``, ..., ``timm:<architecture>``, whose recipe
travels in the contract); an encoder without weights (``stain-texture``) is fully identified by
its contract. The bundle
artifact holds::

    encoder.json    {"format_version": 1, "kind": "encoder", "contract": {...}, "weights": NAME}
    NAME            the weights file, byte for byte

Loading rebuilds the encoder with :func:`pathgen_batch.features.encoder_for_contract`, which
refuses a weights file whose digest is not the contract's. The pyfunc maps uint8 RGB tiles
(B, tile_px, tile_px, 3) to float32 features (B, dim).

The scorer finds the encoder of its models' feature contract here: :func:`fetch_encoder` gives
the weights of a named version (checked against the contract), :func:`find_encoder` the newest
version registered with exactly that contract.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from mlflow.models import ModelSignature
from mlflow.pyfunc import PythonModel, PythonModelContext
from mlflow.types.schema import Schema, TensorSpec

from pathgen_batch.errors import ConfigError, DataError
from pathgen_batch.features.contract import FeatureContract
from pathgen_batch.registry.pyfunc import BUNDLE_ARTIFACT
from pathgen_batch.registry.store import Store, call
from pathgen_batch.registry.tags import ENCODER_MODEL, TAG_CONTRACT_DIGEST, TAG_KIND
from pathgen_batch.registry.versions import fetch_bundle, list_versions, resolve_version

ENCODER_CODE = Path(__file__).with_name("pyfunc_encoder.py")
MANIFEST = "encoder.json"
FORMAT_VERSION = 1


def build_registered_encoder(
    encoder: str, weights: str | Path, options: Mapping[str, Any] | None = None
) -> Any:
    """Build ``encoder`` from a local weights file on the CPU (checks file and options)."""
    from pathgen_batch.features import build_encoder
    from pathgen_batch.features.encoders import get_entry

    if not get_entry(encoder).needs_weights:
        raise ConfigError(
            f"encoder {encoder!r} has no weights file; its feature contract identifies it "
            "fully and there is nothing to register"
        )
    w = Path(weights)
    if not w.is_file():
        raise ConfigError(f"encoder weights: {w} is not a file")
    return build_encoder(encoder, weights=str(w), device="cpu", options=dict(options or {}))


def write_encoder_bundle(dest: Path, contract: FeatureContract, weights: Path) -> Path:
    """Write the encoder bundle folder ``dest`` (see module doc)."""
    dest.mkdir(parents=True)
    target = "weights" + "".join(weights.suffixes[-1:])
    shutil.copy2(weights, dest / target)
    manifest = {
        "format_version": FORMAT_VERSION,
        "kind": "encoder",
        "contract": contract.to_dict(),
        "weights": target,
    }
    (dest / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return dest


def read_encoder_bundle(path: str | Path) -> tuple[FeatureContract, Path]:
    """(contract, weights file) of a bundle folder; its manifest checked."""
    root = Path(path)
    try:
        manifest = json.loads((root / MANIFEST).read_text())
    except FileNotFoundError as e:
        raise DataError(f"{root}: not an encoder bundle (no {MANIFEST})") from e
    except json.JSONDecodeError as e:
        raise DataError(f"{root / MANIFEST}: not valid JSON ({e})") from e
    keys = {"format_version", "kind", "contract", "weights"}
    if not isinstance(manifest, dict) or set(manifest) != keys:
        raise DataError(f"{root / MANIFEST}: expected exactly the keys {sorted(keys)}")
    if manifest["format_version"] != FORMAT_VERSION or manifest["kind"] != "encoder":
        raise DataError(f"{root / MANIFEST}: not a format {FORMAT_VERSION} encoder bundle")
    contract = FeatureContract.from_dict(manifest["contract"])
    weights = root / str(manifest["weights"])
    if not weights.is_file():
        raise DataError(f"{root}: encoder weights file {manifest['weights']} is missing")
    return contract, weights


def load_encoder_bundle(path: str | Path, device: str = "cpu") -> Any:
    """The encoder of a bundle folder, rebuilt and checked against its recorded contract."""
    from pathgen_batch.features import encoder_for_contract

    contract, weights = read_encoder_bundle(path)
    return encoder_for_contract(contract, weights=str(weights), device=device)


@dataclass(frozen=True)
class EncoderWeights:
    """A registered encoder version: its contract and its weights file on this machine."""

    name: str
    version: str
    contract: FeatureContract
    path: str

    @property
    def pinned(self) -> str:
        return f"models:/{self.name}/{self.version}"


def fetch_encoder(
    store: Store, name: str, ref: str | int, contract: FeatureContract | None = None
) -> EncoderWeights:
    """Version ``ref`` (number, stage or ``@alias``) of encoder model ``name``; when
    ``contract`` is given, a version with another contract is a DataError naming the fields."""
    mv = resolve_version(store, name, ref)
    if dict(mv.tags or {}).get(TAG_KIND) != "encoder":
        raise ConfigError(f"{name} v{mv.version} is not a registered encoder")
    found, weights = read_encoder_bundle(fetch_bundle(store, name, str(mv.version)))
    if contract is not None:
        contract.check_matches(found, what=f"models' feature contract vs {name} v{mv.version}")
    return EncoderWeights(name, str(mv.version), found, str(weights))


def find_encoder(
    store: Store, contract: FeatureContract, name: str = ENCODER_MODEL
) -> EncoderWeights | None:
    """The newest version of ``name`` registered with exactly ``contract``; None if none is
    (or ``name`` is not registered at all)."""
    known = call("registered models", store.client.search_registered_models)
    if name not in {m.name for m in known}:
        return None
    same = [
        mv
        for mv in list_versions(store, name)
        if dict(mv.tags or {}).get(TAG_CONTRACT_DIGEST) == contract.digest
    ]
    if not same:
        return None
    return fetch_encoder(store, name, str(same[-1].version), contract)


def encoder_signature(contract: FeatureContract) -> ModelSignature:
    """uint8 (B, tile_px, tile_px, 3) -> float32 (B, dim)."""
    t = contract.tile_px
    return ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.uint8), (-1, t, t, 3))]),
        outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, contract.dim))]),
    )


def encoder_example(contract: FeatureContract) -> np.ndarray:
    """One mid-grey tile."""
    return np.full((1, contract.tile_px, contract.tile_px, 3), 128, dtype=np.uint8)


class EncoderModel(PythonModel):
    """pyfunc wrapper of an encoder bundle: tiles (B, H, W, 3) uint8 -> features (B, D)."""

    def __init__(self) -> None:
        self.encoder: Any = None

    def load_context(self, context: PythonModelContext) -> None:
        self.encoder = load_encoder_bundle(context.artifacts[BUNDLE_ARTIFACT])

    def predict(
        self,
        context: PythonModelContext | None,
        model_input: np.ndarray,
        params: dict[str, Any] | None = None,
    ) -> np.ndarray:
        if self.encoder is None:
            raise DataError("EncoderModel: no encoder loaded (load it with mlflow.pyfunc)")
        tiles = np.asarray(model_input)
        return np.asarray(self.encoder.encode(tiles), dtype=np.float32)  # (B, D)
