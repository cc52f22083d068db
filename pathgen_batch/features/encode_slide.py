"""The one slide -> tiles -> encoder loop, shared by feature extraction and batch scoring.

:func:`encode_slide` opens a local slide file, computes its tissue mask and the tile grid at the
encoder's tile size and MPP, and encodes every kept tile ``batch_size`` at a time. Tile reading
runs in a background thread ``prefetch`` batches ahead (:func:`prefetch_batches`), so that
decoding the next batch overlaps with encoding this one (OpenSlide and torch both release the
GIL). :func:`pathgen_batch.features.extract.extract_slide` turns the result into a feature file;
the batch scorer's encoder stage turns it into the bag it scores. A long slide reports its
progress (tiles done of the total, tiles/s) every ``progress_every_s`` seconds
(:class:`SlideProgress`; logged at INFO unless the caller takes it).

With ``workers`` > 1 one slide uses several cores: each of ``workers`` threads reads a batch
(decoding its JPEG tiles) and encodes it, in turn, so decoding never waits behind the encoder
nor starves it; at most ``2 * workers`` batches are in flight and the features are gathered in
grid order, so the result is the one of a single worker. On CUDA the encoder calls are
serialised (one device, one pinned buffer) while the reads stay parallel. Each worker's torch
calls use torch's intra-op threads: give ``workers`` = cores with ``torch.set_num_threads(1)``.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Generator, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import AbstractContextManager, closing, nullcontext
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal, TypeVar

import numpy as np

from pathgen_batch import storage
from pathgen_batch.errors import ConfigError
from pathgen_batch.features.encoder import Encoder
from pathgen_batch.slides import (
    Slide,
    TileGrid,
    TileSpec,
    TissueMask,
    open_slide,
    read_tiles,
    tile_grid,
    tissue_mask,
)
from pathgen_batch.slides.artefacts import Polygon, QualityConfig, TileQuality, read_exclusions

log = logging.getLogger(__name__)
# one encoded batch: features (B, D), seconds in the encoder, the tiles' quality flags
Encoded = tuple[np.ndarray, float, TileQuality | None]
T = TypeVar("T")
Phase = Literal["open", "tiles", "encode"]


@dataclass(frozen=True)
class SlideProgress:
    """How far :func:`encode_slide` is through one slide."""

    slide: str  # the slide file's name
    done: int  # tiles encoded
    total: int  # kept tiles of the slide
    seconds: float  # since the slide was opened

    @property
    def tiles_per_s(self) -> float:
        return self.done / self.seconds if self.seconds > 0 else 0.0

    def line(self) -> str:
        share = self.done / max(self.total, 1)
        return (
            f"{self.slide}: {self.done:,}/{self.total:,} tiles ({share:.0%}), "
            f"{self.tiles_per_s:.0f} tiles/s, {self.seconds:.0f} s"
        )


def exclusions_for(folder: str | None, slide_id: str) -> list[Polygon]:
    """The polygons of ``<folder>/<slide_id>.geojson`` (a local folder or S3 prefix of a user's
    annotations, level-0 px); none when ``folder`` is None or the slide has no file there."""
    if folder is None:
        return []
    uri = storage.join(folder, f"{storage.check_slide_id(slide_id)}.geojson")
    if not storage.exists(uri):
        return []
    return read_exclusions(storage.read_bytes(uri), uri)


def spec_for(encoder: Encoder, min_tissue: float = 0.5) -> TileSpec:
    """The tile spec matching ``encoder``'s contract."""
    return TileSpec(tile_px=encoder.tile_px, mpp=encoder.mpp, min_tissue=min_tissue)


def check_spec(spec: TileSpec, encoder: Encoder) -> None:
    """ConfigError unless ``spec`` has the encoder's tile size and MPP."""
    if spec.tile_px != encoder.tile_px or abs(spec.mpp - encoder.mpp) > 1e-9 * encoder.mpp:
        raise ConfigError(
            f"tile spec ({spec.tile_px} px at {spec.mpp} um/px) does not match the encoder's "
            f"contract ({encoder.tile_px} px at {encoder.mpp} um/px)"
        )


_DONE = object()


def prefetch_batches(it: Iterator[T], depth: int) -> Generator[T, None, None]:
    """Run ``it`` in a thread, ``depth`` items ahead; errors re-raised in the consumer.

    The thread is always joined before this generator finishes, also when the consumer stops
    early or fails, so the resource ``it`` reads from can be closed right after.
    """
    if depth < 1:
        yield from it
        return
    q: queue.Queue[Any] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item: Any) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def work() -> None:
        try:
            for item in it:
                if not put(item):
                    return
            put(_DONE)
        except BaseException as e:  # re-raised in the consumer thread
            put(e)

    th = threading.Thread(target=work, name="tile-prefetch", daemon=True)
    th.start()
    try:
        while True:
            item = q.get()
            if item is _DONE:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        th.join()


@dataclass(frozen=True, eq=False)  # holds arrays: compared by identity
class EncodedSlide:
    """The kept tiles of one slide and their features, in tile-grid order."""

    grid: TileGrid  # x, y, tissue (N,), size_l0, level, read_px, n_candidates
    mask: TissueMask  # the tissue mask the grid was cut from
    feats: np.ndarray  # (N, D) float32
    slide_mpp: float  # level-0 um/px the tiling used
    mpp_source: str  # where that MPP came from (see pathgen_batch.slides.mpp)
    seconds: float  # open to close, encoding included
    encode_s: float  # of which in the encoder (with several workers: their sum / workers)
    quality: TileQuality | None = None  # per kept tile: blank and out-of-focus flags, focus

    @property
    def tiles_s(self) -> float:
        """Seconds spent opening, masking and reading tiles (everything but the encoder)."""
        return self.seconds - self.encode_s


def encode_slide(
    path: str | Path,
    encoder: Encoder,
    spec: TileSpec,
    *,
    mpp_override: float | None = None,
    batch_size: int = 64,
    prefetch: int = 2,
    on_phase: Callable[[Phase], None] | None = None,
    exclude: Sequence[Polygon] = (),
    on_progress: Callable[[SlideProgress], None] | None = None,
    progress_every_s: float = 10.0,
    workers: int = 1,
) -> EncodedSlide:
    """Tile the slide at ``path`` by ``spec`` and encode every kept tile with ``encoder``.

    ``spec`` must agree with the encoder's contract (ConfigError otherwise). Raises the slide
    errors of :mod:`pathgen_batch.slides` (unreadable file, no MPP, no tissue). ``on_phase`` is
    told what the loop does next (``open``, then ``tiles`` and ``encode`` in turn), so that a
    caller can say where a slide failed. ``exclude``: polygons (level-0 px) not to be tiled
    (see :func:`pathgen_batch.slides.tissue_mask`). Every ``progress_every_s`` seconds of a
    slide, ``on_progress`` (default: an INFO log line) is told the tiles done so far.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size: expected a positive integer, got {batch_size!r}")
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ConfigError(f"workers: expected a positive integer, got {workers!r}")
    check_spec(spec, encoder)
    phase = on_phase or (lambda _: None)
    t0 = time.perf_counter()
    encode_s = 0.0
    phase("open")
    with open_slide(path, mpp_override=mpp_override) as slide:
        phase("tiles")
        mask = tissue_mask(slide, exclude=exclude)
        grid = tile_grid(slide, spec, mask)
        report = on_progress or (lambda p: log.info("%s", p.line()))
        done, next_report = 0, t0 + progress_every_s
        # filled batch by batch: no small per-batch arrays kept alive between the tile reads'
        # large buffers, which would pin freed heap (the actor's resident memory then grows
        # with the slide's tiles: 570 -> 1,330 MiB over a 100,000 px slide)
        feats = np.empty((len(grid), encoder.dim), np.float32)  # (N, D)
        quality: dict[str, np.ndarray] = {}  # TileQuality's fields, (N,) each
        n_quality = 0
        if workers > 1:
            batches: Generator[Encoded, None, None] = _parallel(
                slide, grid, encoder, batch_size, workers, phase
            )
        else:
            batches = _serial(slide, grid, encoder, batch_size, prefetch, phase)
        with closing(batches):  # joins the reader threads before the slide closes
            for f, seconds, q in batches:
                feats[done : done + len(f)] = f  # (B, D)
                encode_s += seconds
                if q is not None:
                    for name in TileQuality.FIELDS:
                        a = getattr(q, name)  # (B,)
                        if name not in quality:
                            quality[name] = np.empty(len(grid), a.dtype)
                        quality[name][done : done + len(a)] = a
                    n_quality += len(f)
                done += len(f)
                now = time.perf_counter()
                if now >= next_report and done < len(grid):
                    report(SlideProgress(Path(path).name, done, len(grid), now - t0))
                    next_report = now + progress_every_s
        mpp, mpp_source = float(slide.mpp), str(slide.mpp_source)
    return EncodedSlide(
        grid=grid,
        mask=mask,
        feats=feats,
        slide_mpp=mpp,
        mpp_source=mpp_source,
        seconds=time.perf_counter() - t0,
        encode_s=encode_s / workers,
        quality=TileQuality(*(quality[n] for n in TileQuality.FIELDS))
        if quality and n_quality == done
        else None,
    )


def _serial(
    slide: Slide,
    grid: TileGrid,
    encoder: Encoder,
    batch_size: int,
    prefetch: int,
    phase: Callable[[Phase], None],
) -> Generator[Encoded, None, None]:
    """(features, encoder seconds, tile quality) per batch: one reader thread ahead of the
    caller's encoder."""
    reader = read_tiles(slide, grid, batch_size=batch_size, quality=QualityConfig())
    tiles = prefetch_batches(reader, prefetch)
    with closing(tiles):
        for batch in tiles:
            phase("encode")
            te = time.perf_counter()
            f = encoder.encode(batch.images)  # (B, D)
            seconds = time.perf_counter() - te
            phase("tiles")
            yield f, seconds, batch.quality


class _PhaseError(Exception):
    """A worker's error with the phase it happened in."""

    def __init__(self, phase: Phase, error: BaseException) -> None:
        super().__init__(str(error))
        self.phase, self.error = phase, error


def _parallel(
    slide: Slide,
    grid: TileGrid,
    encoder: Encoder,
    batch_size: int,
    workers: int,
    phase: Callable[[Phase], None],
) -> Generator[Encoded, None, None]:
    """(features, encoder seconds, tile quality) per batch in grid order, ``workers`` threads
    reading and encoding batches side by side (see the module docstring)."""
    lock: AbstractContextManager[object] = (
        threading.Lock() if encoder.device.type == "cuda" else nullcontext()
    )

    def job(b0: int) -> Encoded:
        b1 = min(len(grid), b0 + batch_size)
        sub = replace(grid, x=grid.x[b0:b1], y=grid.y[b0:b1], tissue=grid.tissue[b0:b1])
        try:
            batch = next(read_tiles(slide, sub, batch_size=batch_size, quality=QualityConfig()))
        except Exception as e:
            raise _PhaseError("tiles", e) from e
        try:
            with lock:
                te = time.perf_counter()
                f = encoder.encode(batch.images)  # (B, D)
                return f, time.perf_counter() - te, batch.quality
        except Exception as e:
            raise _PhaseError("encode", e) from e

    starts = iter(range(0, len(grid), batch_size))
    pending: deque[Future[Encoded]] = deque()
    with ThreadPoolExecutor(workers, thread_name_prefix="tile-encode") as pool:
        try:
            for b0 in starts:
                pending.append(pool.submit(job, b0))
                if len(pending) >= 2 * workers:
                    break
            while pending:
                try:
                    out = pending.popleft().result()
                except _PhaseError as e:
                    phase(e.phase)
                    raise e.error from None
                nxt = next(starts, None)
                if nxt is not None:
                    pending.append(pool.submit(job, nxt))
                yield out
        finally:
            for fut in pending:
                fut.cancel()
