"""The first stage of a scoring run: each slide's bag of tile features.

:class:`TileEncoder` stages the slide to local scratch and runs the one slide -> tiles ->
encoder loop of :mod:`pathgen_batch.features.encode_slide` on it (the loop feature extraction
uses, so a bag scored here equals the one ``extract`` writes) and, while the slide is staged,
writes its ``thumbnails`` row (thumbnail, level-0 extent, tissue mask) as a per-slide file of
the attempt, which the slide's commit then names; :class:`FeatureReader` instead
reads the bag from the ``features`` table of an earlier run. Both begin an attempt at a slide
that has no commit yet, and commit a failure when the slide cannot give a bag.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pyarrow as pa
import torch

from pathgen_batch.batch import commit as cm
from pathgen_batch.batch.model_refs import RegistryAccess, local_encoder_weights
from pathgen_batch.batch.stage_rows import (
    SlideRow,
    SlideStatus,
    StageTimes,
    TileBag,
    from_batch,
    to_batch,
)
from pathgen_batch.batch.stages import SLIDE_FAILURES, SlideStage, WorkerContext
from pathgen_batch.errors import PathgenError, SlideError
from pathgen_batch.features.encode_slide import (
    EncodedSlide,
    Phase,
    SlideProgress,
    encode_slide,
    exclusions_for,
    spec_for,
)
from pathgen_batch.features.encoder import Encoder, resolve_device
from pathgen_batch.features.encoders import encoder_for_contract
from pathgen_batch.slides import TileSpec, open_slide
from pathgen_batch.storage import RetryPolicy, SlideSource, StorageError, stage
from pathgen_batch.tables.io import read_row_group
from pathgen_batch.tables.rows import bag_from_features
from pathgen_batch.tables.schemas import THUMBNAIL_PX
from pathgen_batch.tables.thumbnails import thumbnail_table

log = logging.getLogger(__name__)

PREFETCH = 2  # tile batches read ahead of the encoder
T = TypeVar("T")


def encoded_row(row: SlideRow, enc: EncodedSlide, times: StageTimes, **more: Any) -> SlideRow:
    """``row`` once its slide is encoded: its tile count, tile size, MPP and the MPP's source,
    the stage times, and ``more`` fields."""
    return row.but(
        status=SlideStatus.ENCODED,
        n_tiles=len(enc.grid),
        size_l0=int(enc.grid.size_l0),
        slide_mpp=enc.slide_mpp,
        mpp_source=enc.mpp_source,
        times=times,
        **more,
    )


class SlideEncoding:
    """One slide staged to local scratch and run through the one slide -> tiles -> encoder
    loop (:func:`~pathgen_batch.features.encode_slide.encode_slide`): the path from a slide
    to its bag that scoring (:class:`TileEncoder`) and feature extraction
    (:class:`pathgen_batch.batch.features_job.FeatureWriter`) share. ``phase`` says how far
    it got, for a failure's stage."""

    def __init__(
        self, scratch_dir: str, retry: RetryPolicy, batch_size: int, workers: int = 1
    ) -> None:
        self.scratch_dir = scratch_dir
        self.retry = retry
        self.batch_size = batch_size
        self.workers = workers  # threads reading and encoding batches side by side
        self.phase: str = "download"
        self.download_s = 0.0

    def _now_in(self, p: Phase) -> None:
        self.phase = p

    def encode(
        self,
        src: SlideSource,
        real: SlideSource,
        encoder: Encoder,
        spec: TileSpec,
        exclude_geojson: str | None,
        while_staged: Callable[[Path, EncodedSlide], T],
    ) -> tuple[EncodedSlide, T]:
        """Encode ``src`` (read from ``real``, its location); ``while_staged(path, encoded)``
        runs while the slide is still staged. Raises what staging, reading or encoding
        raise."""

        def report(p: SlideProgress) -> None:  # a worker's stdout reaches Ray's logs
            print(f"slide {src.slide_id}: {p.line()}", flush=True)

        exclude = exclusions_for(exclude_geojson, src.slide_id)
        with stage(real, self.scratch_dir, self.retry) as staged:
            self.download_s = staged.seconds
            enc = encode_slide(
                staged.path,
                encoder,
                spec,
                mpp_override=src.mpp,
                batch_size=self.batch_size,
                prefetch=PREFETCH,
                on_phase=self._now_in,
                exclude=exclude,
                on_progress=report,
                workers=self.workers,
            )
            self.phase = "tiles"
            return enc, while_staged(Path(staged.path), enc)

    def failed_at(self, e: BaseException) -> str:
        """The stage a failure ``e`` is recorded at."""
        if isinstance(e, StorageError):
            return "download"
        if isinstance(e, SlideError) and self.phase == "encode":
            return "tiles"
        return self.phase


def _timed(fn: Callable[[], T]) -> tuple[T, float]:
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


class TileEncoder(SlideStage):
    """Stage + tile + encode, one slide at a time (see the module docstring)."""

    def __init__(self, ctx: WorkerContext) -> None:
        super().__init__(ctx)
        access = RegistryAccess(ctx.workspace, ctx.tracking_uri)
        weights = local_encoder_weights(ctx.encoder, ctx.contract, access)
        self.encoder = encoder_for_contract(
            ctx.contract, weights=weights, device=resolve_device(ctx.device)
        )
        self.spec = spec_for(self.encoder, ctx.min_tissue)
        self.batch_size = ctx.encoder_batch_size or self.encoder.auto_batch_size()
        print(f"encoder {self.encoder!r}: {self.batch_size} tiles per batch", flush=True)
        # The cores the stage reserved read and encode batches side by side, one torch thread
        # each (on CUDA the reads run side by side and the encoder calls in turn).
        self.workers = max(1, ctx.threads or 1)
        if self.workers > 1 and self.encoder.device.type == "cpu":
            torch.set_num_threads(1)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return to_batch([self.encode(r) for r in from_batch(batch)])

    def encode(self, row: SlideRow) -> SlideRow:
        started = self.begin(row)
        if started is None:
            return row.but(status=SlideStatus.SKIPPED)
        src = started.source
        times = StageTimes()
        run = SlideEncoding(self.ctx.scratch_dir, self.retry, self.batch_size, self.workers)
        try:
            real = src if self.ctx.sources is None else self.ctx.sources.locate(src)
            log.info("slide %s: staging %s", src.slide_id, real.uri)  # redacted if pseudonymised
            enc, (thumbnail, thumb_s) = run.encode(
                src,
                real,
                self.encoder,
                self.spec,
                self.ctx.exclude_geojson,
                while_staged=lambda path, e: _timed(lambda: self._thumbnail(started, path, e)),
            )
            times.download = run.download_s
        except SLIDE_FAILURES as e:
            times.download = run.download_s
            return self.fail(started, run.failed_at(e), e, times)
        times.tiles, times.encode = enc.tiles_s + thumb_s, enc.encode_s
        t_write = time.perf_counter()
        try:
            cm.write_slide_table(
                self.layout,
                src.slide_id,
                started.attempt_id or "",
                "thumbnails",
                thumbnail,
                self.retry,
            )
        except StorageError as e:
            return self.fail(started, "write", e, times)
        times.write = time.perf_counter() - t_write
        grid = enc.grid
        return encoded_row(
            started,
            enc,
            times,
            bag=TileBag(
                x=grid.x.astype(np.int64),
                y=grid.y.astype(np.int64),
                tissue=grid.tissue.astype(np.float32),
                feats=enc.feats,
            ),
            has_thumbnail=True,
        )

    def _thumbnail(self, row: SlideRow, path: str | Path, enc: EncodedSlide) -> pa.Table:
        """The slide's ``thumbnails`` row: its picture, level-0 extent, tissue mask, the
        regions the tissue step excluded (pen ink, annotations) and its tiles' quality flags."""
        with open_slide(path, mpp_override=row.source.mpp) as slide:
            image = slide.thumbnail(THUMBNAIL_PX)  # (H, W, 3) uint8
            dims = slide.dimensions
        m = enc.mask
        excluded = m.excluded if m.excluded is not None and m.excluded.any() else None
        return thumbnail_table(
            row.source.slide_id,
            image,
            dims,
            enc.slide_mpp,
            m.mask,
            excluded,
            self.ctx.lineage,
            quality=enc.quality,
        )


class MissingFeaturesError(PathgenError):
    """A slide has no stored features in the run it is re-scored from."""


class FeatureReader(SlideStage):
    """The bag of each slide from a stored ``features`` table (``reuse_features``).

    Rows carry ``feature_uri`` and ``feature_group`` (None when the slide has none).
    """

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return to_batch([self.read(r) for r in from_batch(batch)])

    def read(self, row: SlideRow) -> SlideRow:
        started = self.begin(row)
        if started is None:
            return row.but(status=SlideStatus.SKIPPED)
        t0 = time.perf_counter()
        try:
            if row.feature_uri is None or row.feature_group is None:
                raise MissingFeaturesError(
                    f"slide {row.source.slide_id}: no stored features in the features run"
                )
            x, y, feats, size_l0 = bag_from_features(
                read_row_group(row.feature_uri, row.feature_group)
            )
        except SLIDE_FAILURES as e:
            return self.fail(started, "features", e, StageTimes())
        return started.but(
            status=SlideStatus.ENCODED,
            n_tiles=int(x.size),
            size_l0=size_l0,
            bag=TileBag(x=x, y=y, tissue=np.ones(x.size, dtype=np.float32), feats=feats),
            times=StageTimes(download=time.perf_counter() - t0),
        )
