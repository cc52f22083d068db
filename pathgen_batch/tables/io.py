"""Writing and reading the output tables on a local folder or S3 (through ``storage``).

:class:`PartWriter` streams tables of one schema into ``part-NNNNN.parquet`` files of one run's
partition: rows are buffered into row groups, files are written locally and moved into place
whole (one rename or one S3 upload each), and memory is bounded by one row group whatever the
number of slides. A run's partitions count only once its ``runs`` row exists (written last), so
the readers here (:func:`read_table`, :func:`read_runs`) see complete runs only.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from pathgen_batch import storage
from pathgen_batch.errors import DataError
from pathgen_batch.storage import check_run_id
from pathgen_batch.tables.schemas import PARTITION, TABLES, conform, with_run

PART = re.compile(r"part-(\d{5})\.parquet")
RUNS_FILE = "run.parquet"


def table_uri(output: str, table: str) -> str:
    if table not in TABLES:
        raise DataError(f"unknown table {table!r}; tables are {list(TABLES)}")
    return storage.join(output, table)


def partition_uri(output: str, table: str, run_id: str) -> str:
    """``<output>/<table>/run_id=<run_id>``."""
    return storage.join(table_uri(output, table), f"{PARTITION}={check_run_id(run_id)}")


class PartWriter:
    """Write tables of ``schema`` into ``folder`` as whole part files.

    group_per_write: every :meth:`write` becomes its own row group (used by ``features``, one
    row group per slide, so one slide can be read alone); otherwise writes are buffered into
    row groups of about ``group_rows`` rows. A part file is closed once it holds
    ``part_rows`` rows.
    """

    def __init__(
        self,
        folder: str,
        schema: pa.Schema,
        run_id: str,
        *,
        part_rows: int = 2_000_000,
        group_rows: int = 131_072,
        group_per_write: bool = False,
        tmp_dir: str | Path | None = None,
        retry: storage.RetryPolicy = storage.DEFAULT_RETRY,
    ) -> None:
        if part_rows < 1 or group_rows < 1:
            raise DataError("PartWriter: part_rows and group_rows must be >= 1")
        self.folder = folder
        self.schema = with_run(schema, run_id)
        self.part_rows = part_rows
        self.group_rows = group_rows
        self.group_per_write = group_per_write
        self.retry = retry
        self._tmp = Path(tempfile.mkdtemp(prefix="pgb-parts-", dir=tmp_dir))
        self._writer: pq.ParquetWriter | None = None
        self._local: Path | None = None
        self._rows_in_part = 0
        self._buffer: list[pa.Table] = []
        self._buffered = 0
        self.parts: list[str] = []
        self.rows = 0

    def _open(self) -> pq.ParquetWriter:
        if self._writer is None:
            self._local = self._tmp / f"part-{len(self.parts):05d}.parquet"
            self._writer = pq.ParquetWriter(
                self._local, self.schema, compression="zstd", write_statistics=True
            )
            self._rows_in_part = 0
        return self._writer

    def _flush(self) -> None:
        if not self._buffer:
            return
        t = pa.concat_tables(self._buffer)
        self._buffer, self._buffered = [], 0
        self._open().write_table(t, row_group_size=max(1, t.num_rows))
        self._rows_in_part += t.num_rows
        if self._rows_in_part >= self.part_rows:
            self._close_part()

    def _close_part(self) -> None:
        if self._writer is None or self._local is None:
            return
        self._writer.close()
        self._writer = None
        uri = storage.join(self.folder, self._local.name)
        storage.upload_file(self._local, uri, self.retry)
        self._local.unlink(missing_ok=True)
        self.parts.append(uri)

    def write(self, table: pa.Table) -> None:
        t = conform(table, self.schema, f"rows for {self.folder}").replace_schema_metadata(
            self.schema.metadata
        )
        self.rows += t.num_rows
        self._buffer.append(t)
        self._buffered += t.num_rows
        if self.group_per_write or self._buffered >= self.group_rows:
            self._flush()

    def close(self) -> list[str]:
        """Write what is left (an empty part when nothing was written), remove parts of this
        folder left by an earlier attempt that this one did not write; return the part URIs."""
        self._flush()
        if not self.parts and self._writer is None:
            self._open()
        self._close_part()
        keep = {u.rsplit("/", 1)[-1] for u in self.parts}
        for uri, _ in storage.list_files(self.folder, self.retry):
            name = storage.basename(uri)
            if PART.fullmatch(name) and name not in keep:
                storage.delete(uri, self.retry)
        for p in self._tmp.glob("*"):
            p.unlink(missing_ok=True)
        self._tmp.rmdir()
        return list(self.parts)

    def abort(self) -> None:
        """Drop local temporary files (nothing half-written is ever visible remotely)."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        for p in self._tmp.glob("*"):
            p.unlink(missing_ok=True)
        if self._tmp.exists():
            self._tmp.rmdir()


def write_table(
    folder: str, table: pa.Table, schema: pa.Schema, run_id: str, name: str = "part-00000.parquet"
) -> str:
    """Write one small table as one whole file ``<folder>/<name>``; return its URI."""
    t = conform(table, schema, f"rows for {folder}").replace_schema_metadata(
        with_run(schema, run_id).metadata
    )
    sink = pa.BufferOutputStream()
    pq.write_table(t, sink, compression="zstd")
    uri = storage.join(folder, name)
    storage.write_bytes(uri, sink.getvalue().to_pybytes())
    return uri


def table_bytes(table: pa.Table) -> bytes:
    """A Parquet file's bytes (for small per-slide files)."""
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="zstd")
    return bytes(sink.getvalue().to_pybytes())


def read_parquet_bytes(data: bytes, where: str) -> pa.Table:
    try:
        return pq.read_table(pa.BufferReader(data))
    except (pa.ArrowInvalid, OSError) as e:
        raise DataError(f"{where}: not a readable Parquet file ({e})") from e


# -- readers --------------------------------------------------------------------------------
def _run_of(uri: str) -> str | None:
    parts = uri.replace(os.sep, "/").split("/")
    for p in parts:
        if p.startswith(f"{PARTITION}="):
            return p[len(PARTITION) + 1 :]
    return None


def complete_runs(output: str) -> list[str]:
    """Ids of the runs whose ``runs`` row exists (complete runs), sorted."""
    found = []
    for uri, _ in storage.list_files(table_uri(output, "runs")):
        if uri.replace(os.sep, "/").endswith(f"/{RUNS_FILE}"):
            run = _run_of(uri)
            if run is not None:
                found.append(run)
    return sorted(set(found))


def _files(output: str, table: str, run_ids: Sequence[str]) -> list[str]:
    out = []
    for run in run_ids:
        for uri, _ in storage.list_files(partition_uri(output, table, run)):
            name = storage.basename(uri)
            if PART.fullmatch(name) or (table == "runs" and name == RUNS_FILE):
                out.append(uri)
    return out


def read_table(
    output: str,
    table: str,
    run_ids: Sequence[str] | None = None,
    columns: Sequence[str] | None = None,
    filter: Any = None,
) -> pa.Table:
    """Rows of ``table`` from complete runs (all, or ``run_ids``), with the ``run_id`` column.

    ``filter``: a pyarrow dataset expression, e.g. ``pc.field("gene").isin(["TP53"])``.
    Asking for a run that is not complete is a DataError.
    """
    done = complete_runs(output)
    runs = list(done if run_ids is None else run_ids)
    unknown = sorted(set(runs) - set(done))
    if unknown:
        raise DataError(
            f"{output}: run(s) {unknown} are not complete (no runs row); complete runs: {done}"
        )
    files = _files(output, table, runs)
    if not files:
        raise DataError(f"{output}: no {table} files for run(s) {runs}")
    fs, _ = storage.arrow_filesystem(files[0])
    paths = [storage.arrow_filesystem(u)[1] for u in files]
    base = storage.arrow_filesystem(table_uri(output, table))[1]
    part = pads.partitioning(pa.schema([(PARTITION, pa.string())]), flavor="hive")
    ds = pads.dataset(
        paths, filesystem=fs, format="parquet", partitioning=part, partition_base_dir=base
    )
    cols = (
        None if columns is None else [*columns, *([PARTITION] if PARTITION not in columns else [])]
    )
    return ds.to_table(columns=cols, filter=filter)


def read_runs(output: str) -> pa.Table:
    """The ``runs`` table: one row per complete run."""
    return read_table(output, "runs")


def feature_index(output: str, run_id: str) -> dict[str, tuple[str, int]]:
    """slide_id -> (part URI, row group) of a run's ``features`` table (metadata reads only)."""
    out: dict[str, tuple[str, int]] = {}
    for uri in _files(output, "features", [run_id]):
        fs, path = storage.arrow_filesystem(uri)
        with fs.open_input_file(path) as f:
            meta = pq.ParquetFile(f).metadata
            col = meta.schema.names.index("slide_id")
            for g in range(meta.num_row_groups):
                if meta.row_group(g).num_rows == 0:
                    continue
                stats = meta.row_group(g).column(col).statistics
                if stats is None or not stats.has_min_max or stats.min != stats.max:
                    raise DataError(f"{uri}: row group {g} does not hold exactly one slide")
                out[str(stats.min)] = (uri, g)
    return out


def read_row_group(uri: str, group: int) -> pa.Table:
    """One row group of a Parquet file (one slide of a ``features`` table)."""
    fs, path = storage.arrow_filesystem(uri)
    with fs.open_input_file(path) as f:
        return pq.ParquetFile(f).read_row_group(group)
