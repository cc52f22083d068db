"""Reading a cohort folder's files as they are, through :mod:`pathgen_batch.storage`.

Every file is read whole (``storage.read_bytes``), so a cohort may live in a local folder or
under an ``s3://`` prefix. Nothing is checked here beyond "can it be parsed": problems go to
the caller's list as :class:`Problem` lines, so that validation can report them all at once.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from pathgen_batch import storage
from pathgen_batch.cohort.format import (
    CLINICAL,
    EXPRESSION,
    PANEL,
    PATIENT,
    SETTINGS,
    SLIDES,
    TABLE_SUFFIXES,
    CohortSettings,
    parse_settings,
)
from pathgen_batch.errors import PathgenError

TEXT_COLUMNS = (PATIENT, "slide_id", "slide_uri", "grade")  # read as text from CSV


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a cohort: the file, and where known the row (1-based, header not
    counted) and the column."""

    file: str
    message: str
    row: int | None = None
    column: str | None = None

    def line(self) -> str:
        where = self.file
        if self.row is not None:
            where += f" row {self.row}"
        if self.column is not None:
            where += f"{',' if self.row is not None else ''} column {self.column}"
        return f"{where}: {self.message}"


@dataclass
class RawCohort:
    """The files of a cohort as read: table name -> (file name, DataFrame); None when absent."""

    root: str
    settings: CohortSettings
    clinical: tuple[str, pd.DataFrame] | None
    slides: tuple[str, pd.DataFrame] | None
    expression: tuple[str, pd.DataFrame] | None
    panel_text: str | None
    grade_order: tuple[str, ...] | None = None  # a Parquet ordered categorical's categories
    problems: list[Problem] = field(default_factory=list)


def _read_table(uri: str, name: str, problems: list[Problem]) -> pd.DataFrame | None:
    try:
        data = storage.read_bytes(uri)
    except PathgenError as e:
        problems.append(Problem(name, f"cannot be read ({e})"))
        return None
    try:
        if name.endswith(".csv"):
            present = pd.read_csv(io.BytesIO(data), nrows=0).columns
            text = {c: str for c in TEXT_COLUMNS if c in present}
            return pd.read_csv(io.BytesIO(data), dtype=text)
        return pq.read_table(pa.BufferReader(data)).to_pandas()
    except (ValueError, OSError, pa.ArrowException, pd.errors.ParserError) as e:
        kind = "CSV" if name.endswith(".csv") else "Parquet"
        problems.append(Problem(name, f"not a readable {kind} table ({e})"))
        return None


def _find(root: str, stem: str, problems: list[Problem]) -> str | None:
    names = [stem + s for s in TABLE_SUFFIXES if storage.exists(storage.join(root, stem + s))]
    if len(names) > 1:
        problems.append(Problem(" and ".join(names), "both present; keep one of them"))
        return None
    return names[0] if names else None


def read_raw(root: str) -> RawCohort:
    """Read every file of the cohort at ``root``; missing required files become problems."""
    problems: list[Problem] = []
    settings = CohortSettings()
    settings_uri = storage.join(root, SETTINGS)
    if storage.exists(settings_uri):
        try:
            settings = parse_settings(storage.read_bytes(settings_uri).decode("utf-8"))
        except (PathgenError, UnicodeDecodeError) as e:
            problems.append(Problem(SETTINGS, str(e).removeprefix(f"{SETTINGS}: ")))
    tables: dict[str, tuple[str, pd.DataFrame] | None] = {}
    order: tuple[str, ...] | None = None
    for stem, required in ((CLINICAL, True), (SLIDES, False), (EXPRESSION, True)):
        name = _find(root, stem, problems)
        if name is None:
            if required and not any(p.file.startswith(stem + ".") for p in problems):
                problems.append(Problem(f"{stem}.csv|parquet", "missing from the cohort"))
            tables[stem] = None
            continue
        df = _read_table(storage.join(root, name), name, problems)
        if df is not None and stem == CLINICAL and "grade" in df.columns:
            g = df["grade"]
            if isinstance(g.dtype, pd.CategoricalDtype) and g.dtype.ordered:
                order = tuple(str(c) for c in g.dtype.categories)
            if isinstance(g.dtype, pd.CategoricalDtype):
                df["grade"] = g.astype(object)
        tables[stem] = None if df is None else (name, df)
    panel_text = None
    panel_uri = storage.join(root, PANEL)
    if storage.exists(panel_uri):
        try:
            panel_text = storage.read_bytes(panel_uri).decode("utf-8")
        except (PathgenError, UnicodeDecodeError) as e:
            problems.append(Problem(PANEL, f"cannot be read ({e})"))
    else:
        problems.append(Problem(PANEL, "missing from the cohort (columns gene,family)"))
    return RawCohort(
        root,
        settings,
        tables[CLINICAL],
        tables[SLIDES],
        tables[EXPRESSION],
        panel_text,
        order,
        problems,
    )
