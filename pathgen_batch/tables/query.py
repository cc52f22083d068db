"""SQL over the output tables of complete runs (DuckDB in-process), for notebooks and the CLI.

Every output table under ``root`` (a local folder or ``s3://bucket/prefix``) becomes a DuckDB
view of the same name (``predictions``, ``transcriptomes``, ``tile_attention``, ``failures``,
``features`` when written, ``runs``) with the Hive partition column ``run_id``. The views read
pyarrow datasets of the part files of complete runs only (a run counts once its ``runs`` row
exists), through :func:`pathgen_batch.storage.arrow_filesystem`, so S3 needs no DuckDB
extension and nothing is downloaded at run time. Views can be restricted to one run and to rows
produced by one model version (``name:version``, matched against the generator and the fusion
model of each row's lineage).

::

    from pathgen_batch.tables.query import OutputStore
    store = OutputStore("s3://bucket/scores", model_version="pathgen-fusion:3")
    store.query("SELECT slide_id, risk FROM predictions ORDER BY risk DESC LIMIT 5")
    store.genes(["TP53", "MKI67"], slides=["S1", "S2"])   # slides x (gene.mean, gene.std)
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import duckdb
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as pads

from pathgen_batch import storage
from pathgen_batch.errors import DataError
from pathgen_batch.tables.io import PART, RUNS_FILE, check_run_id, complete_runs, table_uri
from pathgen_batch.tables.schemas import PARTITION, SCHEMAS, TABLES

TOP_RISK_COLUMNS = (
    "slide_id",
    "patient_id",
    "risk",
    "risk_lo",
    "risk_hi",
    "risk_group",
    "grade_pred",
    "n_tiles",
    "fusion_model",
    "fusion_version",
    "run_id",
)
RUN_COLUMNS = (
    "run_id",
    "status",
    "started_at",
    "finished_at",
    "n_slides",
    "n_scored",
    "n_failed",
    "generator_model",
    "generator_version",
    "fusion_model",
    "fusion_version",
)


def _literal(value: str) -> str:
    """``value`` as a SQL string literal."""
    return "'" + value.replace("'", "''") + "'"


def parse_model_version(text: object) -> tuple[str, str]:
    """``"name:version"`` -> (name, version); the version may itself hold ':'
    (``pathgen-fusion:bundle:sha256:...``)."""
    if not isinstance(text, str) or ":" not in text:
        raise DataError(
            f"model version: expected NAME:VERSION (e.g. pathgen-fusion:3), got {text!r}"
        )
    name, version = text.split(":", 1)
    if not name or not version:
        raise DataError(
            f"model version: expected NAME:VERSION (e.g. pathgen-fusion:3), got {text!r}"
        )
    return name, version


def _run_in_path(uri: str) -> str | None:
    for part in uri.replace(os.sep, "/").split("/"):
        if part.startswith(f"{PARTITION}="):
            return part[len(PARTITION) + 1 :]
    return None


def _table_files(root: str, table: str, runs: set[str]) -> list[str]:
    """Part files of ``table`` that belong to ``runs`` (one listing per table)."""
    out = []
    for uri, _ in storage.list_files(table_uri(root, table)):
        name = uri.replace(os.sep, "/").rsplit("/", 1)[-1]
        if not (PART.fullmatch(name) or (table == "runs" and name == RUNS_FILE)):
            continue
        if _run_in_path(uri) in runs:
            out.append(uri)
    return sorted(out)


def _dataset(root: str, table: str, files: Sequence[str]) -> pads.Dataset:
    fs, _ = storage.arrow_filesystem(files[0])
    paths = [storage.arrow_filesystem(u)[1] for u in files]
    base = storage.arrow_filesystem(table_uri(root, table))[1]
    part = pads.partitioning(pa.schema([(PARTITION, pa.string())]), flavor="hive")
    schema = SCHEMAS.get(table)
    full = None if schema is None else schema.append(pa.field(PARTITION, pa.string()))
    return pads.dataset(
        paths,
        schema=full,
        filesystem=fs,
        format="parquet",
        partitioning=part,
        partition_base_dir=base,
    )


@dataclass(frozen=True)
class SlideSummary:
    """Everything about one slide: its prediction rows (one per run that scored it), its top
    genes by mean expression, an attention summary per gene family, and its failure rows."""

    slide_id: str
    prediction: pd.DataFrame
    top_genes: pd.DataFrame
    attention: pd.DataFrame
    failures: pd.DataFrame

    def sections(self) -> dict[str, pd.DataFrame]:
        return {
            "prediction": self.prediction,
            "top_genes": self.top_genes,
            "attention": self.attention,
            "failures": self.failures,
        }


class OutputStore:
    """The output tables under ``root`` as DuckDB views (complete runs only).

    run_id: restrict every view to this run. model_version: keep only rows whose generator or
    fusion model is ``name:version``. Missing tables have no view.
    """

    def __init__(
        self, root: str, run_id: str | None = None, model_version: str | None = None
    ) -> None:
        if not isinstance(root, str) or not root:
            raise DataError(f"output root: expected a folder or s3://bucket/prefix, got {root!r}")
        self.root = root
        done = complete_runs(root)
        if not done:
            raise DataError(f"{root}: no complete runs (no runs rows under {root}/runs)")
        if run_id is not None:
            check_run_id(run_id)
            if run_id not in done:
                raise DataError(f"{root}: run {run_id!r} is not a complete run; complete: {done}")
        self.run_ids = [run_id] if run_id is not None else done
        self.model_version = model_version
        where = ""
        if model_version is not None:
            name, version = parse_model_version(model_version)
            n, v = _literal(name), _literal(version)
            where = (
                f" WHERE (generator_model = {n} AND generator_version = {v})"
                f" OR (fusion_model = {n} AND fusion_version = {v})"
            )
        self.con = duckdb.connect(":memory:")
        self.views: list[str] = []
        runs = set(self.run_ids)
        for table in TABLES:
            files = _table_files(root, table, runs)
            if not files:
                continue
            self.con.register(f"_pgb_{table}", _dataset(root, table, files))
            self.con.execute(f'CREATE VIEW "{table}" AS SELECT * FROM "_pgb_{table}"{where}')
            self.views.append(table)
        # user SQL reads the registered tables only: no local files, no network, no extensions
        self.con.execute("SET enable_external_access = false")
        self.con.execute("SET lock_configuration = true")
        if model_version is not None and "runs" in self.views:
            (count,) = self._one("SELECT count(*) FROM runs")
            if count == 0:
                seen = self._one(
                    "SELECT list(DISTINCT m ORDER BY m) FROM (SELECT generator_model || ':' || "
                    "generator_version AS m FROM _pgb_runs UNION ALL SELECT fusion_model || ':' "
                    "|| fusion_version FROM _pgb_runs)"
                )[0]
                raise DataError(
                    f"{root}: no complete run used model {model_version!r}; models used: {seen}"
                )

    # -- plumbing -----------------------------------------------------------------------------
    def close(self) -> None:
        self.con.close()

    def __enter__(self) -> OutputStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _relation(self, sql: str, params: Any = None) -> duckdb.DuckDBPyRelation | None:
        if not isinstance(sql, str) or not sql.strip():
            raise DataError(f"query: expected a SQL statement, got {sql!r}")
        try:
            return self.con.sql(sql, params=params)
        except duckdb.CatalogException as e:
            first = str(e).splitlines()[0]
            raise DataError(f"query failed: {first}; available views: {self.views}") from None
        except duckdb.Error as e:
            raise DataError(f"query failed: {' '.join(str(e).split())}") from None

    def _one(self, sql: str, params: Any = None) -> tuple[Any, ...]:
        rel = self._relation(sql, params)
        rows = [] if rel is None else rel.fetchall()
        if not rows:
            raise DataError(f"query returned no row: {sql}")
        return tuple(rows[0])

    def _need(self, *views: str) -> None:
        missing = [v for v in views if v not in self.views]
        if missing:
            raise DataError(
                f"{self.root}: no {' or '.join(missing)} table in runs {self.run_ids}; "
                f"available views: {self.views}"
            )

    # -- general queries ----------------------------------------------------------------------
    def arrow(self, sql: str, params: Any = None, limit: int | None = None) -> pa.Table:
        """The result of ``sql`` as an Arrow table (at most ``limit`` rows)."""
        if limit is not None and (
            isinstance(limit, bool) or not isinstance(limit, int) or limit < 0
        ):
            raise DataError(f"limit: expected a non-negative integer, got {limit!r}")
        rel = self._relation(sql, params)
        if rel is None:
            return pa.table({})
        if limit is not None:
            rel = rel.limit(limit)
        try:
            return rel.to_arrow_table()
        except duckdb.Error as e:
            raise DataError(f"query failed: {' '.join(str(e).split())}") from None

    def query(self, sql: str, params: Any = None, limit: int | None = None) -> pd.DataFrame:
        """The result of ``sql`` as a pandas DataFrame (at most ``limit`` rows)."""
        return self.arrow(sql, params, limit).to_pandas()

    # -- shortcuts ----------------------------------------------------------------------------
    def tables(self) -> pd.DataFrame:
        """One row per view: name and row count."""
        rows = [(v, self._one(f'SELECT count(*) FROM "{v}"')[0]) for v in self.views]
        return pd.DataFrame(rows, columns=["view", "rows"])

    def runs(self) -> pd.DataFrame:
        """The visible runs: status, times, counts and model versions."""
        self._need("runs")
        cols = ", ".join(RUN_COLUMNS)
        return self.query(f"SELECT {cols} FROM runs ORDER BY started_at, run_id")

    def top_risk(self, n: int = 20) -> pd.DataFrame:
        """The ``n`` predictions with the highest risk (ties by slide id)."""
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise DataError(f"top-risk n: expected a positive integer, got {n!r}")
        self._need("predictions")
        cols = ", ".join(TOP_RISK_COLUMNS)
        return self.query(
            f"SELECT {cols} FROM predictions ORDER BY risk DESC, slide_id, run_id LIMIT $n",
            {"n": n},
        )

    def slide(self, slide_id: str, top: int = 10) -> SlideSummary:
        """Everything about ``slide_id``; a DataError when no visible run knows it."""
        if not isinstance(slide_id, str) or not slide_id:
            raise DataError(f"slide id: expected a non-empty string, got {slide_id!r}")
        if isinstance(top, bool) or not isinstance(top, int) or top < 1:
            raise DataError(f"top genes: expected a positive integer, got {top!r}")
        p = {"s": slide_id}
        empty = pd.DataFrame()

        def part(view: str, sql: str, params: dict[str, Any]) -> pd.DataFrame:
            return self.query(sql, params) if view in self.views else empty

        prediction = part(
            "predictions",
            "SELECT * FROM predictions WHERE slide_id = $s ORDER BY run_id",
            p,
        )
        failures = part("failures", "SELECT * FROM failures WHERE slide_id = $s ORDER BY run_id", p)
        if prediction.empty and failures.empty:
            known = self._known_slides()
            hint = f"; e.g. {known[:5]}" if known else ""
            raise DataError(
                f"slide {slide_id!r}: not in the predictions or failures of runs "
                f"{self.run_ids} ({len(known)} slide(s) known{hint})"
            )
        top_genes = part(
            "transcriptomes",
            "SELECT run_id, gene, family, mean, std, n_samples FROM ("
            " SELECT *, row_number() OVER (PARTITION BY run_id ORDER BY mean DESC, gene_index)"
            " AS k FROM transcriptomes WHERE slide_id = $s)"
            " WHERE k <= $top ORDER BY run_id, k",
            {**p, "top": top},
        )
        attention = part(
            "tile_attention",
            "SELECT run_id, family, count(*) AS n_tiles, max(attention) AS max_attention,"
            " arg_max(x, attention) AS x_max, arg_max(y, attention) AS y_max,"
            " exp(-sum(CASE WHEN attention > 0 THEN attention * ln(attention) ELSE 0 END))"
            " AS effective_tiles"
            " FROM tile_attention WHERE slide_id = $s GROUP BY run_id, family"
            " ORDER BY run_id, family",
            p,
        )
        return SlideSummary(slide_id, prediction, top_genes, attention, failures)

    def _known_slides(self) -> list[str]:
        parts = [
            f"SELECT slide_id FROM {v}" for v in ("predictions", "failures") if v in self.views
        ]
        if not parts:
            return []
        sql = f"SELECT DISTINCT slide_id FROM ({' UNION ALL '.join(parts)}) ORDER BY slide_id"
        return [str(s) for s in self.query(sql)["slide_id"]]

    def genes(self, genes: Sequence[str], slides: Sequence[str] | None = None) -> pd.DataFrame:
        """A slides x genes frame: one row per (slide_id, run_id), columns ``<gene>.mean`` and
        ``<gene>.std`` (spread over the generator's samples) in the order of ``genes``.

        One scan with ``IN`` lists of literals, which DuckDB pushes down to the Parquet row
        groups (their ``slide_id`` statistics skip the other slides); the tables are checked
        for unknown genes or slides only when the result lacks some.
        """
        genes = _names("genes", genes)
        self._need("transcriptomes")
        where = f"gene IN ({', '.join(map(_literal, genes))})"
        if slides is not None:
            slides = _names("slides", slides)
            where += f" AND slide_id IN ({', '.join(map(_literal, slides))})"
        long = self.query(
            f"SELECT slide_id, run_id, gene, mean, std FROM transcriptomes WHERE {where}"
        )
        self._check_found("genes", "gene", genes, set(long["gene"]))
        if slides is not None:
            self._check_found("slides", "slide_id", slides, set(long["slide_id"]))
        wide = long.pivot(index=["slide_id", "run_id"], columns="gene", values=["mean", "std"])
        out = pd.DataFrame(index=wide.index)
        for g in genes:
            for stat in ("mean", "std"):
                out[f"{g}.{stat}"] = wide[(stat, g)] if (stat, g) in wide.columns else float("nan")
        return out.sort_index().reset_index()

    def _check_found(self, what: str, column: str, asked: list[str], found: set[str]) -> None:
        """A DataError naming the ``asked`` values of ``column`` the transcriptomes lack."""
        if all(v in found for v in asked):
            return
        rest = [v for v in asked if v not in found]
        seen = set(
            self.query(
                f"SELECT DISTINCT {column} FROM transcriptomes WHERE list_contains($v, {column})",
                {"v": rest},
            )[column]
        )
        unknown = [v for v in rest if v not in seen]
        if unknown:
            raise DataError(f"{what}: {unknown} not in the transcriptomes of runs {self.run_ids}")


def _names(what: str, values: object) -> list[str]:
    if isinstance(values, str) or not isinstance(values, Sequence):
        raise DataError(f"{what}: expected a list of names, got {values!r}")
    out = []
    for v in values:
        if not isinstance(v, str) or not v.strip():
            raise DataError(f"{what}: expected non-empty names, got {v!r}")
        if v.strip() not in out:
            out.append(v.strip())
    if not out:
        raise DataError(f"{what}: expected at least one name, got none")
    return out


def connect(
    root: str, run_id: str | None = None, model_version: str | None = None
) -> duckdb.DuckDBPyConnection:
    """A DuckDB connection with a view per output table under ``root`` (complete runs only)."""
    return OutputStore(root, run_id, model_version).con


def query(
    root: str,
    sql: str,
    run_id: str | None = None,
    model_version: str | None = None,
    limit: int | None = None,
) -> pd.DataFrame:
    """Run ``sql`` over the output tables under ``root``; a pandas DataFrame."""
    with OutputStore(root, run_id, model_version) as store:
        return store.query(sql, limit=limit)
