"""``pathgen-batch query``: SQL and shortcuts over the output tables (complete runs only)."""

from __future__ import annotations

import io
import json
import math
from collections.abc import Callable
from typing import Any

import click
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from pathgen_batch import storage
from pathgen_batch.cli.options import OneLineErrors
from pathgen_batch.errors import DataError
from pathgen_batch.tables.query import OutputStore

FORMATS = ("table", "csv", "json", "parquet")
_SETTINGS = {"help_option_names": ["-h", "--help"]}


class _QueryGroup(OneLineErrors):
    """``query ROOT SQL`` is short for ``query sql ROOT SQL``; library errors are one line."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        first = next((a for a in args if not a.startswith("-")), None)
        if first is not None and first not in self.commands:
            args = ["sql", *args]
        return super().parse_args(ctx, args)


@click.group(cls=_QueryGroup, context_settings=_SETTINGS)
def query() -> None:
    """SQL over the output tables of complete runs (a folder or s3://bucket/prefix).

    \b
      pathgen-batch query OUTPUT_ROOT "SELECT slide_id, risk FROM predictions"
      pathgen-batch query OUTPUT_ROOT "SELECT ..." --format parquet --output out.parquet
      pathgen-batch query tables OUTPUT_ROOT
      pathgen-batch query slide OUTPUT_ROOT SLIDE_ID
      pathgen-batch query genes OUTPUT_ROOT --genes TP53,MKI67 [--slides S1,S2]
      pathgen-batch query top-risk OUTPUT_ROOT -n 20

    Views: predictions, transcriptomes, tile_attention, failures, features (when written) and
    runs, each with a run_id column. --run and --model-version (NAME:VERSION, matched against
    the generator and the fusion model of each row) restrict every view. When OUTPUT_ROOT is
    named like a subcommand, write `query sql OUTPUT_ROOT SQL`.
    """


def _filters(fn: Callable[..., Any]) -> Callable[..., Any]:
    fn = click.option("--run", "run_id", default=None, help="Only this run. [all complete runs]")(
        fn
    )
    fn = click.option(
        "--model-version",
        default=None,
        help="Only rows of this model, NAME:VERSION (e.g. pathgen-fusion:3).",
    )(fn)
    return click.argument("root", envvar="PATHGEN_OUTPUT")(fn)


def _output_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    fn = click.option(
        "--format",
        "fmt",
        type=click.Choice(FORMATS),
        default="table",
        show_default=True,
        help="How to write the result.",
    )(fn)
    return click.option(
        "--output", "-o", default=None, help="Write to this file or s3:// URI (parquet needs it)."
    )(fn)


def _plain(value: Any) -> Any:
    """A JSON-ready value: non-finite floats become null, times ISO 8601 strings."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return value


def render(table: pa.Table, fmt: str) -> bytes:
    """``table`` written as ``fmt`` (table, csv, json: an array of row objects, parquet)."""
    if fmt == "parquet":
        sink = pa.BufferOutputStream()
        pq.write_table(table, sink, compression="zstd")
        return bytes(sink.getvalue().to_pybytes())
    if fmt == "json":
        return (json.dumps(_plain(table.to_pylist()), allow_nan=False) + "\n").encode()
    frame = table.to_pandas()
    if fmt == "csv":
        buf = io.StringIO()
        frame.to_csv(buf, index=False)
        return buf.getvalue().encode()
    if fmt == "table":
        text = (
            frame.to_string(index=False)
            if len(frame)
            else f"(no rows; columns {frame.columns.tolist()})"
        )
        return (text + "\n").encode()
    raise DataError(f"format: expected one of {list(FORMATS)}, got {fmt!r}")


def _emit(table: pa.Table, fmt: str, output: str | None) -> None:
    if fmt == "parquet" and output is None:
        raise DataError("--format parquet writes a file: give --output FILE")
    data = render(table, fmt)
    if output is None:
        click.echo(data.decode(), nl=False)
    else:
        storage.write_bytes(output, data)
        click.echo(f"wrote {table.num_rows} row(s) to {output}", err=True)


def _frame(df: pd.DataFrame) -> pa.Table:
    return pa.Table.from_pandas(df, preserve_index=False)


@query.command("sql", context_settings=_SETTINGS)
@_filters
@click.argument("sql")
@_output_options
@click.option("--limit", type=click.IntRange(min=0), default=None, help="At most this many rows.")
def sql_cmd(
    root: str,
    sql: str,
    run_id: str | None,
    model_version: str | None,
    fmt: str,
    output: str | None,
    limit: int | None,
) -> None:
    """Run SQL over the views of ROOT (also: query ROOT SQL)."""
    with OutputStore(root, run_id, model_version) as store:
        _emit(store.arrow(sql, limit=limit), fmt, output)


@query.command("tables", context_settings=_SETTINGS)
@_filters
def tables_cmd(root: str, run_id: str | None, model_version: str | None) -> None:
    """The views of ROOT with their row counts, and the complete runs."""
    with OutputStore(root, run_id, model_version) as store:
        click.echo(store.tables().to_string(index=False))
        click.echo("")
        click.echo(store.runs().to_string(index=False))


@query.command("top-risk", context_settings=_SETTINGS)
@_filters
@click.option("-n", "n", type=click.IntRange(min=1), default=20, show_default=True)
@_output_options
def top_risk_cmd(
    root: str, run_id: str | None, model_version: str | None, n: int, fmt: str, output: str | None
) -> None:
    """The N predictions with the highest risk."""
    with OutputStore(root, run_id, model_version) as store:
        _emit(_frame(store.top_risk(n)), fmt, output)


def _split(text: str | None) -> list[str] | None:
    return None if text is None else [t.strip() for t in text.split(",") if t.strip()]


@query.command("genes", context_settings=_SETTINGS)
@_filters
@click.option("--genes", required=True, help="Comma-separated gene names.")
@click.option("--slides", default=None, help="Comma-separated slide ids. [all]")
@_output_options
def genes_cmd(
    root: str,
    run_id: str | None,
    model_version: str | None,
    genes: str,
    slides: str | None,
    fmt: str,
    output: str | None,
) -> None:
    """A slides x genes frame: GENE.mean and GENE.std per (slide, run)."""
    with OutputStore(root, run_id, model_version) as store:
        frame = store.genes(_split(genes) or [], _split(slides))
        _emit(_frame(frame), fmt, output)


@query.command("slide", context_settings=_SETTINGS)
@_filters
@click.argument("slide_id")
@click.option("--top", type=click.IntRange(min=1), default=10, show_default=True, help="Genes.")
@click.option("--format", "fmt", type=click.Choice(("table", "json")), default="table")
def slide_cmd(
    root: str, run_id: str | None, model_version: str | None, slide_id: str, top: int, fmt: str
) -> None:
    """Everything about SLIDE_ID: prediction, top genes, attention per family, failures."""
    with OutputStore(root, run_id, model_version) as store:
        summary = store.slide(slide_id, top)
    sections = summary.sections()
    if fmt == "json":
        doc = {name: _plain(_frame(df).to_pylist()) for name, df in sections.items()}
        click.echo(json.dumps({"slide_id": slide_id, **doc}, allow_nan=False))
        return
    for name, df in sections.items():
        click.echo(f"== {name} ==")
        if df.empty:
            click.echo("(none)")
        elif name == "prediction":  # wide: one column per run
            click.echo(df.set_index("run_id").T.to_string())
        else:
            click.echo(df.to_string(index=False))
