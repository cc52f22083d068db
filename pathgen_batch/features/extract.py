"""Feature extraction: slide -> tiles -> encoder -> per-slide feature file.

``extract_slide`` encodes one slide with :func:`pathgen_batch.features.encode_slide.encode_slide`
(the loop the batch scorer uses too) and returns its :class:`SlideFeatures`.
``extract_slides`` / ``extract_cohort`` write one Parquet file per slide (see
:mod:`pathgen_batch.features.store`) and are resumable: a slide whose file already exists with
the same contract and tiling settings is skipped; one with a different contract is an error
(unless ``overwrite``), so a features folder never mixes encoders. That writing side (which
files are done, what a file records, the write itself) is :class:`FeatureTarget`, which the
batch feature job (:mod:`pathgen_batch.batch.features_job`) writes through as well.
"""

from __future__ import annotations

import itertools
import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from pathgen_batch import storage
from pathgen_batch.cohort import Cohort, load_cohort
from pathgen_batch.errors import ConfigError, DataError, SlideError
from pathgen_batch.features.contract import FeatureContract
from pathgen_batch.features.encode_slide import (
    EncodedSlide,
    encode_slide,
    exclusions_for,
    spec_for,
)
from pathgen_batch.features.encoder import Encoder
from pathgen_batch.features.store import (
    SlideFeatures,
    check_slide_id,
    feature_uri,
    read_contract,
    read_extraction,
    write_slide_features,
)
from pathgen_batch.slides import TileSpec
from pathgen_batch.slides.artefacts import Polygon

log = logging.getLogger(__name__)


def extract_slide(
    path: str | Path,
    encoder: Encoder,
    spec: TileSpec | None = None,
    *,
    mpp_override: float | None = None,
    batch_size: int = 64,
    slide_id: str | None = None,
    prefetch: int = 2,
    exclude: Sequence[Polygon] = (),
    workers: int = 1,
) -> SlideFeatures:
    """Tile ``path`` at the encoder's tile size and MPP and encode every kept tile.

    ``spec`` defaults to :func:`spec_for` (``min_tissue`` 0.5) and must agree with the
    encoder's contract. ``exclude``: polygons (level-0 px) not to be tiled. ``workers``:
    threads reading and encoding the slide's batches side by side (see
    :func:`~pathgen_batch.features.encode_slide.encode_slide`). ``slide_id``
    defaults to the file name without its last suffix. Raises the
    slide errors of :mod:`pathgen_batch.slides` (unreadable file, no MPP, no tissue).
    Returns features in tile-grid order: x, y (N,), feats (N, D), tissue (N,).
    """
    spec = spec or spec_for(encoder)
    p = Path(path)
    sid = check_slide_id(slide_id if slide_id is not None else p.stem)
    enc = encode_slide(
        p,
        encoder,
        spec,
        mpp_override=mpp_override,
        batch_size=batch_size,
        prefetch=prefetch,
        exclude=exclude,
        workers=workers,
    )
    return slide_features(sid, str(p), enc, spec, encoder.contract, mpp_override)


def slide_features(
    slide_id: str,
    source: str,
    enc: EncodedSlide,
    spec: TileSpec,
    contract: FeatureContract,
    mpp_override: float | None,
    settings: Mapping[str, Any] | None = None,
) -> SlideFeatures:
    """The feature file's content for a slide :func:`encode_slide` encoded (``source``: where
    the slide was read from; ``settings``: extraction settings recorded with it)."""
    grid = enc.grid
    info: dict[str, Any] = {
        "slide_id": slide_id,
        "source": source,
        "slide_mpp": enc.slide_mpp,
        "mpp_source": enc.mpp_source,
        "mpp_override": mpp_override,
        "min_tissue": spec.min_tissue,
        "level": grid.level,
        "read_px": grid.read_px,
        "n_candidates": grid.n_candidates,
        "n_tiles": len(grid),
        "seconds": round(enc.seconds, 4),
        "encode_seconds": round(enc.encode_s, 4),
        **(settings or {}),
    }
    return SlideFeatures(
        slide_id=slide_id,
        contract=contract,
        x=grid.x.astype(np.int64),
        y=grid.y.astype(np.int64),
        feats=enc.feats,
        tissue=grid.tissue.astype(np.float32),
        size_l0=grid.size_l0,
        extraction=info,
    )


@dataclass(frozen=True)
class SlideResult:
    """Outcome of one slide in a cohort extraction."""

    slide_id: str
    status: Literal["done", "skipped", "failed"]
    n_tiles: int = 0
    seconds: float = 0.0
    path: str | Path | None = None  # the feature file
    error: str | None = None

    @property
    def tiles_per_s(self) -> float:
        return self.n_tiles / self.seconds if self.seconds > 0 else 0.0


def extraction_settings(
    min_tissue: float, mpp_override: float | None, exclude_geojson: str | None = None
) -> dict[str, Any]:
    """The settings a feature file records and a resumed extraction must match."""
    out: dict[str, Any] = {"min_tissue": float(min_tissue), "mpp_override": mpp_override}
    if exclude_geojson is not None:  # only then: files extracted before stay valid
        out["exclude_geojson"] = exclude_geojson
    return out


@dataclass(frozen=True)
class FeatureTarget:
    """Where an extraction writes (a folder or an S3 prefix, one file per slide) and what a
    file found there must match to be kept: the one resumable writing side of extraction,
    used by :func:`extract_slides` and the batch feature job alike (small and picklable)."""

    output: str  # made absolute when local, so that every process finds it
    contract: FeatureContract
    min_tissue: float = 0.5
    exclude_geojson: str | None = None
    overwrite: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "output", storage.normalise(self.output))

    def uri(self, slide_id: str) -> str:
        return feature_uri(self.output, slide_id)

    def settings(self, mpp_override: float | None) -> dict[str, Any]:
        return extraction_settings(self.min_tissue, mpp_override, self.exclude_geojson)

    def is_done(self, slide_id: str, mpp_override: float | None) -> bool:
        """True when the slide's file exists for this contract and these settings; False when
        there is none or one that cannot be read (it is extracted again); DataError when it
        holds other features (unless ``overwrite``)."""
        return existing_features(
            self.uri(slide_id), self.contract, self.settings(mpp_override), self.overwrite
        )

    def split_done(
        self, slides: Sequence[tuple[str, float | None]]
    ) -> tuple[list[SlideResult], list[str]]:
        """(a "skipped" result per slide already written, the ids still to extract), every
        file checked before any slide is read, so a contract mismatch fails at once."""
        skipped, pending = [], []
        for sid, mpp in slides:
            if self.is_done(sid, mpp):
                skipped.append(SlideResult(sid, "skipped", path=self.uri(sid)))
            else:
                pending.append(sid)
        return skipped, pending

    def write(
        self,
        slide_id: str,
        source: str,
        enc: EncodedSlide,
        spec: TileSpec,
        mpp_override: float | None,
    ) -> SlideFeatures:
        """Write the feature file of a slide :func:`encode_slide` encoded (``source``: where it
        was read from), whole, with the settings a resumed run checks; return its content."""
        sf = slide_features(
            slide_id, source, enc, spec, self.contract, mpp_override, self.settings(mpp_override)
        )
        write_slide_features(sf, self.output)
        return sf


def existing_features(
    uri: str | Path, contract: FeatureContract, settings: Mapping[str, Any], overwrite: bool
) -> bool:
    """True when ``uri`` (a path or an S3 URI) already holds a complete feature file for the
    same contract and settings; False when there is none, or one that cannot be read (it is
    extracted again); DataError when it holds other features (unless ``overwrite``)."""
    where = str(uri)
    if overwrite or not storage.exists(where):
        return False
    try:
        stored = read_contract(where)
    except DataError as e:
        log.warning("%s; extracting it again", e)
        return False
    try:
        contract.check_matches(stored, what=f"requested encoder vs features already in {where}")
    except DataError as e:
        raise DataError(f"{e}; use overwrite to replace them") from e
    done = read_extraction(where)
    diffs = [f"{k} {done.get(k)!r} vs {v!r}" for k, v in settings.items() if done.get(k) != v]
    if diffs:
        raise DataError(
            f"{where}: features were extracted with other settings ("
            + "; ".join(diffs)
            + "); use overwrite to replace them"
        )
    return True


def extract_slides(
    slides: Mapping[str, str | Path],
    out_dir: str | Path,
    encoder: Encoder,
    *,
    min_tissue: float = 0.5,
    mpp_override: float | None = None,
    batch_size: int = 64,
    overwrite: bool = False,
    on_error: Literal["raise", "record"] = "raise",
    progress: Callable[[SlideResult], None] | None = None,
    prefetch: int = 2,
    exclude_geojson: str | None = None,
    workers: int = 1,
) -> list[SlideResult]:
    """Extract each ``slide_id -> path`` into ``<out_dir>/<slide_id>.parquet``.

    Files already present with the same contract and settings are skipped (resume). Every
    existing file is checked before any slide is read, so a contract mismatch fails at once.
    ``on_error="record"`` turns a slide's SlideError/DataError into a "failed" result instead
    of stopping. ``progress`` is called with each slide's result. ``exclude_geojson``: a
    folder (or S3 prefix) of ``<slide_id>.geojson`` annotations whose polygons are not tiled.
    """
    if on_error not in ("raise", "record"):
        raise ConfigError(f"on_error: expected 'raise' or 'record', got {on_error!r}")
    spec = spec_for(encoder, min_tissue)
    out_root = Path(out_dir)
    out_root.mkdir(parents=True, exist_ok=True)
    target = FeatureTarget(str(out_root), encoder.contract, min_tissue, exclude_geojson, overwrite)
    skipped, _ = target.split_done([(sid, mpp_override) for sid in slides])
    kept = {r.slide_id: r for r in skipped}
    results: list[SlideResult] = []
    for sid, src in slides.items():
        res = kept.get(sid)
        if res is None:
            t0 = time.perf_counter()
            try:
                enc = encode_slide(
                    Path(src),
                    encoder,
                    spec,
                    mpp_override=mpp_override,
                    batch_size=batch_size,
                    prefetch=prefetch,
                    exclude=exclusions_for(exclude_geojson, sid),
                    workers=workers,
                )
            except (SlideError, DataError) as e:
                if on_error == "raise":
                    raise
                log.warning("slide %s failed: %s", sid, e)
                res = SlideResult(
                    sid,
                    "failed",
                    seconds=time.perf_counter() - t0,
                    error=f"{type(e).__name__}: {e}",
                )
            else:
                sf = target.write(sid, str(Path(src)), enc, spec, mpp_override)
                res = SlideResult(sid, "done", len(sf), time.perf_counter() - t0, target.uri(sid))
        results.append(res)
        if progress is not None:
            progress(res)
    return results


def cohort_slides(
    cohort_dir: str | Path, slide_ids: Sequence[str] | None = None
) -> dict[str, Path]:
    """slide_id -> slide file of a cohort (all slides, or ``slide_ids`` in order).

    The cohort is validated first (tables only); a slide in object storage is refused here
    (the batch pipeline stages those).
    """
    return _slide_paths(load_cohort(cohort_dir), slide_ids)


def _slide_paths(cohort: Cohort, slide_ids: Sequence[str] | None) -> dict[str, Path]:
    known = list(dict.fromkeys(cohort.slide_ids))
    if slide_ids is None:
        ids = known
    else:
        unknown = sorted(set(slide_ids) - set(known))
        if unknown:
            raise DataError(
                f"{cohort.root}: slide id(s) not in the cohort: {unknown[:5]} "
                f"({len(unknown)} in all)"
            )
        ids = list(dict.fromkeys(slide_ids))
    return {s: cohort.slide_path(s) for s in ids}


def extract_cohort(
    cohort_dir: str | Path,
    out_dir: str | Path,
    encoder: Encoder,
    *,
    slide_ids: Sequence[str] | None = None,
    mpp_override: float | None = None,
    **kwargs: Any,
) -> list[SlideResult]:
    """:func:`extract_slides` over a cohort's slides (see :mod:`pathgen_batch.cohort`).

    A slide's ``mpp`` in the cohort's slides table is its MPP override; ``mpp_override``
    applies to the slides the table gives none.
    """
    cohort = load_cohort(cohort_dir)
    slides = _slide_paths(cohort, slide_ids)
    given = dict(zip(cohort.slides["slide_id"], cohort.slides["mpp"], strict=True))

    def mpp_of(sid: str) -> float | None:
        return mpp_override if math.isnan(given[sid]) else float(given[sid])

    results: list[SlideResult] = []
    for mpp, run in itertools.groupby(slides, key=mpp_of):
        part = {s: slides[s] for s in run}
        results += extract_slides(part, out_dir, encoder, mpp_override=mpp, **kwargs)
    return results
