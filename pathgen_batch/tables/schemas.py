"""The output tables of a scoring run: one pyarrow schema each, defined here and nowhere else.

Every table is a Hive-partitioned Parquet dataset
``<output>/<table>/run_id=<run id>/part-*.parquet``. As in Hive, the partition column
``run_id`` lives in the folder name, not in the files (pandas, pyarrow, DuckDB with
``hive_partitioning``, Spark and polars add it from the path); each file also names its run
in its metadata (``pathgen.run_id``). Every row carries the lineage columns:

==================  ==========================================================================
generator_model     registered name of the generator (``pathgen-generator``)
generator_version   registry version number, or ``bundle:<digest>`` for a local bundle folder
fusion_model        registered name of the fusion model
fusion_version      as generator_version
encoder_contract    the feature contract (encoder, version, dim, tile_px, mpp) as canonical JSON
contract_digest     ``sha256:`` of that JSON
==================  ==========================================================================

Tables (columns besides lineage):

- ``predictions``: one row per scored slide. slide_id, source_uri, patient_id, n_tiles, slide
  mpp and its source, grade_classes, grade_probs, grade_pred (+ index), grade_set (conformal
  prediction set; null without a calibrated model) and its alpha, bin_edges (K + 1, the last
  +inf), hazards (K), survival (K, S_k = prod_{j<=k}(1 - h_j)), risk (= -sum_k S_k, higher is
  worse), risk_lo/risk_hi (conformal interval) and its alpha, median_survival_bin (first bin
  with S_k <= 0.5, K when none), median_survival_group (the absolute group: ``high`` when that
  is bin 0, ``low`` when it is the last bin or none, ``intermediate`` otherwise), risk_cuts
  (the fusion model's cut points of relative risk: quantiles, tertiles by default, of the
  risk of its training and validation patients) and risk_group (``low`` below the first cut,
  ``high`` at or above the last, ``intermediate`` in between; both null for a model without
  cut points), gene_panel_digest, scored_at (UTC).
- ``transcriptomes``: long layout, one row per (slide, gene): gene, family, gene_index (panel
  order), mean and std over the generator's samples (expression units), n_samples. Long rather
  than wide because a panel of thousands of genes as columns makes every schema panel-specific
  and every query wide; long rather than list columns because "these genes across these
  slides" is then a plain ``WHERE gene IN (...) AND slide_id IN (...)`` in any engine, and
  Parquet's dictionary encoding stores the repeated gene names for a few bits per row.
- ``tile_attention``: one row per (slide, tile, family): x, y (level-0 px of the tile's
  top-left corner), size_l0 (tile side in level-0 px), tile_px and mpp (the tiling), family,
  attention (the fusion model's co-attention weight; each family sums to 1 over a slide's
  tiles). Enough to draw a heatmap without reading the slide again.
- ``thumbnails``: one row per scored slide read from its file (none when re-scored from stored
  features): width_l0, height_l0 (the slide's level-0 extent), slide_mpp, image_png (the whole
  slide scaled to at most ``THUMBNAIL_PX`` on its longer side, RGB PNG), image_width,
  image_height, mask_png (the tissue mask the tiling used, a 1-bit PNG at the mask's own
  resolution: mask pixel (i, j) covers level-0 ``[j * width_l0 / mask_width, ...)``),
  mask_width, mask_height, tissue_fraction, excluded_png (regions the tissue step excluded,
  such as pen marks, as a 1-bit PNG on the mask's grid; null when the tissue step reports
  none), the slide's quality flags: excluded_fraction (share of the slide's area excluded: pen
  ink and annotated regions), n_tiles_blank and n_tiles_out_of_focus (kept tiles flagged by
  :func:`~pathgen_batch.slides.tile_quality`), focus_median (median focus measure of the kept
  tiles; these three null when the tiles were not measured). Written with the slide's commit,
  so reports and exports need only the tables.
- ``failures``: one row per slide that could not be scored: stage (``download``, ``open``,
  ``tiles``, ``encode``, ``features``, ``score``, ``write``, ``pipeline``), error_type,
  message, attempt (how many times the run tried the slide), failed_at.
- ``features`` (optional): one row per tile: x, y, size_l0, tissue, feature (float32 x D);
  one Parquet row group per slide, for re-scoring with new model versions without the slides.
- ``patients`` (when the input names patients, e.g. a manifest's ``patient_id`` column): one
  row per patient, predicted from the union bag of the patient's slides in the run. patient_id,
  status (``scored``; ``failed`` when none of its slides was scored or their union bag could
  not be, with null prediction columns), slide_ids (all its slides in the run, input order),
  failed_slide_ids, n_slides, n_slides_scored, n_slides_failed, n_tiles (of the union bag), the
  prediction columns of ``predictions`` (grade_classes ... risk_group) from the generator and the
  fusion model applied to the concatenated bag of its *scored* slides (a patient with one
  scored slide has that slide's prediction), message (why a patient failed), gene_panel_digest,
  scored_at. A patient with a failed slide is still predicted from its other slides: check
  ``n_slides_failed`` (its slides' failures are in ``failures``).
- ``runs``: one row per run, written last: status, timestamps, archive, output, counts,
  timings (JSON: seconds per stage summed over slides, ``download_s``, ``tiles_s``,
  ``encode_s``, ``score_s``, ``write_s``, when any slide went through the pipeline; ``passes``;
  ``wall_s``), configuration (JSON), code version, features source.
"""

from __future__ import annotations

import pyarrow as pa

from pathgen_batch.errors import DataError

SCHEMA_VERSION = "1"
TABLE_KEY = b"pathgen.table"
VERSION_KEY = b"pathgen.schema_version"
RUN_KEY = b"pathgen.run_id"
PARTITION = "run_id"

STAGES = ("download", "open", "tiles", "encode", "features", "score", "write", "pipeline")
RISK_GROUPS = ("high", "intermediate", "low")  # risk_group and median_survival_group values

_TS = pa.timestamp("us", tz="UTC")

_TYPES: dict[str, pa.DataType] = {
    "string": pa.string(),
    "int32": pa.int32(),
    "int64": pa.int64(),
    "float32": pa.float32(),
    "float64": pa.float64(),
    "binary": pa.binary(),
    "bool": pa.bool_(),
    "timestamp": _TS,
    "list<string>": pa.list_(pa.string()),
    "list<float64>": pa.list_(pa.float64()),
}


def _columns(spec: str) -> list[pa.Field]:
    """Fields from ``"name:type name:type? ..."``: a type of ``_TYPES``; ``?`` marks a column
    that may be null (every other column is required)."""
    out = []
    for col in spec.split():
        name, _, kind = col.partition(":")
        nullable = kind.endswith("?")
        out.append(pa.field(name, _TYPES[kind.rstrip("?")], nullable=nullable))
    return out


LINEAGE = tuple(
    _columns(
        "generator_model:string generator_version:string fusion_model:string "
        "fusion_version:string encoder_contract:string contract_digest:string"
    )
)
LINEAGE_COLUMNS = tuple(f.name for f in LINEAGE)


def _schema(name: str, *parts: str | list[pa.Field]) -> pa.Schema:
    """Table ``name``: its columns (column specs of :func:`_columns` or fields, in order), then
    the lineage columns."""
    fields = [f for p in parts for f in (_columns(p) if isinstance(p, str) else p)]
    meta = {TABLE_KEY: name.encode(), VERSION_KEY: SCHEMA_VERSION.encode()}
    return pa.schema([*fields, *LINEAGE], metadata=meta)


PREDICTIONS = _schema(
    "predictions",
    "slide_id:string source_uri:string patient_id:string? n_tiles:int32 slide_mpp:float64? "
    "mpp_source:string? grade_classes:list<string> grade_probs:list<float64> grade_pred:string "
    "grade_pred_index:int32 grade_set:list<string>? grade_set_alpha:float64? "
    "bin_edges:list<float64> hazards:list<float64> survival:list<float64> risk:float64 "
    "risk_lo:float64? risk_hi:float64? risk_interval_alpha:float64? median_survival_bin:int32 "
    "median_survival_group:string risk_cuts:list<float64>? risk_group:string? "
    "gene_panel_digest:string scored_at:timestamp",
)

TRANSCRIPTOMES = _schema(
    "transcriptomes",
    "slide_id:string gene_panel_digest:string gene:string family:string gene_index:int32 "
    "mean:float32 std:float32 n_samples:int32",
)

TILE_ATTENTION = _schema(
    "tile_attention",
    "slide_id:string x:int64 y:int64 size_l0:int32 tile_px:int32 mpp:float64 family:string "
    "attention:float32",
)

THUMBNAILS = _schema(
    "thumbnails",
    "slide_id:string width_l0:int64 height_l0:int64 slide_mpp:float64? image_png:binary "
    "image_width:int32 image_height:int32 mask_png:binary mask_width:int32 mask_height:int32 "
    "tissue_fraction:float32 excluded_png:binary? excluded_fraction:float32? "
    "n_tiles_blank:int32? n_tiles_out_of_focus:int32? focus_median:float32?",
)
THUMBNAIL_PX = 1024  # longer side of a stored thumbnail

FAILURES = _schema(
    "failures",
    "slide_id:string source_uri:string patient_id:string? stage:string error_type:string "
    "message:string attempt:int32 failed_at:timestamp",
)

# the columns a patient row takes from a prediction (nullable: a failed patient has none)
PATIENT_PREDICTION_COLUMNS = (
    "grade_classes",
    "grade_probs",
    "grade_pred",
    "grade_pred_index",
    "grade_set",
    "grade_set_alpha",
    "bin_edges",
    "hazards",
    "survival",
    "risk",
    "risk_lo",
    "risk_hi",
    "risk_interval_alpha",
    "median_survival_bin",
    "risk_group",
)
PATIENT_STATUSES = ("scored", "failed")

PATIENTS = _schema(
    "patients",
    "patient_id:string status:string slide_ids:list<string> failed_slide_ids:list<string> "
    "n_slides:int32 n_slides_scored:int32 n_slides_failed:int32 n_tiles:int64",
    [PREDICTIONS.field(n).with_nullable(True) for n in PATIENT_PREDICTION_COLUMNS],
    "message:string? gene_panel_digest:string scored_at:timestamp",
)

RUNS = _schema(
    "runs",
    "status:string started_at:timestamp finished_at:timestamp archive:string output:string "
    "n_slides:int64 n_scored:int64 n_failed:int64 n_tiles:int64 gene_panel_digest:string "
    "features_written:bool features_source_run:string? timings_json:string config_json:string "
    "code_version:string",
)


def features_schema(dim: int) -> pa.Schema:
    """The ``features`` table for D = ``dim`` feature columns."""
    if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
        raise DataError(f"features table: dim must be a positive integer, got {dim!r}")
    return _schema(
        "features",
        "slide_id:string x:int64 y:int64 size_l0:int32 tissue:float32",
        [pa.field("feature", pa.list_(pa.float32(), dim), nullable=False)],
    )


SCHEMAS: dict[str, pa.Schema] = {
    "predictions": PREDICTIONS,
    "transcriptomes": TRANSCRIPTOMES,
    "tile_attention": TILE_ATTENTION,
    "thumbnails": THUMBNAILS,
    "failures": FAILURES,
    "runs": RUNS,
    "patients": PATIENTS,
}
TABLES = (
    "predictions",
    "transcriptomes",
    "tile_attention",
    "thumbnails",
    "failures",
    "features",
    "runs",
    "patients",
)


def schema_for(table: str, dim: int | None = None) -> pa.Schema:
    """The schema of ``table`` (``features`` needs the feature ``dim``)."""
    if table == "features":
        if dim is None:
            raise DataError("features table: the feature dim is needed for its schema")
        return features_schema(dim)
    try:
        return SCHEMAS[table]
    except KeyError:
        raise DataError(f"unknown table {table!r}; tables are {list(TABLES)}") from None


def with_run(schema: pa.Schema, run_id: str) -> pa.Schema:
    """``schema`` with the run id added to its metadata."""
    meta = dict(schema.metadata or {})
    meta[RUN_KEY] = run_id.encode()
    return schema.with_metadata(meta)


def conform(table: pa.Table, schema: pa.Schema, where: str) -> pa.Table:
    """``table`` cast to ``schema`` (same columns in the same order), or a DataError naming
    the columns that are missing, extra or of the wrong type."""
    names = table.column_names
    want = schema.names
    if names != want:
        missing = [n for n in want if n not in names]
        extra = [n for n in names if n not in want]
        if missing or extra:
            raise DataError(f"{where}: missing column(s) {missing}, unexpected column(s) {extra}")
        table = table.select(want)
    try:
        return table.cast(schema)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError) as e:
        raise DataError(
            f"{where}: does not fit the {schema.metadata[TABLE_KEY].decode()} schema ({e})"
        ) from e
