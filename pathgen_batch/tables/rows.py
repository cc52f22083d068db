"""Rows of the output tables, built from plain arrays and values (no model objects).

Predictions and failures are built as JSON-safe records (they travel in commit markers, see
:mod:`pathgen_batch.batch.commit`) and turned into Arrow tables by :func:`records_table`; the
per-tile and per-gene tables are built directly as Arrow tables.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from pathgen_batch.errors import DataError
from pathgen_batch.tables.schemas import (
    LINEAGE_COLUMNS,
    PATIENT_PREDICTION_COLUMNS,
    STAGES,
    TILE_ATTENTION,
    TRANSCRIPTOMES,
    conform,
    features_schema,
    schema_for,
)

if TYPE_CHECKING:
    from pathgen_batch.inference.fusion import RiskCuts


@dataclass(frozen=True)
class Lineage:
    """What produced a row: model names and versions and the encoder contract."""

    generator_model: str
    generator_version: str
    fusion_model: str
    fusion_version: str
    encoder_contract: str  # canonical JSON of the FeatureContract
    contract_digest: str

    def __post_init__(self) -> None:
        for name in LINEAGE_COLUMNS:
            v = getattr(self, name)
            if not isinstance(v, str) or not v:
                raise DataError(f"Lineage.{name}: expected a non-empty string, got {v!r}")

    def to_dict(self) -> dict[str, str]:
        return asdict(self)

    def columns(self, n: int) -> dict[str, pa.Array]:
        """The lineage columns for ``n`` rows."""
        return {k: pa.array([v] * n, pa.string()) for k, v in self.to_dict().items()}


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def survival_curve(hazards: np.ndarray) -> np.ndarray:
    """(K,) hazards -> (K,) S_k = prod_{j<=k} (1 - h_j)."""
    from pathgen_batch.models.survival import survival_curve as curve  # torch: on first use

    return curve(np.asarray(hazards, dtype=np.float64))


def median_survival_bin(survival: np.ndarray) -> int:
    """First bin k with S_k <= 0.5; K (the number of bins) when survival stays above 0.5."""
    s = np.asarray(survival, dtype=np.float64)
    hit = np.flatnonzero(s <= 0.5)
    return int(hit[0]) if hit.size else int(s.size)


def median_survival_group(median_bin: int, n_bins: int) -> str:
    """The absolute group of a predicted median survival: ``high`` when it falls in the first
    time bin, ``low`` when in the last or beyond, ``intermediate`` otherwise."""
    if n_bins < 1:
        raise DataError(f"median_survival_group: expected n_bins >= 1, got {n_bins}")
    if median_bin <= 0:
        return "high"
    if median_bin >= n_bins - 1:
        return "low"
    return "intermediate"


def _float_list(a: Any) -> list[float]:
    return [float(v) for v in np.asarray(a, dtype=np.float64).ravel()]


def _opt_float(v: Any) -> float | None:
    return None if v is None else float(v)


def prediction_record(
    *,
    slide_id: str,
    source_uri: str,
    patient_id: str | None,
    n_tiles: int,
    slide_mpp: float | None,
    mpp_source: str | None,
    grade_classes: Sequence[str],
    grade_probs: np.ndarray,
    grade_set: np.ndarray | None,
    grade_set_alpha: float | None,
    bin_edges: np.ndarray,
    hazards: np.ndarray,
    risk: float,
    risk_lo: float | None,
    risk_hi: float | None,
    risk_interval_alpha: float | None,
    risk_cuts: RiskCuts | None,
    gene_panel_digest: str,
    lineage: Lineage,
    scored_at: dt.datetime | None = None,
) -> dict[str, Any]:
    """One ``predictions`` row as a JSON-safe dict.

    grade_probs (C,); grade_set (C,) bool or None; bin_edges (K + 1,); hazards (K,);
    risk_cuts: the fusion model's relative risk-group cut points (None: no ``risk_group``).
    """
    probs = np.asarray(grade_probs, dtype=np.float64)
    classes = [str(c) for c in grade_classes]
    if probs.shape != (len(classes),):
        raise DataError(
            f"slide {slide_id}: grade_probs has shape {probs.shape}, expected ({len(classes)},)"
        )
    hz = np.asarray(hazards, dtype=np.float64)
    edges = np.asarray(bin_edges, dtype=np.float64)
    if hz.ndim != 1 or edges.shape != (hz.size + 1,):
        raise DataError(
            f"slide {slide_id}: {hz.size} hazards need {hz.size + 1} bin edges, got {edges.shape}"
        )
    surv = survival_curve(hz)
    mbin = median_survival_bin(surv)
    pred = int(np.argmax(probs))
    gset = None
    if grade_set is not None:
        mask = np.asarray(grade_set, dtype=bool)
        if mask.shape != probs.shape:
            raise DataError(f"slide {slide_id}: grade_set has shape {mask.shape}")
        gset = [c for c, m in zip(classes, mask.tolist(), strict=True) if m]
    when = scored_at or utc_now()
    return {
        "slide_id": slide_id,
        "source_uri": source_uri,
        "patient_id": patient_id,
        "n_tiles": int(n_tiles),
        "slide_mpp": _opt_float(slide_mpp),
        "mpp_source": mpp_source,
        "grade_classes": classes,
        "grade_probs": _float_list(probs),
        "grade_pred": classes[pred],
        "grade_pred_index": pred,
        "grade_set": gset,
        "grade_set_alpha": _opt_float(grade_set_alpha),
        "bin_edges": _float_list(edges),
        "hazards": _float_list(hz),
        "survival": _float_list(surv),
        "risk": float(risk),
        "risk_lo": _opt_float(risk_lo),
        "risk_hi": _opt_float(risk_hi),
        "risk_interval_alpha": _opt_float(risk_interval_alpha),
        "median_survival_bin": mbin,
        "median_survival_group": median_survival_group(mbin, hz.size),
        "risk_cuts": None if risk_cuts is None else list(risk_cuts.cuts),
        "risk_group": None if risk_cuts is None else risk_cuts.group(float(risk)),
        "gene_panel_digest": gene_panel_digest,
        "scored_at": when.isoformat(),
        **lineage.to_dict(),
    }


def failure_record(
    *,
    slide_id: str,
    source_uri: str,
    patient_id: str | None,
    stage: str,
    error: BaseException | None = None,
    error_type: str | None = None,
    message: str | None = None,
    attempt: int,
    lineage: Lineage,
    failed_at: dt.datetime | None = None,
) -> dict[str, Any]:
    """One ``failures`` row as a JSON-safe dict (from ``error`` or an explicit type/message)."""
    if stage not in STAGES:
        raise DataError(f"failure stage: expected one of {list(STAGES)}, got {stage!r}")
    etype = error_type or (type(error).__name__ if error is not None else "Error")
    text = message if message is not None else (str(error) if error is not None else "")
    lines = text.strip().splitlines()
    return {
        "slide_id": slide_id,
        "source_uri": source_uri,
        "patient_id": patient_id,
        "stage": stage,
        "error_type": etype,
        "message": (lines[0] if lines else etype)[:2000],
        "attempt": int(attempt),
        "failed_at": (failed_at or utc_now()).isoformat(),
        **lineage.to_dict(),
    }


def patient_record(
    *,
    patient_id: str,
    slide_ids: Sequence[str],
    failed_slide_ids: Sequence[str],
    n_tiles: int,
    prediction: Mapping[str, Any] | None,
    message: str | None,
    gene_panel_digest: str,
    lineage: Lineage,
    scored_at: dt.datetime | None = None,
) -> dict[str, Any]:
    """One ``patients`` row as a JSON-safe dict.

    ``prediction`` is a ``predictions`` record (:func:`prediction_record`) made from the
    patient's union bag, whose prediction columns the patient takes; None for a patient that
    could not be predicted (status ``failed``, ``message`` says why).
    """
    slides = [str(s) for s in slide_ids]
    failed = [str(s) for s in failed_slide_ids]
    if not slides or len(set(slides)) != len(slides) or not set(failed) <= set(slides):
        raise DataError(
            f"patient {patient_id}: slide_ids must be unique and non-empty and hold the failed "
            f"ones, got {slides} and {failed}"
        )
    n_scored = len(slides) - len(failed)
    if prediction is not None and n_scored == 0:
        raise DataError(f"patient {patient_id}: a prediction needs at least one scored slide")
    cols = {n: None if prediction is None else prediction[n] for n in PATIENT_PREDICTION_COLUMNS}
    return {
        "patient_id": str(patient_id),
        "status": "failed" if prediction is None else "scored",
        "slide_ids": slides,
        "failed_slide_ids": failed,
        "n_slides": len(slides),
        "n_slides_scored": n_scored,
        "n_slides_failed": len(failed),
        "n_tiles": int(n_tiles),
        **cols,
        "message": message,
        "gene_panel_digest": gene_panel_digest,
        "scored_at": (scored_at or utc_now()).isoformat(),
        **lineage.to_dict(),
    }


def _timestamp(v: Any) -> dt.datetime:
    if isinstance(v, dt.datetime):
        return v
    if isinstance(v, str):
        return dt.datetime.fromisoformat(v)
    raise DataError(f"expected an ISO timestamp, got {v!r}")


def records_table(records: Sequence[Mapping[str, Any]], table: str) -> pa.Table:
    """``predictions``/``failures``/``patients``/``runs`` records -> an Arrow table of that
    schema."""
    schema = schema_for(table)
    rows = []
    for r in records:
        row = dict(r)
        for f in schema:
            if pa.types.is_timestamp(f.type) and row.get(f.name) is not None:
                row[f.name] = _timestamp(row[f.name])
        rows.append(row)
    missing = [
        f.name
        for f in schema
        for r in rows
        if f.name not in r or (not f.nullable and r[f.name] is None)
    ]
    if missing:
        raise DataError(f"{table} records: missing value(s) for {sorted(set(missing))}")
    try:
        return pa.Table.from_pylist(rows, schema=schema)
    except (pa.ArrowInvalid, pa.ArrowTypeError) as e:
        raise DataError(f"{table} records do not fit the schema ({e})") from e


def transcriptome_table(
    slide_id: str,
    genes: Sequence[str],
    families: Sequence[str],
    panel_digest: str,
    mean: np.ndarray,
    std: np.ndarray,
    n_samples: int,
    lineage: Lineage,
) -> pa.Table:
    """``transcriptomes`` rows of one slide: mean, std (G,) in panel order."""
    g = len(genes)
    m = np.asarray(mean, dtype=np.float32).ravel()
    s = np.asarray(std, dtype=np.float32).ravel()
    if m.shape != (g,) or s.shape != (g,) or len(families) != g:
        raise DataError(
            f"slide {slide_id}: expected {g} genes, families, means and stds, got "
            f"{len(families)}, {m.shape}, {s.shape}"
        )
    cols = {
        "slide_id": pa.array([slide_id] * g, pa.string()),
        "gene_panel_digest": pa.array([panel_digest] * g, pa.string()),
        "gene": pa.array(list(genes), pa.string()),
        "family": pa.array(list(families), pa.string()),
        "gene_index": pa.array(np.arange(g, dtype=np.int32)),
        "mean": pa.array(m),
        "std": pa.array(s),
        "n_samples": pa.array(np.full(g, n_samples, dtype=np.int32)),
        **lineage.columns(g),
    }
    return conform(pa.table(cols), TRANSCRIPTOMES, f"transcriptomes of {slide_id}")


def attention_table(
    slide_id: str,
    x: np.ndarray,
    y: np.ndarray,
    size_l0: int,
    tile_px: int,
    mpp: float,
    families: Sequence[str],
    attention: np.ndarray,
    lineage: Lineage,
) -> pa.Table:
    """``tile_attention`` rows of one slide: x, y (N,) level-0 px; attention (F, N).

    Rows are ordered by family, then tile.
    """
    xs = np.asarray(x, dtype=np.int64)
    ys = np.asarray(y, dtype=np.int64)
    att = np.asarray(attention, dtype=np.float32)
    n, f = xs.size, len(families)
    if ys.shape != xs.shape or att.shape != (f, n):
        raise DataError(
            f"slide {slide_id}: attention must be (F={f}, N={n}), got {att.shape} "
            f"(x {xs.shape}, y {ys.shape})"
        )
    rows = f * n
    cols = {
        "slide_id": pa.array([slide_id] * rows, pa.string()),
        "x": pa.array(np.tile(xs, f)),
        "y": pa.array(np.tile(ys, f)),
        "size_l0": pa.array(np.full(rows, size_l0, dtype=np.int32)),
        "tile_px": pa.array(np.full(rows, tile_px, dtype=np.int32)),
        "mpp": pa.array(np.full(rows, mpp, dtype=np.float64)),
        "family": pa.array(np.repeat(np.asarray(list(families), dtype=object), n), pa.string()),
        "attention": pa.array(att.reshape(-1)),
        **lineage.columns(rows),
    }
    return conform(pa.table(cols), TILE_ATTENTION, f"tile attention of {slide_id}")


def features_table(
    slide_id: str,
    x: np.ndarray,
    y: np.ndarray,
    size_l0: int,
    tissue: np.ndarray,
    feats: np.ndarray,
    lineage: Lineage,
) -> pa.Table:
    """``features`` rows of one slide: x, y, tissue (N,), feats (N, D)."""
    f = np.ascontiguousarray(feats, dtype=np.float32)
    if f.ndim != 2:
        raise DataError(f"slide {slide_id}: feats must be (N, D), got {f.shape}")
    n, d = f.shape
    xs, ys = np.asarray(x, dtype=np.int64), np.asarray(y, dtype=np.int64)
    ts = np.asarray(tissue, dtype=np.float32)
    if xs.shape != (n,) or ys.shape != (n,) or ts.shape != (n,):
        raise DataError(f"slide {slide_id}: x, y, tissue must be ({n},)")
    cols = {
        "slide_id": pa.array([slide_id] * n, pa.string()),
        "x": pa.array(xs),
        "y": pa.array(ys),
        "size_l0": pa.array(np.full(n, size_l0, dtype=np.int32)),
        "tissue": pa.array(ts),
        "feature": pa.FixedSizeListArray.from_arrays(pa.array(f.reshape(-1)), d),
        **lineage.columns(n),
    }
    return conform(pa.table(cols), features_schema(d), f"features of {slide_id}")


def bag_from_features(table: pa.Table) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """A ``features`` table of one slide -> x, y (N,) int64, feats (N, D) float32, size_l0."""
    col = table.column("feature")
    if not pa.types.is_fixed_size_list(col.type):
        raise DataError(f"features: column 'feature' must be a fixed-size list, got {col.type}")
    d = col.type.list_size
    arr = col.combine_chunks() if col.num_chunks != 1 else col.chunk(0)
    feats = np.asarray(arr.flatten().to_numpy(zero_copy_only=False), dtype=np.float32)
    sizes = np.unique(table.column("size_l0").to_numpy())
    if sizes.size > 1:
        raise DataError(f"features: one slide with several tile sizes {sizes.tolist()}")
    return (
        table.column("x").to_numpy().astype(np.int64),
        table.column("y").to_numpy().astype(np.int64),
        feats.reshape(-1, d),
        int(sizes[0]) if sizes.size else 0,
    )
