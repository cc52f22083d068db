"""Checking a cohort folder: every problem at once, one line each, naming file, row and column.

:func:`validate_cohort` reads a cohort (see :mod:`pathgen_batch.cohort.format`), checks it and
returns a :class:`Validation`: the problems found and, when there are none, the normalised
:class:`~pathgen_batch.cohort.model.Cohort`. Checked: missing files and columns, unknown slide
columns, duplicate ids, patients without slides, no patient (or too few in a fold's training
part) with expression, rows naming unknown patients,
grades outside the declared classes, unreadable times, events and folds, slide files missing,
unreadable or without MPP (``open_slides``), NaN or negative expression for the declared unit,
panel genes absent from the expression table, and too few events or grade classes for the folds.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import pandas as pd

from pathgen_batch import storage
from pathgen_batch.cohort.format import (
    EVENT_FALSE,
    EVENT_TRUE,
    LABEL_COLUMNS,
    LINEAR_UNITS,
    PANEL,
    PATIENT,
    SLIDE_COLUMNS,
    SLIDE_REQUIRED,
    with_overrides,
)
from pathgen_batch.cohort.model import MIN_EXPRESSION, Cohort
from pathgen_batch.cohort.read import Problem, RawCohort, read_raw
from pathgen_batch.cohort.slide_checks import check_slide_files
from pathgen_batch.errors import ConfigError, DataError
from pathgen_batch.omics.panel import GenePanel

MAX_LINES = 8  # per kind of problem; the rest is counted on one more line


@dataclass
class Validation:
    """What :func:`validate_cohort` found: problems (empty when the cohort is valid)."""

    root: str
    problems: list[Problem] = field(default_factory=list)
    cohort: Cohort | None = None

    @property
    def ok(self) -> bool:
        return not self.problems and self.cohort is not None

    def lines(self) -> list[str]:
        return [p.line() for p in self.problems]

    def require(self) -> Cohort:
        """The cohort; a DataError holding every problem line when there is any."""
        if self.ok and self.cohort is not None:
            return self.cohort
        lines = self.lines()
        raise DataError(
            f"{self.root}: {len(lines)} problem(s) in the cohort "
            "(`pathgen-batch cohort validate` lists them)\n" + "\n".join(lines)
        )


class _Problems:
    def __init__(self, out: list[Problem]) -> None:
        self.out = out

    def add(self, file: str, message: str, row: int | None = None, col: str | None = None) -> None:
        self.out.append(Problem(file, message, row, col))

    def rows(
        self, file: str, col: str | None, rows: Iterable[int], message: Callable[[int], str]
    ) -> None:
        """One line per bad row (0-based positions), at most MAX_LINES, then a count."""
        rows = list(rows)
        for r in rows[:MAX_LINES]:
            self.add(file, message(r), r + 1, col)
        if len(rows) > MAX_LINES:
            self.add(file, f"{len(rows) - MAX_LINES} more row(s) with the same problem", None, col)


def _show(v: object) -> str:
    """A cell value for a message: text quoted, numbers as written."""
    return repr(v) if isinstance(v, str) else str(v)


def _missing_text(s: pd.Series) -> pd.Series:
    return s.isna() | (s.astype(str).str.strip() == "")


def _ids(p: _Problems, file: str, df: pd.DataFrame, col: str, unique: bool) -> bool:
    if col not in df.columns:
        p.add(file, f"missing column {col!r} (columns: {list(df.columns)[:8]})")
        return False
    missing = _missing_text(df[col]).to_numpy()
    p.rows(file, col, np.flatnonzero(missing), lambda r: "empty id")
    df[col] = df[col].astype(str).str.strip().where(~missing, "")
    if unique:
        dup = np.flatnonzero(df[col].duplicated().to_numpy() & ~missing)
        p.rows(file, col, dup, lambda r: f"duplicate id {df[col].iloc[r]!r}")
    return True


def _grade_classes(p: _Problems, raw: RawCohort, file: str, grade: pd.Series) -> tuple[str, ...]:
    values = [str(g) for g in pd.unique(grade.dropna())]
    if raw.settings.grade_classes is not None:
        classes = raw.settings.grade_classes
    elif raw.grade_order is not None:
        classes = raw.grade_order
    else:
        nums = pd.to_numeric(pd.Series(values, dtype=object), errors="coerce")
        if nums.isna().any():
            p.add(
                file,
                f"text grades {sorted(values)[:6]} need an order: list them lowest "
                "first as grade_classes in cohort.toml",
                col="grade",
            )
            return ()
        classes = tuple(v for _, v in sorted(zip(nums.tolist(), values, strict=True)))
    bad = np.flatnonzero((grade.notna() & ~grade.isin(classes)).to_numpy())
    p.rows(file, "grade", bad, lambda r: f"{grade.iloc[r]!r} is not a grade class {list(classes)}")
    return tuple(classes)


def _as_text(s: pd.Series) -> pd.Series:
    """Grades as text: 2.0 -> '2', None stays None."""

    def one(v: object) -> object:
        if v is None or (isinstance(v, float) and np.isnan(v)):
            return None
        if isinstance(v, float) and v.is_integer():
            return str(int(v))
        return str(v).strip() or None

    return s.map(one).astype(object)


def _labels(p: _Problems, file: str, c: pd.DataFrame) -> None:
    """time, event and fold, parsed in place; bad values are problems."""
    n = len(c)
    if "time" in c.columns:
        t = pd.to_numeric(c["time"], errors="coerce")
        bad = np.flatnonzero((c["time"].notna() & (t.isna() | (t < 0))).to_numpy())
        p.rows(file, "time", bad, lambda r: f"{_show(c['time'].iloc[r])} is not a time >= 0")
        c["time"] = t.where(t >= 0).astype(np.float64)
    else:
        c["time"] = np.full(n, np.nan)
    if "event" in c.columns:
        text = c["event"].map(lambda v: None if pd.isna(v) else str(v).strip().lower())
        ev = text.map(lambda v: True if v in EVENT_TRUE else False if v in EVENT_FALSE else None)
        bad = np.flatnonzero((text.notna() & ev.isna()).to_numpy())
        p.rows(
            file, "event", bad, lambda r: f"{_show(c['event'].iloc[r])} is not 0/1 or true/false"
        )
        c["event"] = pd.array(ev.tolist(), dtype="boolean")
    else:
        c["event"] = pd.array([None] * n, dtype="boolean")
    half = np.flatnonzero((c["time"].isna() != c["event"].isna()).to_numpy())
    p.rows(file, "time/event", half, lambda r: "an outcome needs both time and event (or neither)")
    if "fold" in c.columns:
        f = pd.to_numeric(c["fold"], errors="coerce")
        ok = f.notna() & (f == f.round()) & (f >= 0)
        bad = np.flatnonzero((c["fold"].notna() & ~ok).to_numpy())
        p.rows(file, "fold", bad, lambda r: f"{_show(c['fold'].iloc[r])} is not a fold number >= 0")
        if c["fold"].notna().any() and c["fold"].isna().any():
            miss = np.flatnonzero(c["fold"].isna().to_numpy())
            p.rows(file, "fold", miss, lambda r: "no fold; give every patient a fold or none")
        c["fold"] = f.where(ok).astype("Int64")
    else:
        c["fold"] = pd.array([None] * n, dtype="Int64")


def _split_slides(
    p: _Problems, raw: RawCohort, file: str, c: pd.DataFrame
) -> tuple[pd.DataFrame, pd.DataFrame, str] | None:
    """(patient-level clinical, slides table as read, its file name)."""
    in_clinical = [col for col in SLIDE_COLUMNS if col in c.columns]
    if raw.slides is not None:
        if in_clinical:
            p.add(file, f"slide column(s) {in_clinical} here and a {raw.slides[0]} too; keep one")
        slides_file, slides = raw.slides[0], raw.slides[1].copy()
        if not _ids(p, file, c, PATIENT, unique=True):
            return None
        return c, slides, slides_file
    if not in_clinical:
        p.add("slides.csv|parquet", "missing (or give slide_id, slide_uri in the clinical table)")
        return None
    if not _ids(p, file, c, PATIENT, unique=False):
        return None
    slides = c[[PATIENT, *in_clinical]].copy()
    patient_cols = [col for col in c.columns if col not in SLIDE_COLUMNS]
    per_patient = c[patient_cols].astype(str).groupby(c[PATIENT], sort=False).nunique()
    for pid, row in per_patient.iterrows():
        for col in [k for k, v in row.items() if v > 1]:
            first = int(np.flatnonzero((c[PATIENT] == pid).to_numpy())[0])
            p.add(
                file,
                f"patient {pid} has different {col} values on its slide rows",
                first + 1,
                str(col),
            )
    return c.drop(columns=in_clinical).drop_duplicates(PATIENT), slides, file


def _slides(
    p: _Problems, root: str, file: str, s: pd.DataFrame, patients: list[str], open_slides: bool
) -> pd.DataFrame:
    for col in ("patient_id", *SLIDE_REQUIRED):
        if col not in s.columns:
            p.add(file, f"missing column {col!r}")
            return s.iloc[:0]
    unknown = [col for col in s.columns if col not in (PATIENT, *SLIDE_COLUMNS)]
    if unknown:
        known_cols = [PATIENT, *SLIDE_COLUMNS]
        p.add(file, f"unknown column(s) {unknown}; a slides table holds {known_cols}")
    _ids(p, file, s, PATIENT, unique=False)
    _ids(p, file, s, "slide_id", unique=True)
    known = set(patients)
    stray = np.flatnonzero(~s[PATIENT].isin(known).to_numpy())
    p.rows(file, PATIENT, stray, lambda r: f"patient {s[PATIENT].iloc[r]!r} is not in clinical")
    lacking = [pid for pid in patients if pid not in set(s[PATIENT])]
    if lacking:
        p.add(file, f"{len(lacking)} patient(s) have no slide, e.g. {lacking[:5]}", col=PATIENT)
    uris = []
    for r, u in enumerate(s["slide_uri"]):
        text = "" if pd.isna(u) else str(u).strip()
        if not text:
            p.add(file, "empty slide_uri", r + 1, "slide_uri")
        elif not storage.is_s3(text) and not PurePosixPath(text).is_absolute():
            if ".." in PurePosixPath(text).parts:
                p.add(
                    file,
                    f"{text!r}: a relative slide_uri must not contain '..'",
                    r + 1,
                    "slide_uri",
                )
                text = ""
            else:
                text = storage.join(root, *PurePosixPath(text).parts)
        uris.append(text)
    s["slide_uri"] = uris
    if "mpp" in s.columns:
        m = pd.to_numeric(s["mpp"], errors="coerce")
        bad = np.flatnonzero((s["mpp"].notna() & ~(m > 0)).to_numpy())
        p.rows(file, "mpp", bad, lambda r: f"{_show(s['mpp'].iloc[r])} is not a number > 0 (um/px)")
        s["mpp"] = m.where(m > 0).astype(np.float64)
    else:
        s["mpp"] = np.nan
    s = s[[PATIENT, *SLIDE_COLUMNS]].reset_index(drop=True)
    if open_slides:
        for r, msg in check_slide_files(s):
            p.add(file, msg, r + 1, "slide_uri")
    order = {pid: i for i, pid in enumerate(patients)}
    s = s.assign(_order=s[PATIENT].map(order)).sort_values("_order", kind="stable")
    return s[[PATIENT, *SLIDE_COLUMNS]].reset_index(drop=True)


def _expression(
    p: _Problems, raw: RawCohort, panel: GenePanel | None, patients: list[str]
) -> tuple[pd.DataFrame | None, int]:
    assert raw.expression is not None
    file, e = raw.expression[0], raw.expression[1].copy()
    if PATIENT not in e.columns and e.index.name == PATIENT:
        e = e.reset_index()
    if not _ids(p, file, e, PATIENT, unique=True):
        return None, 0
    stray = np.flatnonzero(~e[PATIENT].isin(set(patients)).to_numpy())
    p.rows(file, PATIENT, stray, lambda r: f"patient {e[PATIENT].iloc[r]!r} is not in clinical")
    if not set(e[PATIENT]) & set(patients):  # some patients without expression are fine
        p.add(
            file,
            f"no patient has expression (none of the {len(patients)} patient(s) of "
            f"{raw.clinical[0] if raw.clinical else 'clinical'}); the generator needs some",
            col=PATIENT,
        )
    if panel is None:
        return None, 0
    absent = [g for g in panel.genes if g not in set(map(str, e.columns))]
    if absent:
        p.add(file, f"{len(absent)} gene(s) of {PANEL} have no column here, e.g. {absent[:5]}")
        return None, 0
    e.columns = [str(col) for col in e.columns]
    unit = raw.settings.expression_unit
    values = e[list(panel.genes)].apply(pd.to_numeric, errors="coerce")
    for g in panel.genes:
        bad = values[g].isna() & e[g].notna()
        p.rows(file, g, np.flatnonzero(bad.to_numpy()), lambda r: "not a number")
        nan = np.flatnonzero(e[g].isna().to_numpy())
        p.rows(file, g, nan, lambda r: "missing (NaN) expression value")
        if unit in LINEAR_UNITS:
            neg = np.flatnonzero((values[g] < 0).to_numpy())
            p.rows(file, g, neg, lambda r: f"negative value for expression_unit {unit!r}")
        if len(p.out) > 200:
            p.add(file, "too many problems; stopped checking further genes")
            break
    x = values.to_numpy(dtype=np.float64)
    if unit in LINEAR_UNITS:
        x = np.log2(np.maximum(x, 0.0) + 1.0)
    frame = pd.DataFrame(x, index=pd.Index(e[PATIENT], name=PATIENT), columns=list(panel.genes))
    keep = [pid for pid in patients if pid in frame.index]
    return frame.loc[keep], e.shape[1] - 1 - panel.n_genes


def _fold_problems(p: _Problems, file: str, cohort: Cohort) -> None:
    c = cohort.clinical
    if len(cohort.grade_classes) and c["grade_index"].nunique() < 2:
        p.add(file, "fewer than two grade classes among the known grades", col="grade")
    if int(c["event"].fillna(False).astype(bool).sum()) < 2:
        p.add(file, "fewer than two events: survival models need events", col="event")
    rna = c[PATIENT].isin(set(cohort.expression.index))
    if int(rna.sum()) < MIN_EXPRESSION:
        p.add(
            file,
            f"{int(rna.sum())} patient(s) with expression; the generator needs at least "
            f"{MIN_EXPRESSION}",
            col=PATIENT,
        )
    if c["fold"].notna().all():
        for f in sorted(set(c["fold"].tolist())):
            rest = c[c["fold"] != f]
            n_rna = int(rna[c["fold"] != f].sum())
            if n_rna < MIN_EXPRESSION <= int(rna.sum()):
                p.add(
                    file,
                    f"fold {f}: its training part has {n_rna} patient(s) with expression; the "
                    f"generator needs at least {MIN_EXPRESSION}",
                    col="fold",
                )
            if rest["grade_index"].nunique() < 2:
                p.add(
                    file,
                    f"fold {f}: its training part has fewer than two grade classes",
                    col="fold",
                )
            if not rest["event"].fillna(False).astype(bool).any():
                p.add(file, f"fold {f}: its training part has no events", col="fold")
    elif cohort.folds_possible() < cohort.settings.folds:
        k, most = cohort.settings.folds, cohort.folds_possible()
        msg = f"{k} folds requested but the events and grade classes fill at most {most}"
        p.add(file, msg + "; set folds in cohort.toml", col="fold")


def validate_cohort(
    root: str | Path,
    *,
    open_slides: bool = True,
    folds: int | None = None,
    check_folds: bool = True,
    settings: Mapping[str, Any] | None = None,
) -> Validation:
    """Read and check the cohort at ``root`` (a folder or an ``s3://`` prefix).

    open_slides: open every local slide (and check that every ``s3://`` one exists) to find
    missing or unreadable slides and slides without MPP. folds: check for this many folds
    instead of ``cohort.toml``'s (when the clinical table gives none). check_folds: report
    too few events or grade classes for the folds (training needs them; reading slides not).
    settings: ``cohort.toml`` keys given on the command line (e.g. ``expression_unit``,
    ``grade_classes``), over the file's; None values are not given.
    """
    root = storage.normalise(root)
    if not storage.is_s3(root) and not storage.local_path(root).is_dir():
        return Validation(root, [Problem(root, "no such cohort folder")])
    raw = read_raw(root)
    p = _Problems(list(raw.problems))
    try:
        raw.settings = with_overrides(raw.settings, {**(settings or {}), "folds": folds})
    except ConfigError as e:
        p.add("options", str(e).removeprefix("options: "))
    panel = None
    if raw.panel_text is not None:
        try:
            panel = GenePanel.parse(raw.panel_text, source=PANEL)
        except DataError as e:
            p.add(PANEL, str(e).removeprefix(f"{PANEL}: "))
    if raw.clinical is None:
        return Validation(root, p.out)
    file = raw.clinical[0]
    split = _split_slides(p, raw, file, raw.clinical[1].copy())
    if split is None:
        return Validation(root, p.out)
    clinical, slides_raw, slides_file = split
    clinical = clinical.reset_index(drop=True)
    patients = clinical[PATIENT].tolist()
    if not patients:
        p.add(file, "no patients")
        return Validation(root, p.out)
    slides = _slides(p, root, slides_file, slides_raw, patients, open_slides)
    classes: tuple[str, ...] = ()
    if "grade" in clinical.columns:
        clinical["grade"] = _as_text(clinical["grade"])
        classes = _grade_classes(p, raw, file, clinical["grade"])
        clinical["grade"] = clinical["grade"].where(clinical["grade"].isin(classes), None)
    else:
        clinical["grade"] = pd.Series([None] * len(clinical), dtype=object)
    index = {g: i for i, g in enumerate(classes)}
    clinical["grade_index"] = pd.array([index.get(g) for g in clinical["grade"]], dtype="Int64")
    _labels(p, file, clinical)
    expression, ignored = _expression(p, raw, panel, patients) if raw.expression else (None, 0)
    if p.out or expression is None or panel is None:
        return Validation(root, p.out)
    covariates = tuple(
        str(col) for col in clinical.columns if col not in (PATIENT, *LABEL_COLUMNS, "grade_index")
    )
    ordered = clinical[[PATIENT, "grade", "grade_index", "time", "event", "fold", *covariates]]
    cohort = Cohort(
        root=root,
        settings=raw.settings,
        clinical=ordered.reset_index(drop=True),
        slides=slides,
        expression=expression,
        panel=panel,
        grade_classes=classes,
        covariates=covariates,
        ignored_genes=ignored,
    )
    if check_folds:
        _fold_problems(p, file, cohort)
    return Validation(root, p.out, None if p.out else cohort)


def load_cohort(
    root: str | Path,
    *,
    open_slides: bool = False,
    folds: int | None = None,
    check_folds: bool = False,
    settings: Mapping[str, Any] | None = None,
) -> Cohort:
    """The checked cohort at ``root``; a DataError listing every problem, one per line.

    Slide files are not opened unless ``open_slides`` (training reads features, not slides);
    the folds are checked with ``check_folds`` (as training does).
    """
    v = validate_cohort(
        root, open_slides=open_slides, folds=folds, check_folds=check_folds, settings=settings
    )
    return v.require()
