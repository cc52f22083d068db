"""The MLflow pyfunc form of a model bundle: signature, input example, predict.

A registered version is an MLflow "model from code": its Python code is the file
``pyfunc_model.py`` (copied into the model; it only builds a :class:`BundleModel`), its only
artifact is the bundle folder (``bundle.json``, ``weights.pt`` state dict, panel, scalers),
and nothing of this project is pickled. Loading reads the weights with
``torch.load(weights_only=True)``.

Generator
    input: one row per slide, ``slide_id`` (string) and ``features`` (the slide's tile bag,
    (N, D) as a list of N lists of D numbers); params ``n_samples``, ``steps``, ``seed``.
    output: one row per (slide, gene), in panel order: ``slide_id``, ``gene``, ``family``,
    ``mean`` and ``std`` over the samples, in expression units.

Fusion model
    input: ``slide_id``, ``features`` (as above), and optionally ``expression`` (G numbers in
    panel order, expression units; left out, the model runs "WSI only"); param ``noise_seed``.
    output: one row per slide: ``slide_id``, ``grade`` (arg-max class), ``p_<class>`` per
    grade class, ``hazard_<k>`` per time bin, ``risk``, and when the bundle carries conformal
    states ``grade_set`` (classes joined by ``|``), ``risk_lo``, ``risk_hi``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from mlflow.models import ModelSignature
from mlflow.pyfunc import PythonModel, PythonModelContext
from mlflow.types import DataType
from mlflow.types.schema import Array, ColSpec, ParamSchema, ParamSpec, Schema, TensorSpec

from pathgen_batch.errors import DataError

BUNDLE_ARTIFACT = "bundle"


def _bag(cell: Any, row: int, dim: int) -> np.ndarray:
    """One ``features`` cell -> (N, D) float32."""
    try:
        rows = [np.asarray(r, dtype=np.float32).reshape(-1) for r in cell]
        bag = np.stack(rows) if rows else np.zeros((0, dim), dtype=np.float32)
    except (TypeError, ValueError) as e:
        raise DataError(f"features of row {row}: expected N lists of {dim} numbers ({e})") from e
    if bag.ndim != 2 or bag.shape[1] != dim:
        raise DataError(f"features of row {row}: expected shape (N, {dim}), got {bag.shape}")
    return bag


def frame_bags(frame: pd.DataFrame, dim: int) -> tuple[list[str], list[np.ndarray]]:
    """slide ids and (N_i, D) bags of an input frame (see the module docstring)."""
    if not isinstance(frame, pd.DataFrame):
        raise DataError(f"model input: expected a pandas DataFrame, got {type(frame).__name__}")
    missing = [c for c in ("slide_id", "features") if c not in frame.columns]
    if missing:
        raise DataError(f"model input: missing column(s) {missing}; expected slide_id and features")
    if len(frame) == 0:
        raise DataError("model input: no rows")
    ids = [str(s) for s in frame["slide_id"]]
    bags = [_bag(cell, i, dim) for i, cell in enumerate(frame["features"])]
    return ids, bags


def _int_param(params: dict[str, Any], name: str, default: int, minimum: int) -> int:
    v = params.get(name, default)
    if v is None:
        return default
    if isinstance(v, bool) or not isinstance(v, int | np.integer) or int(v) < minimum:
        raise DataError(f"param {name}: expected an integer >= {minimum}, got {v!r}")
    return int(v)


def generate_frame(
    model: Any, frame: pd.DataFrame, params: dict[str, Any] | None = None
) -> pd.DataFrame:
    """Synthetic transcriptomes of the slides in ``frame`` as a long table (see module doc)."""
    params = dict(params or {})
    ids, bags = frame_bags(frame, model.contract.dim)
    sampler = model.sampler
    n = _int_param(params, "n_samples", sampler.n_samples, 1)
    steps = _int_param(params, "steps", sampler.steps, 1)
    seed = _int_param(params, "seed", 0, 0)
    mean, std = model.generate(
        bags, n_samples=n, sampler=dataclasses.replace(sampler, steps=steps), seed=seed
    )  # (B, G) each
    G = model.panel.n_genes
    return pd.DataFrame(
        {
            "slide_id": np.repeat(np.asarray(ids, dtype=object), G),
            "gene": np.tile(np.asarray(model.panel.genes, dtype=object), len(ids)),
            "family": np.tile(np.asarray(model.panel.families, dtype=object), len(ids)),
            "mean": mean.astype(np.float64).reshape(-1),
            "std": std.astype(np.float64).reshape(-1),
        }
    )


def _expression(frame: pd.DataFrame, n_genes: int) -> np.ndarray | None:
    if "expression" not in frame.columns:
        return None
    cells = list(frame["expression"])
    given = [c is not None and not (isinstance(c, float) and np.isnan(c)) for c in cells]
    if not any(given):
        return None
    if not all(given):
        raise DataError("expression: give it for every slide or for none")
    x = np.stack([np.asarray(c, dtype=np.float64).reshape(-1) for c in cells])  # (B, G)
    if x.shape[1] != n_genes:
        raise DataError(f"expression: expected {n_genes} genes (panel order), got {x.shape[1]}")
    return x


def predict_frame(
    model: Any, frame: pd.DataFrame, params: dict[str, Any] | None = None
) -> pd.DataFrame:
    """Grade and risk predictions of the slides in ``frame``, one row per slide."""
    params = dict(params or {})
    noise_seed = _int_param(params, "noise_seed", 0, 0)
    expression = _expression(frame, model.panel.n_genes)
    if model.uses_slides:
        ids, bags = frame_bags(frame, model.contract.dim)
    else:
        ids = [str(s) for s in frame["slide_id"]]
        bags = None
    pred = model.predict(bags, expression, noise_seed=noise_seed)
    classes = list(model.grade_classes)
    out: dict[str, Any] = {
        "slide_id": ids,
        "grade": [classes[i] for i in pred.grade_index],
    }
    for j, c in enumerate(classes):
        out[f"p_{c}"] = pred.grade_probs[:, j].astype(np.float64)
    for k in range(pred.hazards.shape[1]):
        out[f"hazard_{k + 1}"] = pred.hazards[:, k].astype(np.float64)
    out["risk"] = pred.risk.astype(np.float64)
    if pred.grade_sets is not None:
        out["grade_set"] = [
            "|".join(c for c, m in zip(classes, row, strict=True) if m) for row in pred.grade_sets
        ]
    if pred.risk_lo is not None and pred.risk_hi is not None:
        out["risk_lo"] = pred.risk_lo.astype(np.float64)
        out["risk_hi"] = pred.risk_hi.astype(np.float64)
    return pd.DataFrame(out)


def signature_for(model: Any) -> ModelSignature:
    """The pyfunc signature of a loaded bundle (generator or fusion)."""
    bag = ColSpec(Array(Array(DataType.double)), "features")
    if model.kind == "generator":
        s = model.sampler
        return ModelSignature(
            inputs=Schema([ColSpec(DataType.string, "slide_id"), bag]),
            outputs=Schema(
                [
                    ColSpec(DataType.string, "slide_id"),
                    ColSpec(DataType.string, "gene"),
                    ColSpec(DataType.string, "family"),
                    ColSpec(DataType.double, "mean"),
                    ColSpec(DataType.double, "std"),
                ]
            ),
            params=ParamSchema(
                [
                    ParamSpec("n_samples", DataType.long, int(s.n_samples)),
                    ParamSpec("steps", DataType.long, int(s.steps)),
                    ParamSpec("seed", DataType.long, 0),
                ]
            ),
        )
    inputs: list[ColSpec | TensorSpec] = [ColSpec(DataType.string, "slide_id")]
    if model.uses_slides:
        inputs.append(bag)
    inputs.append(
        ColSpec(Array(DataType.double), "expression", required=not _optional_expression(model))
    )
    outputs: list[ColSpec | TensorSpec] = [
        ColSpec(DataType.string, "slide_id"),
        ColSpec(DataType.string, "grade"),
    ]
    outputs += [ColSpec(DataType.double, f"p_{c}") for c in model.grade_classes]
    n_bins = len(model.bin_edges) - 1
    outputs += [ColSpec(DataType.double, f"hazard_{k + 1}") for k in range(n_bins)]
    outputs.append(ColSpec(DataType.double, "risk"))
    if model.grade_conformal is not None:
        outputs.append(ColSpec(DataType.string, "grade_set"))
    if model.risk_conformal is not None:
        outputs += [ColSpec(DataType.double, "risk_lo"), ColSpec(DataType.double, "risk_hi")]
    return ModelSignature(
        inputs=Schema(inputs),
        outputs=Schema(outputs),
        params=ParamSchema([ParamSpec("noise_seed", DataType.long, 0)]),
    )


def _optional_expression(model: Any) -> bool:
    return bool(model.uses_slides)


def input_example(model: Any, n_tiles: int = 2) -> pd.DataFrame:
    """A one-slide example input: a bag of ``n_tiles`` zero feature vectors."""
    row: dict[str, Any] = {"slide_id": "example"}
    if model.kind == "generator" or model.uses_slides:
        row["features"] = [[0.0] * model.contract.dim for _ in range(n_tiles)]
    if model.kind == "fusion" and not _optional_expression(model):
        row["expression"] = [0.0] * model.panel.n_genes
    return pd.DataFrame([row])


class BundleModel(PythonModel):
    """pyfunc wrapper of a bundle: loads it in ``load_context``; predicts per module doc."""

    def __init__(self) -> None:
        self.model: Any = None

    def load_context(self, context: PythonModelContext) -> None:
        from pathgen_batch.inference.bundle import load_bundle

        self.model = load_bundle(context.artifacts[BUNDLE_ARTIFACT])

    def predict(
        self,
        context: PythonModelContext | None,
        model_input: pd.DataFrame,
        params: dict[str, Any] | None = None,
    ) -> pd.DataFrame:
        if self.model is None:
            raise DataError("BundleModel: no bundle loaded (load it with mlflow.pyfunc)")
        if self.model.kind == "generator":
            return generate_frame(self.model, model_input, params)
        return predict_frame(self.model, model_input, params)


def pip_requirements(packages: Sequence[str] | None = None) -> list[str]:
    """Pinned requirements of a registered model: what loading a bundle imports."""
    from importlib.metadata import PackageNotFoundError, version

    names = packages or LOAD_PACKAGES
    out = []
    for name in names:
        try:
            v = version(name)
        except PackageNotFoundError:
            continue
        out.append(f"{name}=={v.split('+', 1)[0]}")
    return out


LOAD_PACKAGES: tuple[str, ...] = (
    "mlflow",
    "torch",
    "numpy",
    "scipy",
    "pandas",
    "pyarrow",
    "scikit-learn",
    "scikit-survival",
    "openslide-python",
    "openslide-bin",
    "tifffile",
    "imagecodecs",
    "pillow",
)
