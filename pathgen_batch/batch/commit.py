"""Exactly once: the commit protocol of a scoring run, and its resume.

Ray Data's ``write_parquet`` appends, so a rerun would duplicate rows; a run therefore keeps its
own state under ``<output>/_runs/run_id=<id>/`` (the leading underscore hides it from Hive
dataset readers)::

    run.json                         the run's identity: models, contract, settings (written
                                     once, at the first start; a resume must match it)
    inputs.parquet                   the run's input slides, frozen at the first start
    attempts/<slide>/<attempt id>    one empty marker per attempt at a slide
    slides/<slide>/<attempt id>/     that attempt's per-slide tables (thumbnails, written by
                                     the encoder stage; transcriptomes, tile_attention,
                                     features, by the scorer), each written whole
    commits/<slide>.json             THE commit: created once, never overwritten (local: hard
                                     link of a complete file; S3: conditional PUT). It holds
                                     the slide's predictions row or its failures row and names
                                     the attempt whose per-slide files belong to it.
    patients/<sha256 of id>.json     a patient's commit, created once after all its slides
                                     have theirs (:mod:`pathgen_batch.batch.patients`)

The invariant follows from the commit file: a slide has a commit or not; its commit is either
``scored`` or ``failed``, never both; a second attempt (a Ray retry, a rerun) that finds the
commit does nothing, and one that loses a race to create it leaves only unreferenced files.
After the pipeline, slides still without a commit are retried in another pass; those left
after the last pass get a ``pipeline`` failure commit, so none is lost.

:func:`consolidate` then streams every commit, in input order, into the run's partition of each
table (whole part files with deterministic names, so a consolidation interrupted and rerun
writes the same files), writes the ``runs`` row last - the run is complete from then on, and
the readers of :mod:`pathgen_batch.tables` see it - and finally removes the per-slide files.
A different run id writes only under its own ``run_id=`` folders and never touches another run.
"""

from __future__ import annotations

import concurrent.futures as cf
import hashlib
import json
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

import pyarrow as pa

from pathgen_batch import storage
from pathgen_batch.errors import ConfigError, DataError
from pathgen_batch.storage import RetryPolicy, SlideSource
from pathgen_batch.tables import io as tio
from pathgen_batch.tables.rows import Lineage, failure_record, records_table
from pathgen_batch.tables.schemas import RUNS, features_schema, schema_for

STAGING = "_runs"
SLIDE_TABLES = ("transcriptomes", "tile_attention", "thumbnails", "features")
# Parquet row groups: ``transcriptomes``, ``thumbnails`` and ``features`` keep one slide per row
# group, so the min == max slide_id statistics let pyarrow (and DuckDB through it) skip every
# other slide for ``slide_id IN (...)``, which range statistics of several slides cannot do
# (benchmarks/bench_query.py); a report reads only the thumbnails it shows
ONE_GROUP_PER_SLIDE = ("transcriptomes", "thumbnails")
Status = Literal["scored", "failed"]
T = TypeVar("T")
U = TypeVar("U")


@dataclass(frozen=True)
class RunLayout:
    """Where a run's state and tables live."""

    output: str
    run_id: str

    def __post_init__(self) -> None:
        storage.check_run_id(self.run_id)

    @property
    def root(self) -> str:
        return storage.join(self.output, STAGING, f"run_id={self.run_id}")

    @property
    def run_json(self) -> str:
        return storage.join(self.root, "run.json")

    @property
    def inputs(self) -> str:
        return storage.join(self.root, "inputs.parquet")

    @property
    def listing(self) -> str:
        """What listing the archive found and skipped (``storage.ArchiveListing``, as JSON)."""
        return storage.join(self.root, "listing.json")

    @property
    def commits(self) -> str:
        return storage.join(self.root, "commits")

    def commit(self, slide_id: str) -> str:
        return storage.join(self.commits, f"{storage.check_slide_id(slide_id)}.json")

    def patient_commit(self, patient_id: str) -> str:
        """A patient's commit (named by a digest: a patient id is any text)."""
        key = hashlib.sha256(patient_id.encode("utf-8")).hexdigest()[:40]
        return storage.join(self.root, "patients", f"{key}.json")

    def attempts(self, slide_id: str) -> str:
        return storage.join(self.root, "attempts", storage.check_slide_id(slide_id))

    def slide_file(self, slide_id: str, attempt_id: str, table: str) -> str:
        if table not in SLIDE_TABLES:
            raise DataError(f"per-slide table: expected one of {SLIDE_TABLES}, got {table!r}")
        return storage.join(
            self.root, "slides", storage.check_slide_id(slide_id), attempt_id, f"{table}.parquet"
        )

    @property
    def runs_row(self) -> str:
        return storage.join(tio.partition_uri(self.output, "runs", self.run_id), tio.RUNS_FILE)


# -- the run's identity and inputs ---------------------------------------------------------
_INPUTS_SCHEMA = pa.schema(
    [
        ("uri", pa.string()),
        ("slide_id", pa.string()),
        ("size", pa.int64()),
        ("patient_id", pa.string()),
        ("mpp", pa.float64()),
    ]
)


def _inputs_bytes(sources: Sequence[SlideSource]) -> bytes:
    t = pa.Table.from_pylist(
        [
            {
                "uri": s.uri,
                "slide_id": s.slide_id,
                "size": s.size,
                "patient_id": s.patient_id,
                "mpp": s.mpp,
            }
            for s in sources
        ],
        schema=_INPUTS_SCHEMA,
    )
    return tio.table_bytes(t)


def read_inputs(layout: RunLayout, retry: RetryPolicy) -> list[SlideSource]:
    """The run's frozen input slides, in input order."""
    t = tio.read_parquet_bytes(storage.read_bytes(layout.inputs, retry), layout.inputs)
    return [SlideSource(**row) for row in t.to_pylist()]


def identity_diff(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """Keys of a run's identity that differ (a resume must not change them)."""
    keys = sorted(set(old) | set(new))
    return [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in keys if old.get(k) != new.get(k)]


@dataclass
class RunState:
    """A run's frozen inputs and identity; the driver's view of the commit protocol."""

    layout: RunLayout
    identity: dict[str, Any]
    inputs: list[SlideSource]
    resumed: bool
    retry: RetryPolicy = field(default_factory=RetryPolicy)

    @classmethod
    def begin(
        cls,
        layout: RunLayout,
        identity: Mapping[str, Any],
        list_inputs: Callable[[], Sequence[SlideSource]],
        retry: RetryPolicy = storage.DEFAULT_RETRY,
    ) -> RunState:
        """Start the run, or resume it when ``run.json`` exists (its identity must match).

        ``list_inputs`` is called only for a new run; a resumed run keeps its frozen inputs.
        """
        ident = json.loads(json.dumps(dict(identity), sort_keys=True))
        if storage.exists(layout.run_json, retry):
            old = json.loads(storage.read_bytes(layout.run_json, retry))
            diffs = identity_diff(old, ident)
            if diffs:
                raise ConfigError(
                    f"run {layout.run_id} in {layout.output} was started with other models or "
                    f"settings ({'; '.join(diffs)}); resume it with the same ones, or start a "
                    "new run id"
                )
            inputs = read_inputs(layout, retry)
            return cls(layout, ident, inputs, resumed=True, retry=retry)
        inputs = list(list_inputs())
        if not inputs:
            raise DataError("the archive holds no slides (check the URI and the extensions)")
        storage.write_bytes(layout.inputs, _inputs_bytes(inputs), retry)
        storage.write_bytes(
            layout.run_json, json.dumps(ident, indent=2, sort_keys=True).encode(), retry
        )
        return cls(layout, ident, inputs, resumed=False, retry=retry)

    def committed(self) -> set[str]:
        """Slide ids with a commit."""
        names = [
            storage.basename(u) for u, _ in storage.list_files(self.layout.commits, self.retry)
        ]
        return {n[: -len(".json")] for n in names if n.endswith(".json") and not n.startswith(".")}

    def pending(self) -> list[SlideSource]:
        """Inputs without a commit, in input order."""
        done = self.committed()
        return [s for s in self.inputs if s.slide_id not in done]

    def is_complete(self) -> bool:
        return storage.exists(self.layout.runs_row, self.retry)


# -- per slide (runs in workers) -----------------------------------------------------------
def begin_attempt(layout: RunLayout, slide_id: str, retry: RetryPolicy) -> tuple[int, str]:
    """(attempt number, attempt id) of a new attempt at ``slide_id``; leaves its marker."""
    folder = layout.attempts(slide_id)
    n = len(storage.list_files(folder, retry)) + 1
    attempt_id = f"{n:04d}-{uuid.uuid4().hex[:12]}"
    storage.write_bytes(storage.join(folder, attempt_id), b"", retry)
    return n, attempt_id


def attempts_made(layout: RunLayout, slide_id: str, retry: RetryPolicy) -> int:
    return len(storage.list_files(layout.attempts(slide_id), retry))


def is_committed(layout: RunLayout, slide_id: str, retry: RetryPolicy) -> bool:
    return storage.exists(layout.commit(slide_id), retry)


def write_slide_table(
    layout: RunLayout,
    slide_id: str,
    attempt_id: str,
    table: str,
    data: pa.Table,
    retry: RetryPolicy,
) -> None:
    storage.write_bytes(
        layout.slide_file(slide_id, attempt_id, table), tio.table_bytes(data), retry
    )


def commit(
    layout: RunLayout,
    slide_id: str,
    status: Status,
    record: Mapping[str, Any],
    *,
    attempt: int,
    attempt_id: str | None,
    tables: Sequence[str] = (),
    stats: Mapping[str, Any] | None = None,
    retry: RetryPolicy,
) -> bool:
    """Create the slide's commit; False when another attempt committed it first."""
    if status not in ("scored", "failed"):
        raise DataError(f"commit status: expected 'scored' or 'failed', got {status!r}")
    body = {
        "slide_id": slide_id,
        "status": status,
        "attempt": attempt,
        "attempt_id": attempt_id,
        "tables": list(tables),
        "record": dict(record),
        "stats": dict(stats or {}),
    }
    return storage.create_exclusive(layout.commit(slide_id), json.dumps(body).encode(), retry)


def read_commit(layout: RunLayout, slide_id: str, retry: RetryPolicy) -> dict[str, Any]:
    data = storage.read_bytes(layout.commit(slide_id), retry)
    try:
        body = json.loads(data)
    except json.JSONDecodeError as e:
        raise DataError(f"{layout.commit(slide_id)}: not valid JSON ({e})") from e
    if body.get("slide_id") != slide_id or body.get("status") not in ("scored", "failed"):
        raise DataError(f"{layout.commit(slide_id)}: not a commit of slide {slide_id}")
    return dict(body)


def fail_leftovers(state: RunState, lineage: Lineage, reason: str, retry: RetryPolicy) -> list[str]:
    """Commit a ``pipeline`` failure for every input still without a commit; their ids."""
    out = []
    for s in state.pending():
        n = attempts_made(state.layout, s.slide_id, retry)
        rec = failure_record(
            slide_id=s.slide_id,
            source_uri=s.uri,
            patient_id=s.patient_id,
            stage="pipeline",
            error_type="NotProcessed",
            message=reason,
            attempt=max(n, 1),
            lineage=lineage,
        )
        commit(
            state.layout,
            s.slide_id,
            "failed",
            rec,
            attempt=max(n, 1),
            attempt_id=None,
            retry=retry,
        )
        out.append(s.slide_id)
    return out


# -- consolidation (driver) ----------------------------------------------------------------
def ordered_map(fn: Callable[[T], U], items: Iterable[T], workers: int = 8) -> Iterator[U]:
    """``map(fn, items)`` on a thread pool, in order, at most ``2 * workers`` items ahead."""
    window = max(1, 2 * workers)
    with cf.ThreadPoolExecutor(max_workers=workers) as pool:
        pending: list[cf.Future[U]] = []
        for item in items:
            pending.append(pool.submit(fn, item))
            if len(pending) >= window:
                yield pending.pop(0).result()
        for f in pending:
            yield f.result()


@dataclass(frozen=True)
class Consolidated:
    """What a consolidation wrote."""

    n_scored: int
    n_failed: int
    n_tiles: int
    parts: dict[str, list[str]]
    seconds: float
    n_patients: int = 0


def consolidate(
    state: RunState,
    runs_record: Callable[[int, int, int], Mapping[str, Any]],
    feature_dim: int | None,
    retry: RetryPolicy,
    tmp_dir: str | None = None,
    patients: Iterable[Mapping[str, Any]] | None = None,
) -> Consolidated:
    """Stream all commits into the run's table partitions, then write the ``runs`` row.

    ``runs_record(n_scored, n_failed, n_tiles)`` gives the runs row; ``feature_dim`` set means
    the run keeps a ``features`` table; ``patients`` set (the committed patient records, see
    :func:`pathgen_batch.batch.patients.patient_records`) means it keeps a ``patients`` table.
    Every input must have a commit (DataError otherwise).
    """
    t0 = time.perf_counter()
    layout = state.layout
    missing = state.pending()
    if missing:
        raise DataError(
            f"run {layout.run_id}: {len(missing)} slide(s) have no commit yet, e.g. "
            f"{[s.slide_id for s in missing[:5]]}"
        )
    run = layout.run_id
    writers: dict[str, tio.PartWriter] = {}
    for table in ("predictions", "failures", "transcriptomes", "tile_attention", "thumbnails"):
        writers[table] = tio.PartWriter(
            tio.partition_uri(layout.output, table, run),
            schema_for(table),
            run,
            group_per_write=table in ONE_GROUP_PER_SLIDE,
            tmp_dir=tmp_dir,
            retry=retry,
        )
    if feature_dim is not None:
        writers["features"] = tio.PartWriter(
            tio.partition_uri(layout.output, "features", run),
            features_schema(feature_dim),
            run,
            group_per_write=True,
            tmp_dir=tmp_dir,
            retry=retry,
        )

    def load(source: SlideSource) -> tuple[dict[str, Any], dict[str, pa.Table]]:
        body = read_commit(layout, source.slide_id, retry)
        tables: dict[str, pa.Table] = {}
        if body["status"] == "scored":
            for table in body["tables"]:
                if table == "features" and "features" not in writers:
                    continue
                uri = layout.slide_file(source.slide_id, body["attempt_id"], table)
                tables[table] = tio.read_parquet_bytes(storage.read_bytes(uri, retry), uri)
        return body, tables

    if patients is not None:
        writers["patients"] = tio.PartWriter(
            tio.partition_uri(layout.output, "patients", run),
            schema_for("patients"),
            run,
            tmp_dir=tmp_dir,
            retry=retry,
        )

    n_scored = n_failed = n_tiles = n_patients = 0
    try:
        for body, tables in ordered_map(load, state.inputs):
            if body["status"] == "scored":
                writers["predictions"].write(records_table([body["record"]], "predictions"))
                n_scored += 1
                n_tiles += int(body["record"]["n_tiles"])
                for table, t in tables.items():
                    writers[table].write(t)
            else:
                writers["failures"].write(records_table([body["record"]], "failures"))
                n_failed += 1
        for rec in patients or ():
            writers["patients"].write(records_table([rec], "patients"))
            n_patients += 1
        parts = {table: w.close() for table, w in writers.items()}
    except BaseException:
        for w in writers.values():
            w.abort()
        raise
    row = records_table([runs_record(n_scored, n_failed, n_tiles)], "runs")
    tio.write_table(
        tio.partition_uri(layout.output, "runs", run), row, RUNS, run, name=tio.RUNS_FILE
    )
    storage.delete_prefix(storage.join(layout.root, "slides"), retry)
    return Consolidated(
        n_scored, n_failed, n_tiles, parts, time.perf_counter() - t0, n_patients=n_patients
    )
