"""What a report reads: one complete run's tables, and optional clinical and expression tables.

Runs are read through :mod:`pathgen_batch.tables` (complete runs only). Clinical and expression
tables are CSV or Parquet files (local or S3), joined to the predictions by ``slide_id`` when
both have it, else by ``patient_id``.
"""

from __future__ import annotations

import contextlib
import io
import json
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from pathgen_batch import storage
from pathgen_batch.errors import DataError
from pathgen_batch.tables import complete_runs, read_table

CLINICAL_TIME = "time"
CLINICAL_EVENT = "event"


@dataclass(frozen=True, eq=False)  # holds frames: compared by identity
class RunTables:
    """One complete run: its ``runs`` row, predictions (one row per slide), tile attention and
    thumbnails."""

    output: str
    run_id: str
    run: dict[str, Any]  # the ``runs`` row
    predictions: pd.DataFrame  # (S rows) sorted by risk, highest first
    attention: pa.Table  # tile_attention rows of the run
    transcriptomes: pa.Table | None  # long (slide, gene) rows; None when the run wrote none
    thumbnails: dict[str, dict[str, Any]]  # slide id -> its thumbnails row (none: no picture)


def _check_output(output: str) -> str:
    if not isinstance(output, str) or not output:
        raise DataError(f"output root: expected a folder or s3:// URI, got {output!r}")
    if not storage.is_s3(output):
        p = storage.local_path(output)
        if not p.exists():
            raise DataError(f"output root {output}: no such folder")
        if not p.is_dir():
            raise DataError(f"output root {output}: not a folder")
    return storage.normalise(output)


def pick_run(output: str, run_id: str | None) -> str:
    """``run_id`` checked against the complete runs of ``output``, or the latest complete run."""
    root = _check_output(output)
    done = complete_runs(root)
    if not done:
        raise DataError(
            f"output root {output}: no complete scoring runs (no runs/run_id=*/run.parquet)"
        )
    if run_id is None:
        runs = read_table(root, "runs", columns=["finished_at"]).to_pandas()
        return str(runs.sort_values(["finished_at", "run_id"]).iloc[-1]["run_id"])
    if run_id not in done:
        raise DataError(f"run {run_id!r}: not a complete run in {output}; complete runs: {done}")
    return run_id


def load_run(output: str, run_id: str | None = None, thumbnails: int = 0) -> RunTables:
    """The tables of ``run_id`` (default: the latest complete run) under ``output``, with the
    thumbnails of its ``thumbnails`` highest-risk slides (read with a filter, not all)."""
    rid = pick_run(output, run_id)
    root = storage.normalise(output)
    run = read_table(root, "runs", [rid]).to_pylist()[0]
    preds = read_table(root, "predictions", [rid]).to_pandas()
    if preds.empty:
        raise DataError(f"run {rid} in {output}: no scored slides in its predictions table")
    preds = preds.sort_values(["risk", "slide_id"], ascending=[False, True]).reset_index(drop=True)
    att = read_table(root, "tile_attention", [rid])
    try:
        tx: pa.Table | None = read_table(root, "transcriptomes", [rid])
    except DataError:
        tx = None
    top = preds["slide_id"].head(thumbnails).astype(str).tolist()
    thumbs = read_thumbnails(root, rid, top) if top else {}
    return RunTables(root, rid, run, preds, att, tx, thumbs)


def read_thumbnails(
    output: str, run_id: str, slides: list[str] | None = None
) -> dict[str, dict[str, Any]]:
    """Slide id -> ``thumbnails`` row of run ``run_id`` (of ``slides`` only when given); empty
    for a run scored before thumbnails were stored."""
    flt = None if slides is None else pc.field("slide_id").isin(slides)
    try:
        t = read_table(output, "thumbnails", [run_id], filter=flt)
    except DataError:
        return {}
    return {str(r["slide_id"]): r for r in t.to_pylist()}


def read_frame(uri: str, what: str) -> pd.DataFrame:
    """A CSV or Parquet table (by extension; Parquet is tried first otherwise)."""
    if not isinstance(uri, str) or not uri:
        raise DataError(f"{what}: expected a CSV or Parquet file, got {uri!r}")
    try:
        data = storage.read_bytes(uri)
    except (OSError, storage.StorageError) as e:
        raise DataError(f"{what} {uri}: cannot be read ({e})") from e
    lower = uri.lower()
    try:
        if lower.endswith((".csv", ".csv.gz", ".tsv")):
            sep = "\t" if lower.endswith(".tsv") else ","
            return pd.read_csv(io.BytesIO(data), sep=sep, compression="infer")
        return pd.read_parquet(io.BytesIO(data))
    except (ValueError, OSError, pa.ArrowException, pd.errors.ParserError) as e:
        raise DataError(f"{what} {uri}: not a readable CSV or Parquet table ({e})") from e


def join_key(preds: pd.DataFrame, table: pd.DataFrame, what: str) -> str:
    """``slide_id`` when ``table`` has it, else ``patient_id``; a DataError when neither joins."""
    if "slide_id" in table.columns:
        key = "slide_id"
    elif "patient_id" in table.columns:
        key = "patient_id"
    else:
        raise DataError(
            f"{what}: expected a slide_id or patient_id column, got {list(table.columns)[:10]}"
        )
    if not set(preds[key].dropna().astype(str)) & set(table[key].dropna().astype(str)):
        raise DataError(f"{what}: no {key} in common with the run's predictions")
    return key


def fill_patient_ids(preds: pd.DataFrame, clinical: pd.DataFrame) -> int:
    """Fill missing ``patient_id`` of predictions from a clinical table holding both ids.

    A folder archive carries no patient ids; the clinical table maps slides to patients so that
    patient-level tables (expression) can be joined. Returns how many ids were filled.
    """
    if not {"slide_id", "patient_id"} <= set(clinical.columns) or "patient_id" not in preds:
        return 0
    mapping = dict(
        zip(
            clinical["slide_id"].astype(str),
            clinical["patient_id"].astype(str),
            strict=True,
        )
    )
    missing = preds["patient_id"].isna()
    filled = preds.loc[missing, "slide_id"].astype(str).map(mapping)
    preds.loc[missing, "patient_id"] = filled
    return int(filled.notna().sum())


def clinical_frame(preds: pd.DataFrame, clinical: pd.DataFrame) -> pd.DataFrame:
    """Predictions joined with outcomes: one row per scored slide with clinical data.

    Columns kept: slide_id, risk, risk_group, grade_pred_index, grade_classes, and from the
    clinical table time, event (when present) and true_grade_index (from ``grade_index`` or
    ``grade`` names matched to the run's grade classes; -1 when unknown).
    """
    key = join_key(preds, clinical, "clinical table")
    cols = ["slide_id", "patient_id", "risk", "risk_group", "grade_pred_index", "grade_classes"]
    left = preds[cols].copy()
    left[key] = left[key].astype(str)
    right = clinical.copy()
    right[key] = right[key].astype(str)
    right = right.drop_duplicates(key)
    keep = [key] + [c for c in ("time", "event", "grade", "grade_index") if c in right.columns]
    merged = left.merge(right[keep], on=key, how="inner")
    classes = [str(c) for c in preds["grade_classes"].iloc[0]]
    if "grade_index" in merged.columns:
        gi = pd.to_numeric(merged["grade_index"], errors="coerce")
        ok = gi.between(0, len(classes) - 1)
        merged["true_grade_index"] = np.where(ok, gi.fillna(-1), -1).astype(int)
    elif "grade" in merged.columns:
        lookup = {c: i for i, c in enumerate(classes)}
        merged["true_grade_index"] = [lookup.get(str(g), -1) for g in merged["grade"]]
    else:
        merged["true_grade_index"] = -1
    if "time" in merged.columns and "event" in merged.columns:
        merged["time"] = pd.to_numeric(merged["time"], errors="coerce")
        merged["event"] = merged["event"].map(_as_event)
    return merged


def _as_event(v: Any) -> float:
    if v is None or (isinstance(v, float) and np.isnan(v)) or v is pd.NA:
        return float("nan")
    if isinstance(v, str):
        low = v.strip().lower()
        if low in ("1", "true", "yes", "dead", "event"):
            return 1.0
        if low in ("0", "false", "no", "alive", "censored"):
            return 0.0
        return float("nan")
    return float(bool(v))


def synthetic_vs_real(
    preds: pd.DataFrame, transcriptomes: pa.Table, expression: pd.DataFrame
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(real, synthetic) frames of the same shape: one row per scored slide with real expression,
    one column per gene both hold (panel order). Synthetic values are the generator's means."""
    key = join_key(preds, expression, "expression table")
    tx = transcriptomes.select(["slide_id", "gene", "gene_index", "mean"]).to_pandas()
    order = tx.drop_duplicates("gene").sort_values("gene_index")["gene"].tolist()
    wide = tx.pivot_table(index="slide_id", columns="gene", values="mean", aggfunc="mean")
    genes = [g for g in order if g in expression.columns]
    if not genes:
        raise DataError(
            "expression table: none of the run's genes are columns of it "
            f"(run genes start {order[:5]})"
        )
    ids = preds[["slide_id", key]].astype(str) if key != "slide_id" else preds[["slide_id"]]
    real = expression.copy()
    real[key] = real[key].astype(str)
    real = real.drop_duplicates(key).set_index(key)
    slides = [s for s in ids["slide_id"] if s in wide.index]
    keys = dict(zip(ids["slide_id"], ids[key], strict=True))
    slides = [s for s in slides if keys[s] in real.index]
    if not slides:
        raise DataError(f"expression table: no scored slide has real expression (by {key})")
    real_m = real.loc[[keys[s] for s in slides], genes].astype(float)
    real_m.index = pd.Index(slides, name="slide_id")
    syn_m = wide.loc[slides, genes].astype(float)
    return real_m, syn_m


def lineage_rows(run: dict[str, Any]) -> list[tuple[str, str]]:
    """(label, value) pairs describing what produced the run."""
    rows = [
        ("run id", str(run.get("run_id", ""))),
        ("status", str(run.get("status", ""))),
        ("started / finished", f"{run.get('started_at')} / {run.get('finished_at')}"),
        ("archive", str(run.get("archive", ""))),
        ("slides scored / failed", f"{run.get('n_scored')} / {run.get('n_failed')}"),
        ("tiles", str(run.get("n_tiles"))),
        ("generator", f"{run.get('generator_model')} version {run.get('generator_version')}"),
        ("fusion model", f"{run.get('fusion_model')} version {run.get('fusion_version')}"),
        ("encoder contract", str(run.get("encoder_contract", ""))),
        ("contract digest", str(run.get("contract_digest", ""))),
        ("gene panel digest", str(run.get("gene_panel_digest", ""))),
        ("code version", str(run.get("code_version", ""))),
    ]
    for label, col in (("timings", "timings_json"), ("configuration", "config_json")):
        text = str(run.get(col) or "{}")
        with contextlib.suppress(ValueError):
            text = json.dumps(json.loads(text), indent=2, sort_keys=True)
        rows.append((label, text))
    return rows
