"""Model bundles: the on-disk form of a trained generator or fusion model.

A bundle is a folder::

    bundle.json             manifest (below)
    weights.pt              the model's state dict only (torch.save(state_dict))
    gene_panel.csv          the gene panel (gene,family), in model order
    expression_scaler.json  per-gene z-score scaler fit on the training patients
    feature_scaler.json     per-dimension tile-feature scaler fit on the training patients

``bundle.json`` holds exactly these keys (unknown or missing keys are refused, but for
``risk_cuts``):

=====================  ==========================================================================
format_version         2 (format 1 kept the output type in train_config; it is refused)
kind                   "generator" | "fusion"
name                   registry model name (e.g. "pathgen-generator")
model_name             "generator" | "fusion" | "attention_mil" | "omics_mlp"
model_config           the model's config (``pathgen_batch.models.build_model``)
train_config           the training configuration, as plain data (provenance only)
feature_contract       the encoder contract of the features it was trained on
gene_panel_digest      digest of gene_panel.csv
grade_classes          grade class names, in output order
bin_edges              time-bin edges (K + 1), last one the string "inf"; null for a generator
diffusion, sampler     DiffusionConfig (schedule and the network's output type, ``prediction``)
                       and default SamplerConfig; null for a fusion model
conformal              {"grade": ClassificationConformal | null, "risk": IntervalConformal | null}
risk_cuts              cut points of the relative risk groups ({"quantiles", "cuts", "n"}, see
                       ``RiskCuts``); null for a generator or a fusion model without them. A
                       bundle written before risk groups were relative has no such key: it loads
                       with no cut points
provenance             cohort digest, folds, seed, metrics, history, created_at, ...
files                  sha256 of every other file of the bundle
=====================  ==========================================================================

The folder is a local path or an S3 prefix; every file goes through :mod:`pathgen_batch.storage`.
A save writes each file whole and ``bundle.json`` last (an overwrite removes it first), so a
bundle whose manifest exists is complete. Weights are read with
``torch.load(weights_only=True)`` from a local file (a bundle on S3 stages ``weights.pt`` to local
scratch first); a state dict that does not match the config, a file whose digest differs, or a
panel that is not the recorded one is an error.
"""

from __future__ import annotations

import json
import math
import pickle
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pathgen_batch import storage
from pathgen_batch.config import from_dict, to_dict
from pathgen_batch.errors import ConfigError, DataError, PathgenError
from pathgen_batch.evaluation.conformal import ClassificationConformal, IntervalConformal
from pathgen_batch.features.contract import FeatureContract
from pathgen_batch.inference.fusion import RiskCuts, TrainedFusion
from pathgen_batch.inference.generator import TrainedGenerator
from pathgen_batch.inference.scaling import ZScoreScaler
from pathgen_batch.models import build_model, model_name_of
from pathgen_batch.models.diffusion import DiffusionConfig, SamplerConfig
from pathgen_batch.models.generator import TranscriptomeDenoiser
from pathgen_batch.omics.panel import GenePanel

FORMAT_VERSION = 2
MANIFEST = "bundle.json"
WEIGHTS = "weights.pt"
PANEL = "gene_panel.csv"
EXPRESSION_SCALER = "expression_scaler.json"
FEATURE_SCALER = "feature_scaler.json"
FILES = (WEIGHTS, PANEL, EXPRESSION_SCALER, FEATURE_SCALER)
KEYS = (
    "format_version",
    "kind",
    "name",
    "model_name",
    "model_config",
    "train_config",
    "feature_contract",
    "gene_panel_digest",
    "grade_classes",
    "bin_edges",
    "diffusion",
    "sampler",
    "conformal",
    "risk_cuts",
    "provenance",
    "files",
)
OPTIONAL_KEYS = ("risk_cuts",)  # absent in bundles written before relative risk groups


def _digest(uri: str | Path) -> str:
    return "sha256:" + storage.sha256(uri)


def json_safe(value: Any) -> Any:
    """Plain JSON data: numpy scalars and arrays unwrapped, NaN -> null, +-inf -> "inf"/"-inf"."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    if isinstance(value, np.ndarray):
        return [json_safe(v) for v in value.tolist()]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float):
        if math.isnan(value):
            return None
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
    return value


def encode_edges(edges: np.ndarray) -> list[float | str]:
    return [("inf" if math.isinf(v) and v > 0 else float(v)) for v in np.asarray(edges).tolist()]


def decode_edges(raw: Any, where: str) -> np.ndarray:
    if not isinstance(raw, list) or len(raw) < 2:
        raise DataError(f"{where}: bin_edges must be a list of at least 2 edges, got {raw!r}")
    out = []
    for v in raw:
        if v == "inf" or v is None:
            out.append(math.inf)
        elif isinstance(v, int | float) and not isinstance(v, bool):
            out.append(float(v))
        else:
            raise DataError(f"{where}: bin_edges: expected numbers or 'inf', got {v!r}")
    return np.asarray(out, dtype=np.float64)


def _check_target(out: str, overwrite: bool) -> None:
    if storage.exists(out):
        raise ConfigError(f"{out}: exists and is not a folder")
    if storage.list_files(out):
        if not overwrite:
            raise ConfigError(f"{out}: folder is not empty; pass overwrite to replace it")
        if not storage.exists(storage.join(out, MANIFEST)):
            raise ConfigError(f"{out}: not a model bundle (no {MANIFEST}); refusing to replace")


def _publish(local: Path, out: str) -> None:
    """Copy the bundle files of folder ``local`` to ``out``, ``bundle.json`` last."""
    manifest = storage.join(out, MANIFEST)
    storage.delete(manifest)  # an overwritten bundle is incomplete until its manifest is back
    for f in FILES:
        storage.upload_file(local / f, storage.join(out, f))
    storage.upload_file(local / MANIFEST, manifest)


def _write(
    path: str | Path,
    model: torch.nn.Module,
    common: dict[str, Any],
    escaler: ZScoreScaler,
    fscaler: ZScoreScaler,
    panel: GenePanel,
    overwrite: bool,
) -> Path | str:
    out = str(path)
    _check_target(out, overwrite)
    with tempfile.TemporaryDirectory(prefix="pgb-bundle-") as scratch:
        tmp = Path(scratch)
        state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
        torch.save(state, tmp / WEIGHTS)
        panel.write(tmp / PANEL)
        (tmp / EXPRESSION_SCALER).write_text(json.dumps(escaler.to_dict()) + "\n")
        (tmp / FEATURE_SCALER).write_text(json.dumps(fscaler.to_dict()) + "\n")
        manifest = {
            "format_version": FORMAT_VERSION,
            **common,
            "model_name": model_name_of(model),
            "model_config": to_dict(model.config),
            "gene_panel_digest": panel.digest,
            "files": {f: _digest(tmp / f) for f in FILES},
        }
        manifest = json_safe({k: manifest[k] for k in KEYS})
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, allow_nan=False) + "\n")
        _publish(tmp, out)
    return out if storage.is_s3(out) else storage.local_path(out)


def save_generator(gen: TrainedGenerator, path: str | Path, overwrite: bool = False) -> Path | str:
    """Write ``gen`` as a bundle folder at ``path``; return it (a Path when local)."""
    common = {
        "kind": "generator",
        "name": gen.name,
        "train_config": gen.train_config,
        "feature_contract": gen.contract.to_dict(),
        "grade_classes": list(gen.grade_classes),
        "bin_edges": None,
        "diffusion": to_dict(gen.diffusion),
        "sampler": to_dict(gen.sampler),
        "conformal": {"grade": None, "risk": None},
        "risk_cuts": None,
        "provenance": gen.provenance,
    }
    return _write(
        path,
        gen.model,
        common,
        gen.expression_scaler,
        gen.feature_scaler,
        gen.panel,
        overwrite,
    )


def save_fusion(fus: TrainedFusion, path: str | Path, overwrite: bool = False) -> Path | str:
    """Write ``fus`` (fusion model or baseline) as a bundle folder at ``path``; return it (a
    Path when local)."""
    common = {
        "kind": "fusion",
        "name": fus.name,
        "train_config": fus.train_config,
        "feature_contract": fus.contract.to_dict(),
        "grade_classes": list(fus.grade_classes),
        "bin_edges": encode_edges(fus.bin_edges),
        "diffusion": None,
        "sampler": None,
        "conformal": {
            "grade": None if fus.grade_conformal is None else fus.grade_conformal.to_dict(),
            "risk": None if fus.risk_conformal is None else fus.risk_conformal.to_dict(),
        },
        "risk_cuts": None if fus.risk_cuts is None else fus.risk_cuts.to_dict(),
        "provenance": fus.provenance,
    }
    return _write(
        path, fus.model, common, fus.expression_scaler, fus.feature_scaler, fus.panel, overwrite
    )


def _read_manifest(root: str, verify: tuple[str, ...]) -> dict[str, Any]:
    mf = storage.join(root, MANIFEST)
    if not storage.exists(mf):
        raise DataError(f"{root}: not a model bundle (no {MANIFEST})")
    try:
        manifest = json.loads(storage.read_bytes(mf))
    except json.JSONDecodeError as e:
        raise DataError(f"{mf}: not valid JSON ({e})") from e
    if not isinstance(manifest, dict):
        raise DataError(f"{mf}: expected a JSON object")
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise DataError(
            f"{mf}: bundle format {version!r} is not readable by this version, which reads "
            f"bundle format {FORMAT_VERSION} (where diffusion.prediction records the network's "
            "output type); retrain the model to write a new bundle"
        )
    unknown = sorted(set(manifest) - set(KEYS))
    missing = [k for k in KEYS if k not in manifest and k not in OPTIONAL_KEYS]
    if unknown or missing:
        raise DataError(f"{mf}: unknown key(s) {unknown}, missing key(s) {missing}")
    if manifest["kind"] not in ("generator", "fusion"):
        raise DataError(f"{mf}: kind must be 'generator' or 'fusion', got {manifest['kind']!r}")
    files = manifest["files"]
    if not isinstance(files, dict) or sorted(files) != sorted(FILES):
        raise DataError(f"{mf}: files must list exactly {list(FILES)}")
    for f in FILES:
        if not storage.exists(storage.join(root, f)):
            raise DataError(f"{root}: bundle file {f} is missing")
    for f in verify:
        _check_digest(root, f, storage.join(root, f), files[f])
    return manifest


def _check_digest(root: str, name: str, uri: str | Path, recorded: str) -> None:
    if _digest(uri) != recorded:
        raise DataError(f"{root}: {name} does not match the digest recorded in {MANIFEST}")


def read_manifest(path: str | Path) -> dict[str, Any]:
    """The checked ``bundle.json`` of a bundle folder (every file's digest checked; no weights
    are loaded)."""
    return _read_manifest(str(path), FILES)


def _json_file(uri: str) -> Any:
    try:
        return json.loads(storage.read_bytes(uri))
    except json.JSONDecodeError as e:
        raise DataError(f"{uri}: not valid JSON ({e})") from e


def _load_weights(model: torch.nn.Module, root: str, device: torch.device, digest: str) -> None:
    """Stage ``weights.pt`` locally (in place for a local bundle), check its digest, load it."""
    uri = storage.join(root, WEIGHTS)
    with (
        tempfile.TemporaryDirectory(prefix="pgb-weights-") as scratch,
        storage.stage_file(uri, scratch) as staged,
    ):
        _check_digest(root, WEIGHTS, staged.path, digest)
        try:
            state = torch.load(staged.path, weights_only=True, map_location=device)
        except (pickle.UnpicklingError, RuntimeError, OSError, EOFError, ValueError) as e:
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise DataError(f"{uri}: not a readable state dict ({first})") from e
    if not isinstance(state, dict):
        raise DataError(f"{uri}: expected a state dict, got {type(state).__name__}")
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        lines = str(e).strip().splitlines()
        detail = "; ".join(line.strip() for line in lines[1:4]) or lines[0]
        raise DataError(f"{root}: weights do not match the model config ({detail})") from e


def load_bundle(
    path: str | Path, device: str | torch.device = "cpu"
) -> TrainedGenerator | TrainedFusion:
    """Load a bundle folder; every file, key and tensor shape is checked."""
    root = str(path)
    m = _read_manifest(root, tuple(f for f in FILES if f != WEIGHTS))
    weights_digest = m["files"][WEIGHTS]
    dev = torch.device(device)
    try:
        panel_uri = storage.join(root, PANEL)
        panel = GenePanel.parse(storage.read_bytes(panel_uri).decode(), source=panel_uri)
        if panel.digest != m["gene_panel_digest"]:
            raise DataError(f"{PANEL} digest differs from gene_panel_digest")
        contract = FeatureContract.from_dict(m["feature_contract"])
        escaler = ZScoreScaler.from_dict(_json_file(storage.join(root, EXPRESSION_SCALER)))
        fscaler = ZScoreScaler.from_dict(_json_file(storage.join(root, FEATURE_SCALER)))
        model = build_model(m["model_name"], m["model_config"])
        classes = m["grade_classes"]
        if not isinstance(classes, list) or not all(isinstance(c, str) for c in classes):
            raise DataError(f"grade_classes: expected a list of names, got {classes!r}")
        provenance = m["provenance"]
        if not isinstance(provenance, dict):
            raise DataError("provenance: expected a mapping")
        train_config = m["train_config"]
        if not isinstance(train_config, dict):
            raise DataError("train_config: expected a mapping")
        conformal = m["conformal"]
        if not isinstance(conformal, dict) or sorted(conformal) != ["grade", "risk"]:
            raise DataError("conformal: expected exactly the keys 'grade' and 'risk'")
        if m["kind"] == "generator":
            if not isinstance(model, TranscriptomeDenoiser):
                raise DataError(f"kind 'generator' but model_name {m['model_name']!r}")
            if (
                m["bin_edges"] is not None
                or any(v is not None for v in conformal.values())
                or m.get("risk_cuts") is not None
            ):
                raise DataError(
                    "a generator bundle has no bin_edges, conformal states or risk cuts"
                )
            _load_weights(model, root, dev, weights_digest)
            return TrainedGenerator(
                model=model,
                diffusion=from_dict(DiffusionConfig, m["diffusion"], _where="diffusion"),
                sampler=from_dict(SamplerConfig, m["sampler"], _where="sampler"),
                expression_scaler=escaler,
                feature_scaler=fscaler,
                panel=panel,
                contract=contract,
                grade_classes=tuple(classes),
                train_config=train_config,
                provenance=provenance,
                name=str(m["name"]),
            ).to(dev)
        if isinstance(model, TranscriptomeDenoiser):
            raise DataError("kind 'fusion' but model_name 'generator'")
        if m["diffusion"] is not None or m["sampler"] is not None:
            raise DataError("a fusion bundle has no diffusion or sampler config")
        _load_weights(model, root, dev, weights_digest)
        grade = conformal["grade"]
        risk = conformal["risk"]
        cuts = m.get("risk_cuts")
        return TrainedFusion(
            model=model,
            model_name=str(m["model_name"]),
            expression_scaler=escaler,
            feature_scaler=fscaler,
            panel=panel,
            contract=contract,
            grade_classes=tuple(classes),
            bin_edges=decode_edges(m["bin_edges"], "bin_edges"),
            train_config=train_config,
            grade_conformal=None if grade is None else ClassificationConformal.from_dict(grade),
            risk_conformal=None if risk is None else IntervalConformal.from_dict(risk),
            risk_cuts=None if cuts is None else RiskCuts.from_dict(cuts),
            provenance=provenance,
            name=str(m["name"]),
        ).to(dev)
    except PathgenError as e:
        if str(e).startswith(root):
            raise
        raise DataError(f"{root}: {e}") from e
