"""The per-slide stages of a scoring run, as plain classes (Ray is not imported here).

Batches are ``dict[str, np.ndarray]`` with one row per slide, the form Ray Data's
``map_batches`` passes; :mod:`pathgen_batch.batch.pipeline` runs these classes as Ray actor
pools and :func:`run_serial` runs the very same stages in one process.

1. :class:`TileEncoder` (actor; GPU when there is one): for each slide, stage it to local
   scratch (S3 objects downloaded, size checked, deleted right after), open it, resolve its
   MPP, compute the tissue mask and tile grid, read tiles in a background thread and encode
   them ``batch_size`` at a time on the encoder's device. Out: the bag (x, y, tissue (N,),
   feats (N, D)) - never slide bytes or tile pixels. A slide whose tiles and encoder live in
   one actor needs no all-to-all regrouping downstream and never moves its pixels between
   processes; the staged file stays node-local.
2. :class:`FeatureReader` (instead of 1. with ``reuse_features``): the bag from a ``features``
   table written by an earlier run; no slide is read.
3. :class:`SlideScorer` (actor; GPU when there is one): generator samples -> mean and spread,
   fusion model -> grade probabilities, hazards, risk, attention, conformal sets and
   intervals; writes the slide's per-slide tables and its commit (see
   :mod:`pathgen_batch.batch.commit`). Models are loaded once, in ``__init__``.

A slide that fails (download after retries, unreadable, truncated, not a slide, no tissue, no
MPP, scoring error) gets a failure commit with its stage, error type and message, and the
stage goes on with the next slide.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from contextlib import closing
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from pathgen_batch.batch import commit as cm
from pathgen_batch.batch.model_refs import ModelRef, RegistryAccess, load_models
from pathgen_batch.errors import PathgenError, SlideError
from pathgen_batch.features.contract import FeatureContract
from pathgen_batch.storage import RetryPolicy, SlideSource, StorageError, stage
from pathgen_batch.tables.io import read_row_group
from pathgen_batch.tables.rows import (
    Lineage,
    attention_table,
    bag_from_features,
    failure_record,
    features_table,
    prediction_record,
    transcriptome_table,
)

log = logging.getLogger(__name__)

# errors a slide can cause; anything else is a bug and fails the Ray task (retried, then the
# slide is recorded by the driver's last pass)
SLIDE_FAILURES: tuple[type[BaseException], ...] = (PathgenError, OSError, ValueError, RuntimeError)
ENCODED, FAILED, SKIPPED, SCORED = "encoded", "failed", "skipped", "scored"


@dataclass(frozen=True)
class WorkerContext:
    """Everything a stage needs, small and picklable (built once by the driver)."""

    output: str
    run_id: str
    lineage: dict[str, str]
    contract: dict[str, Any]
    generator: dict[str, Any]
    fusion: dict[str, Any]
    workspace: str
    tracking_uri: str | None
    scratch_dir: str
    retry: dict[str, Any]
    min_tissue: float
    encoder_batch_size: int
    n_samples: int | None
    seed: int
    write_features: bool
    device: str = "auto"

    @property
    def layout(self) -> cm.RunLayout:
        return cm.RunLayout(self.output, self.run_id)

    @property
    def retry_policy(self) -> RetryPolicy:
        return RetryPolicy(**self.retry)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _device(requested: str) -> str:
    import torch

    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return requested


def jobs_batch(sources: Sequence[SlideSource]) -> list[dict[str, Any]]:
    """Input rows of the pipeline: one per slide, locations and metadata only."""
    return [
        {
            "slide_id": s.slide_id,
            "uri": s.uri,
            "size": -1 if s.size is None else int(s.size),
            "patient_id": s.patient_id or "",
            "mpp": float("nan") if s.mpp is None else float(s.mpp),
        }
        for s in sources
    ]


def _source(batch: dict[str, np.ndarray], i: int) -> SlideSource:
    size = int(batch["size"][i])
    mpp = float(batch["mpp"][i])
    pid = str(batch["patient_id"][i])
    return SlideSource(
        uri=str(batch["uri"][i]),
        slide_id=str(batch["slide_id"][i]),
        size=None if size < 0 else size,
        patient_id=pid or None,
        mpp=None if mpp != mpp else mpp,
    )


def _objects(values: Sequence[Any]) -> np.ndarray:
    out = np.empty(len(values), dtype=object)
    for i, v in enumerate(values):
        out[i] = v
    return out


_EMPTY_I = np.zeros(0, dtype=np.int64)
_EMPTY_F = np.zeros(0, dtype=np.float32)


def _row(src: SlideSource, status: str, **kw: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "slide_id": src.slide_id,
        "uri": src.uri,
        "patient_id": src.patient_id or "",
        "status": status,
        "attempt": 0,
        "attempt_id": "",
        "error_type": "",
        "stage": "",
        "n_tiles": 0,
        "size_l0": 0,
        "slide_mpp": float("nan"),
        "mpp_source": "",
        "x": _EMPTY_I,
        "y": _EMPTY_I,
        "tissue": _EMPTY_F,
        "feats": np.zeros((0, 0), dtype=np.float32),
        "download_s": 0.0,
        "tiles_s": 0.0,
        "encode_s": 0.0,
        "score_s": 0.0,
        "write_s": 0.0,
    }
    row.update(kw)
    return row


def _to_batch(rows: list[dict[str, Any]]) -> dict[str, np.ndarray]:
    if not rows:
        return {}
    keys = rows[0].keys()
    out: dict[str, np.ndarray] = {}
    for k in keys:
        vals = [r[k] for r in rows]
        out[k] = _objects(vals) if isinstance(vals[0], np.ndarray) else np.asarray(vals)
    return out


def _from_batch(batch: dict[str, np.ndarray]) -> list[dict[str, Any]]:
    n = len(batch["slide_id"])
    return [{k: v[i] for k, v in batch.items()} for i in range(n)]


class _Stage:
    """What every stage shares: context, layout, retries, failure commits."""

    def __init__(self, ctx: dict[str, Any]) -> None:
        self.ctx = WorkerContext(**ctx)
        self.layout = self.ctx.layout
        self.retry = self.ctx.retry_policy
        self.lineage = Lineage.from_dict(self.ctx.lineage)

    def fail(
        self,
        src: SlideSource,
        stage_name: str,
        error: BaseException,
        attempt: int,
        **kw: Any,
    ) -> dict[str, Any]:
        """Commit a failure for ``src``; the output row says what happened."""
        rec = failure_record(
            slide_id=src.slide_id,
            source_uri=src.uri,
            patient_id=src.patient_id,
            stage=stage_name,
            error=error,
            attempt=attempt,
            lineage=self.lineage,
        )
        log.warning("slide %s failed at %s: %s", src.slide_id, stage_name, rec["message"])
        won = cm.commit(
            self.layout,
            src.slide_id,
            "failed",
            rec,
            attempt=attempt,
            attempt_id=None,
            stats={k: v for k, v in kw.items() if k.endswith("_s")},
            retry=self.retry,
        )
        return _row(
            src,
            FAILED if won else SKIPPED,
            attempt=attempt,
            error_type=rec["error_type"],
            stage=stage_name,
            **kw,
        )


class TileEncoder(_Stage):
    """Stage + tile + encode, one slide at a time (see the module docstring)."""

    def __init__(self, ctx: dict[str, Any]) -> None:
        super().__init__(ctx)
        from pathgen_batch.features.encoders import encoder_for_contract

        contract = FeatureContract.from_dict(self.ctx.contract)
        self.encoder = encoder_for_contract(contract, device=_device(self.ctx.device))

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        rows = [self.encode(_source(batch, i)) for i in range(len(batch["slide_id"]))]
        return _to_batch(rows)

    def encode(self, src: SlideSource) -> dict[str, Any]:
        from pathgen_batch.features.extract import prefetch_batches, spec_for
        from pathgen_batch.slides import open_slide, read_tiles, tile_grid, tissue_mask

        if cm.is_committed(self.layout, src.slide_id, self.retry):
            return _row(src, SKIPPED)
        attempt, attempt_id = cm.begin_attempt(self.layout, src.slide_id, self.retry)
        times = {"download_s": 0.0, "tiles_s": 0.0, "encode_s": 0.0}
        step = "download"
        try:
            with stage(src, self.ctx.scratch_dir, self.retry) as staged:
                times["download_s"] = staged.seconds
                t0 = time.perf_counter()
                step = "open"
                spec = spec_for(self.encoder, self.ctx.min_tissue)
                feats: list[np.ndarray] = []
                with open_slide(staged.path, mpp_override=src.mpp) as slide:
                    step = "tiles"
                    grid = tile_grid(slide, spec, tissue_mask(slide))
                    tiles = prefetch_batches(
                        read_tiles(slide, grid, batch_size=self.ctx.encoder_batch_size), 2
                    )
                    with closing(tiles):
                        for b in tiles:
                            step = "encode"
                            te = time.perf_counter()
                            feats.append(self.encoder.encode(b.images))  # (B, D)
                            times["encode_s"] += time.perf_counter() - te
                            step = "tiles"
                    mpp, mpp_source = slide.mpp, slide.mpp_source
                times["tiles_s"] = time.perf_counter() - t0 - times["encode_s"]
        except SLIDE_FAILURES as e:
            if isinstance(e, StorageError):
                step = "download"
            elif isinstance(e, SlideError) and step == "encode":
                step = "tiles"
            return self.fail(src, step, e, attempt, **times)
        return _row(
            src,
            ENCODED,
            attempt=attempt,
            attempt_id=attempt_id,
            n_tiles=len(grid),
            size_l0=int(grid.size_l0),
            slide_mpp=float(mpp),
            mpp_source=str(mpp_source),
            x=grid.x.astype(np.int64),
            y=grid.y.astype(np.int64),
            tissue=grid.tissue.astype(np.float32),
            feats=np.concatenate(feats).astype(np.float32),
            **times,
        )


class FeatureReader(_Stage):
    """The bag of each slide from a stored ``features`` table (``reuse_features``).

    Rows carry ``feature_uri`` and ``feature_group`` (empty / -1 when the slide has none).
    """

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        rows = []
        for i in range(len(batch["slide_id"])):
            src = _source(batch, i)
            rows.append(
                self.read(src, str(batch["feature_uri"][i]), int(batch["feature_group"][i]))
            )
        return _to_batch(rows)

    def read(self, src: SlideSource, uri: str, group: int) -> dict[str, Any]:
        if cm.is_committed(self.layout, src.slide_id, self.retry):
            return _row(src, SKIPPED)
        attempt, attempt_id = cm.begin_attempt(self.layout, src.slide_id, self.retry)
        t0 = time.perf_counter()
        try:
            if not uri or group < 0:
                raise MissingFeaturesError(
                    f"slide {src.slide_id}: no stored features in the features run"
                )
            x, y, feats, size_l0 = bag_from_features(read_row_group(uri, group))
        except SLIDE_FAILURES as e:
            return self.fail(src, "features", e, attempt)
        return _row(
            src,
            ENCODED,
            attempt=attempt,
            attempt_id=attempt_id,
            n_tiles=int(x.size),
            size_l0=size_l0,
            x=x,
            y=y,
            tissue=np.ones(x.size, dtype=np.float32),
            feats=feats,
            download_s=time.perf_counter() - t0,
        )


class MissingFeaturesError(PathgenError):
    """A slide has no stored features in the run it is re-scored from."""


class SlideScorer(_Stage):
    """Generator + fusion + conformal + attention per slide; writes results and commits."""

    def __init__(self, ctx: dict[str, Any]) -> None:
        super().__init__(ctx)
        access = RegistryAccess(self.ctx.workspace, self.ctx.tracking_uri)
        self.generator, self.fusion = load_models(
            ModelRef.from_dict(self.ctx.generator),
            ModelRef.from_dict(self.ctx.fusion),
            device=_device(self.ctx.device),
            access=access,
        )
        panel = self.generator.panel
        self.genes = list(panel.genes)
        self.families = list(panel.families)
        self.family_names = list(panel.family_names)
        self.panel_digest = panel.digest
        self.contract = FeatureContract.from_dict(self.ctx.contract)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        rows = _from_batch(batch)
        out = [_slim(r) for r in rows]
        idx = [i for i, r in enumerate(rows) if r["status"] == ENCODED]
        if idx:
            for i, res in zip(idx, self._score([rows[i] for i in idx]), strict=True):
                out[i] = res
        return _to_batch(out)

    def _score(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Score ``rows`` together (one output row each, in order); when that fails, one by
        one, so that only the slide that cannot be scored fails."""
        t0 = time.perf_counter()
        try:
            results = self._predict([r["feats"] for r in rows])
        except SLIDE_FAILURES as e:
            if len(rows) > 1:
                return [done for r in rows for done in self._score([r])]
            r = rows[0]
            return [self.fail(_source_of(r), "score", e, int(r["attempt"]), **_times(r))]
        share = (time.perf_counter() - t0) / len(rows)
        return [self._write(r, res, share) for r, res in zip(rows, results, strict=True)]

    def _predict(self, bags: list[np.ndarray]) -> list[dict[str, Any]]:
        """bags: each (N_i, D) -> per slide: mean, std (G,), fusion outputs."""
        mean, std = self.generator.generate(
            bags, n_samples=self.ctx.n_samples, seed=self.ctx.seed, batch_size=len(bags)
        )  # (B, G) each
        pred = self.fusion.predict(bags, mean, batch_size=len(bags))
        n = self.ctx.n_samples or self.generator.sampler.n_samples
        out = []
        for i in range(len(bags)):
            out.append(
                {
                    "mean": mean[i],
                    "std": std[i],
                    "n_samples": n,
                    "probs": pred.grade_probs[i],
                    "hazards": pred.hazards[i],
                    "risk": float(pred.risk[i]),
                    "attention": None if pred.attention is None else pred.attention[i],  # (F, N)
                    "set": None if pred.grade_sets is None else pred.grade_sets[i],
                    "lo": None if pred.risk_lo is None else float(pred.risk_lo[i]),
                    "hi": None if pred.risk_hi is None else float(pred.risk_hi[i]),
                }
            )
        return out

    def _write(self, r: dict[str, Any], res: dict[str, Any], score_s: float) -> dict[str, Any]:
        src = _source_of(r)
        attempt, attempt_id = int(r["attempt"]), str(r["attempt_id"])
        t0 = time.perf_counter()
        fus = self.fusion
        rec = prediction_record(
            slide_id=src.slide_id,
            source_uri=src.uri,
            patient_id=src.patient_id,
            n_tiles=int(r["n_tiles"]),
            slide_mpp=None
            if float(r["slide_mpp"]) != float(r["slide_mpp"])
            else float(r["slide_mpp"]),
            mpp_source=str(r["mpp_source"]) or None,
            grade_classes=fus.grade_classes,
            grade_probs=res["probs"],
            grade_set=res["set"],
            grade_set_alpha=None if fus.grade_conformal is None else fus.grade_conformal.alpha,
            bin_edges=fus.bin_edges,
            hazards=res["hazards"],
            risk=res["risk"],
            risk_lo=res["lo"],
            risk_hi=res["hi"],
            risk_interval_alpha=None if fus.risk_conformal is None else fus.risk_conformal.alpha,
            gene_panel_digest=self.panel_digest,
            lineage=self.lineage,
        )
        tables = {
            "transcriptomes": transcriptome_table(
                src.slide_id,
                self.genes,
                self.families,
                self.panel_digest,
                res["mean"],
                res["std"],
                int(res["n_samples"]),
                self.lineage,
            )
        }
        if res["attention"] is not None:
            att = np.asarray(res["attention"], dtype=np.float32)  # (F, N)
            names = self.family_names if att.shape[0] == len(self.family_names) else ["slide"]
            tables["tile_attention"] = attention_table(
                src.slide_id,
                r["x"],
                r["y"],
                int(r["size_l0"]),
                self.contract.tile_px,
                self.contract.mpp,
                names,
                att,
                self.lineage,
            )
        if self.ctx.write_features:
            tables["features"] = features_table(
                src.slide_id,
                r["x"],
                r["y"],
                int(r["size_l0"]),
                r["tissue"],
                r["feats"],
                self.lineage,
            )
        try:
            for name, table in tables.items():
                cm.write_slide_table(self.layout, src.slide_id, attempt_id, name, table, self.retry)
        except StorageError as e:
            return self.fail(src, "write", e, attempt, **_times(r, score_s=score_s))
        times = _times(r, score_s=score_s, write_s=time.perf_counter() - t0)
        won = cm.commit(
            self.layout,
            src.slide_id,
            "scored",
            rec,
            attempt=attempt,
            attempt_id=attempt_id,
            tables=list(tables),
            stats=times,
            retry=self.retry,
        )
        return _slim({**r, "status": SCORED if won else SKIPPED, **times})


def _times(r: dict[str, Any], **extra: float) -> dict[str, float]:
    keys = ("download_s", "tiles_s", "encode_s", "score_s", "write_s")
    out = {k: float(r.get(k, 0.0)) for k in keys}
    out.update(extra)
    return out


def _source_of(r: dict[str, Any]) -> SlideSource:
    return SlideSource(
        uri=str(r["uri"]), slide_id=str(r["slide_id"]), patient_id=str(r["patient_id"]) or None
    )


def _slim(r: dict[str, Any]) -> dict[str, Any]:
    """The row without its arrays (what flows back to the driver)."""
    return {
        **r,
        "x": _EMPTY_I,
        "y": _EMPTY_I,
        "tissue": _EMPTY_F,
        "feats": np.zeros((0, 0), dtype=np.float32),
    }


def run_serial(
    ctx: WorkerContext,
    sources: Sequence[SlideSource],
    on_row: Callable[[dict[str, Any]], None] | None = None,
) -> list[dict[str, Any]]:
    """The same stages in one process, one slide after the other (no Ray): a baseline."""
    enc = TileEncoder(ctx.to_dict())
    scorer = SlideScorer(ctx.to_dict())
    out = []
    for src in sources:
        batch = _to_batch(jobs_batch([src]))
        for row in _from_batch(scorer(enc(batch))):
            out.append(row)
            if on_row is not None:
                on_row(row)
    return out
