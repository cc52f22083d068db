"""The cohort format, version 1: which files a cohort folder holds and what their columns mean.

A cohort is a folder or an ``s3://`` prefix holding::

    clinical.csv | clinical.parquet   one row per patient: patient_id; optional grade, time,
                                      event, fold; any other column is a covariate
    slides.csv | slides.parquet       one row per slide: patient_id, slide_id, slide_uri; optional
                                      mpp. Several slides per patient are allowed. Instead of
                                      this table the clinical table may carry the slide columns
                                      (then one row per slide, patient columns repeated)
    expression.csv | .parquet         patient_id and one column per gene
    gene_panel.csv                    gene,family: the genes the models use, in order
    cohort.toml                       optional settings (:class:`CohortSettings`)

``slide_uri`` is a path relative to the cohort (without ``..``), an absolute path, or an
``s3://`` URI. Nothing else is required: digests and the inventory are derived on reading.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Literal, get_args

from pathgen_batch.config import from_dict, to_dict
from pathgen_batch.errors import ConfigError
from pathgen_batch.omics.families import DEFAULT_FAMILIES

_toml: ModuleType | None = None
if sys.version_info >= (3, 11):
    import tomllib as _toml

FORMAT_VERSION = 1
ExpressionUnit = Literal["log2", "z", "tpm", "fpkm", "counts"]
EXPRESSION_UNITS: tuple[str, ...] = get_args(ExpressionUnit)
LINEAR_UNITS = ("tpm", "fpkm", "counts")  # converted to log2(x + 1) on reading

CLINICAL = "clinical"
SLIDES = "slides"
EXPRESSION = "expression"
PANEL = "gene_panel.csv"
SETTINGS = "cohort.toml"
TABLE_SUFFIXES = (".csv", ".parquet")

PATIENT = "patient_id"
LABEL_COLUMNS = ("grade", "time", "event", "fold")  # optional clinical columns with a meaning
SLIDE_REQUIRED = ("slide_id", "slide_uri")
SLIDE_COLUMNS = (*SLIDE_REQUIRED, "mpp")

EVENT_TRUE = frozenset({"1", "1.0", "true", "yes", "t", "y"})
EVENT_FALSE = frozenset({"0", "0.0", "false", "no", "f", "n"})


@dataclass(frozen=True)
class CohortSettings:
    """``cohort.toml``: settings of a cohort folder; every key is optional.

    format_version: the cohort format this folder follows (1).
    expression_unit: ``log2`` and ``z`` are used as given; ``tpm``, ``fpkm`` and ``counts``
    become log2(x + 1). Per-gene scaling is fit later on each training fold.
    grade_classes: the grade classes from lowest to highest. Without it a numeric grade column
    is ordered by value and a Parquet ordered categorical by its categories; text grades in a
    CSV need it.
    folds, seed: the stratified cross-validation folds made when the clinical table has no
    ``fold`` column (and how many folds validation checks the cohort can fill).
    n_families: how many gene families to cluster (on each training fold's expression) when
    ``gene_panel.csv`` names none.
    """

    format_version: int = FORMAT_VERSION
    expression_unit: ExpressionUnit = "log2"
    grade_classes: tuple[str, ...] | None = None
    folds: int = 5
    seed: int = 0
    n_families: int = DEFAULT_FAMILIES

    def __post_init__(self) -> None:
        if self.format_version != FORMAT_VERSION:
            raise ConfigError(
                f"format_version: this version of pathgen_batch reads cohort format "
                f"{FORMAT_VERSION}, got {self.format_version}"
            )
        classes = self.grade_classes
        if classes is not None and (len(classes) < 2 or len(set(classes)) != len(classes)):
            raise ConfigError(
                f"grade_classes: expected at least two distinct classes, got {list(classes)}"
            )
        if self.folds < 2:
            raise ConfigError(f"folds: expected at least 2, got {self.folds}")
        if self.n_families < 1:
            raise ConfigError(f"n_families: expected at least 1, got {self.n_families}")

    def to_toml(self) -> str:
        """The settings as ``cohort.toml`` text (keys left at None are omitted)."""
        lines = [
            f"format_version = {self.format_version}",
            f'expression_unit = "{self.expression_unit}"',
        ]
        if self.grade_classes is not None:
            quoted = ", ".join(_toml_string(c) for c in self.grade_classes)
            lines.append(f"grade_classes = [{quoted}]")
        lines += [f"folds = {self.folds}", f"seed = {self.seed}"]
        if self.n_families != DEFAULT_FAMILIES:
            lines.append(f"n_families = {self.n_families}")
        return "\n".join(lines) + "\n"


def _toml_string(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


def with_overrides(
    settings: CohortSettings, overrides: Mapping[str, Any] | None, source: str = "options"
) -> CohortSettings:
    """``settings`` with the keys of ``overrides`` that are not None replaced (the command
    line's settings over ``cohort.toml``'s), checked as ``cohort.toml`` is."""
    given = {k: v for k, v in (overrides or {}).items() if v is not None}
    if not given:
        return settings
    return from_dict(CohortSettings, {**to_dict(settings), **given}, _where=source)


def parse_settings(text: str, source: str = SETTINGS) -> CohortSettings:
    """``cohort.toml`` text -> settings; ConfigError naming the file and the key at fault."""
    if _toml is None:
        raise ConfigError(f"{source}: reading TOML needs Python 3.11 or later (tomllib)")
    try:
        data = _toml.loads(text)
    except _toml.TOMLDecodeError as e:
        raise ConfigError(f"{source}: not valid TOML ({e})") from e
    return from_dict(CohortSettings, data, _where=source)
