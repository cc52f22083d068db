"""The rows that flow between the stages of a scoring run, their timing record, and the one
codec between them and Ray Data batches.

A :class:`SlideRow` is one slide on its way through the stages: its source, what happened to it
(:class:`SlideStatus`), what the encoder learnt (tiles, MPP), its bag of tile features while it
has one and the seconds each stage took (:class:`StageTimes`). Missing values are ``None``.

Ray Data's ``map_batches`` moves ``dict[str, np.ndarray]``; :func:`to_batch` and
:func:`from_batch` (and :func:`from_ray_row` for ``iter_rows``) are the only code that knows
that form: the scalar fields travel as one JSON column (``null`` stays ``None`` through Arrow),
the bag as four array columns (empty arrays for a row without one).
"""

from __future__ import annotations

import enum
import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

import numpy as np

from pathgen_batch.errors import DataError
from pathgen_batch.storage import SlideSource


class SlideStatus(enum.Enum):
    """Where a slide stands after a stage."""

    PENDING = "pending"  # an input row: nothing done yet
    ENCODED = "encoded"  # has its bag; the scorer is next
    SCORED = "scored"  # this attempt committed its predictions
    FAILED = "failed"  # this attempt committed its failure
    SKIPPED = "skipped"  # another attempt had committed it already


@dataclass
class StageTimes:
    """Seconds a slide spent in each timed stage (or, summed, a run)."""

    download: float = 0.0
    tiles: float = 0.0
    encode: float = 0.0
    score: float = 0.0
    write: float = 0.0

    def __add__(self, other: StageTimes) -> StageTimes:
        return StageTimes(**{n: getattr(self, n) + getattr(other, n) for n in TIMED_STAGES})

    def to_dict(self, ndigits: int | None = None) -> dict[str, float]:
        """``{"download_s": ..., ...}``: the keys of commit stats and the runs row's timings."""
        return {
            f"{n}_s": (v if ndigits is None else round(v, ndigits))
            for n, v in self.by_stage().items()
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> StageTimes:
        """From :meth:`to_dict`'s form; other keys are ignored, missing stages are 0."""
        return cls(**{n: float(data.get(f"{n}_s", 0.0)) for n in TIMED_STAGES})

    @staticmethod
    def keys() -> set[str]:
        """The keys of :meth:`to_dict`."""
        return {f"{n}_s" for n in TIMED_STAGES}

    def by_stage(self) -> dict[str, float]:
        """``{"download": ..., ...}`` in stage order."""
        return {n: float(getattr(self, n)) for n in TIMED_STAGES}


TIMED_STAGES: tuple[str, ...] = tuple(f.name for f in fields(StageTimes))


@dataclass(frozen=True, eq=False)  # holds arrays: compared by identity
class TileBag:
    """The kept tiles of one slide and their features, in tile-grid order."""

    x: np.ndarray  # (N,) int64 level-0 px
    y: np.ndarray  # (N,) int64 level-0 px
    tissue: np.ndarray  # (N,) float32 tissue fraction
    feats: np.ndarray  # (N, D) float32

    def __post_init__(self) -> None:
        n = self.feats.shape[0] if self.feats.ndim == 2 else -1
        if n < 0 or any(a.shape != (n,) for a in (self.x, self.y, self.tissue)):
            raise DataError(
                f"tile bag: expected x, y, tissue (N,) and feats (N, D), got {self.x.shape}, "
                f"{self.y.shape}, {self.tissue.shape} and {self.feats.shape}"
            )


@dataclass(frozen=True)
class SlideRow:
    """One slide between two stages (see the module docstring)."""

    source: SlideSource
    status: SlideStatus = SlideStatus.PENDING
    feature_uri: str | None = None  # reuse_features: the part file holding the stored bag
    feature_group: int | None = None  # and its row group there
    attempt: int = 0
    attempt_id: str | None = None  # the attempt whose per-slide files a commit would name
    stage: str | None = None  # where the slide failed
    error_type: str | None = None
    message: str | None = None  # feature extraction: a failure's message, for its report line
    n_tiles: int = 0
    size_l0: int = 0  # tile side in level-0 px
    slide_mpp: float | None = None
    mpp_source: str | None = None
    has_thumbnail: bool = False  # the encoder wrote this attempt's thumbnails row
    bag: TileBag | None = None  # until scored: nothing but a status row flows to the driver
    times: StageTimes = field(default_factory=StageTimes)

    def but(self, **changes: Any) -> SlideRow:
        """A copy with ``changes``."""
        return replace(self, **changes)


_ROW = "row"  # the JSON column of the scalar fields
_BAG = ("x", "y", "tissue", "feats")
_BAG_DTYPES = {"x": np.int64, "y": np.int64, "tissue": np.float32, "feats": np.float32}


def _scalars(row: SlideRow) -> str:
    return json.dumps(
        {
            "source": asdict(row.source),
            "status": row.status.value,
            "feature_uri": row.feature_uri,
            "feature_group": row.feature_group,
            "attempt": row.attempt,
            "attempt_id": row.attempt_id,
            "stage": row.stage,
            "error_type": row.error_type,
            "message": row.message,
            "n_tiles": row.n_tiles,
            "size_l0": row.size_l0,
            "slide_mpp": row.slide_mpp,
            "mpp_source": row.mpp_source,
            "has_thumbnail": row.has_thumbnail,
            "has_bag": row.bag is not None,
            "times": row.times.to_dict(),
        }
    )


def _objects(values: Sequence[Any]) -> np.ndarray:
    out = np.empty(len(values), dtype=object)
    for i, v in enumerate(values):
        out[i] = v
    return out


def to_batch(rows: Sequence[SlideRow]) -> dict[str, np.ndarray]:
    """Rows -> the ``dict[str, np.ndarray]`` batch Ray Data moves. Every batch has the same
    columns (blocks are concatenated downstream): a row without a bag has empty arrays."""
    out = {_ROW: _objects([_scalars(r) for r in rows])}
    for name in _BAG:
        empty = np.zeros((0, 0) if name == "feats" else 0, dtype=_BAG_DTYPES[name])
        out[name] = _objects([empty if r.bag is None else getattr(r.bag, name) for r in rows])
    return out


def from_ray_row(row: Mapping[str, Any]) -> SlideRow:
    """One row of a batch (or of ``Dataset.iter_rows``) -> a :class:`SlideRow`."""
    d = json.loads(str(row[_ROW]))
    bag = None
    if d["has_bag"]:
        bag = TileBag(**{n: np.asarray(row[n], dtype=_BAG_DTYPES[n]) for n in _BAG})
    return SlideRow(
        source=SlideSource(**d["source"]),
        status=SlideStatus(d["status"]),
        feature_uri=d["feature_uri"],
        feature_group=d["feature_group"],
        attempt=int(d["attempt"]),
        attempt_id=d["attempt_id"],
        stage=d["stage"],
        error_type=d["error_type"],
        message=d.get("message"),
        n_tiles=int(d["n_tiles"]),
        size_l0=int(d["size_l0"]),
        slide_mpp=d["slide_mpp"],
        mpp_source=d["mpp_source"],
        has_thumbnail=bool(d["has_thumbnail"]),
        bag=bag,
        times=StageTimes.from_dict(d["times"]),
    )


def from_batch(batch: Mapping[str, np.ndarray]) -> list[SlideRow]:
    """A Ray Data batch -> its rows, in order."""
    n = len(batch[_ROW])
    return [from_ray_row({k: v[i] for k, v in batch.items()}) for i in range(n)]


def input_rows(
    sources: Sequence[SlideSource],
    feature_index: Mapping[str, tuple[str, int]] | None = None,
) -> list[dict[str, Any]]:
    """The pipeline's input items (one per slide, locations only) for ``from_items``; with
    ``feature_index`` (slide id -> (part file, row group)), where each stored bag is."""
    rows = []
    for s in sources:
        uri, group = (feature_index or {}).get(s.slide_id, (None, None))
        rows.append({_ROW: _scalars(SlideRow(s, feature_uri=uri, feature_group=group))})
    return rows
