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
from pathlib import Path

import numpy as np
import pyarrow as pa

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
from pathgen_batch.features.encoder import resolve_device
from pathgen_batch.features.encoders import encoder_for_contract
from pathgen_batch.slides import open_slide
from pathgen_batch.storage import StorageError, stage
from pathgen_batch.tables.io import read_row_group
from pathgen_batch.tables.rows import bag_from_features
from pathgen_batch.tables.schemas import THUMBNAIL_PX
from pathgen_batch.tables.thumbnails import thumbnail_table

log = logging.getLogger(__name__)

PREFETCH = 2  # tile batches read ahead of the encoder


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

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return to_batch([self.encode(r) for r in from_batch(batch)])

    def encode(self, row: SlideRow) -> SlideRow:
        started = self.begin(row)
        if started is None:
            return row.but(status=SlideStatus.SKIPPED)
        src = started.source
        times = StageTimes()
        phase: str = "download"

        def now_in(p: Phase) -> None:
            nonlocal phase
            phase = p

        def report(p: SlideProgress) -> None:  # a worker's stdout reaches Ray's logs
            print(f"slide {src.slide_id}: {p.line()}", flush=True)

        try:
            exclude = exclusions_for(self.ctx.exclude_geojson, src.slide_id)
            real = src if self.ctx.sources is None else self.ctx.sources.locate(src)
            log.info("slide %s: staging %s", src.slide_id, real.uri)  # redacted if pseudonymised
            with stage(real, self.ctx.scratch_dir, self.retry) as staged:
                times.download = staged.seconds
                enc = encode_slide(
                    staged.path,
                    self.encoder,
                    self.spec,
                    mpp_override=src.mpp,
                    batch_size=self.ctx.encoder_batch_size,
                    prefetch=PREFETCH,
                    on_phase=now_in,
                    exclude=exclude,
                    on_progress=report,
                )
                phase = "tiles"
                t_thumb = time.perf_counter()
                thumbnail = self._thumbnail(started, staged.path, enc)
                thumb_s = time.perf_counter() - t_thumb
        except SLIDE_FAILURES as e:
            if isinstance(e, StorageError):
                phase = "download"
            elif isinstance(e, SlideError) and phase == "encode":
                phase = "tiles"
            return self.fail(started, phase, e, times)
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
        return started.but(
            status=SlideStatus.ENCODED,
            n_tiles=len(grid),
            size_l0=int(grid.size_l0),
            slide_mpp=enc.slide_mpp,
            mpp_source=enc.mpp_source,
            bag=TileBag(
                x=grid.x.astype(np.int64),
                y=grid.y.astype(np.int64),
                tissue=grid.tissue.astype(np.float32),
                feats=enc.feats,
            ),
            has_thumbnail=True,
            times=times,
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
