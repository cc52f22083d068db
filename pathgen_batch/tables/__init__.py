"""Output tables of scoring runs: schemas (:mod:`.schemas`), row builders (:mod:`.rows`),
part writers and complete-run readers (:mod:`.io`).

::

    from pathgen_batch.tables import read_table, read_runs
    preds = read_table("s3://bucket/scores", "predictions").to_pandas()
"""

from pathgen_batch.tables.io import (
    PartWriter,
    check_run_id,
    complete_runs,
    feature_index,
    partition_uri,
    read_row_group,
    read_runs,
    read_table,
    table_uri,
)
from pathgen_batch.tables.rows import (
    Lineage,
    attention_table,
    bag_from_features,
    failure_record,
    features_table,
    median_survival_bin,
    median_survival_group,
    patient_record,
    prediction_record,
    records_table,
    survival_curve,
    transcriptome_table,
)
from pathgen_batch.tables.schemas import (
    FAILURES,
    LINEAGE_COLUMNS,
    PARTITION,
    PATIENTS,
    PREDICTIONS,
    RUNS,
    SCHEMAS,
    STAGES,
    TABLES,
    THUMBNAIL_PX,
    THUMBNAILS,
    TILE_ATTENTION,
    TRANSCRIPTOMES,
    features_schema,
    schema_for,
)
from pathgen_batch.tables.thumbnails import png_array, png_bytes, thumbnail_table

__all__ = [
    "FAILURES",
    "LINEAGE_COLUMNS",
    "PARTITION",
    "PATIENTS",
    "PREDICTIONS",
    "RUNS",
    "SCHEMAS",
    "STAGES",
    "TABLES",
    "THUMBNAILS",
    "THUMBNAIL_PX",
    "TILE_ATTENTION",
    "TRANSCRIPTOMES",
    "Lineage",
    "PartWriter",
    "attention_table",
    "bag_from_features",
    "check_run_id",
    "complete_runs",
    "failure_record",
    "feature_index",
    "features_schema",
    "features_table",
    "median_survival_bin",
    "median_survival_group",
    "partition_uri",
    "patient_record",
    "png_array",
    "png_bytes",
    "prediction_record",
    "read_row_group",
    "read_runs",
    "read_table",
    "records_table",
    "schema_for",
    "survival_curve",
    "table_uri",
    "thumbnail_table",
    "transcriptome_table",
]
