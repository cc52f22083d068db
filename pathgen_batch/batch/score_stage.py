"""The second stage of a scoring run: models applied to each bag, results written, committed.

:class:`SlideScorer` loads the generator and the fusion model once (``__init__``), scores the
encoded slides of a batch together (one by one when that fails, so that only the slide that
cannot be scored fails), writes each slide's per-slide tables and creates its commit
(:mod:`pathgen_batch.batch.commit`). What flows on to the driver is a status row without the
bag. :class:`StoredBagScorer` is re-scoring's one stage: each slide's stored bag read and
scored in the same actor, so no bag crosses processes. The bag of a slide whose patient has
several slides in the run is kept (as its per-slide ``features`` table) for the patient's
prediction (:mod:`pathgen_batch.batch.patients`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import pyarrow as pa

from pathgen_batch.batch import commit as cm
from pathgen_batch.batch.encode_stage import FeatureReader
from pathgen_batch.batch.model_refs import RegistryAccess, load_models
from pathgen_batch.batch.patients import shared_slides
from pathgen_batch.batch.stage_rows import (
    SlideRow,
    SlideStatus,
    TileBag,
    from_batch,
    to_batch,
)
from pathgen_batch.batch.stages import SLIDE_FAILURES, SlideStage, WorkerContext
from pathgen_batch.features.encoder import resolve_device
from pathgen_batch.storage import StorageError
from pathgen_batch.tables.rows import (
    attention_table,
    features_table,
    prediction_record,
    transcriptome_table,
)


@dataclass(frozen=True, eq=False)  # holds arrays: compared by identity
class SlidePrediction:
    """What the models say about one slide (G genes, C grade classes, K time bins, F families
    of attention over N tiles); None where the model carries no such output."""

    mean: np.ndarray  # (G,) generator samples' mean
    std: np.ndarray  # (G,) and spread
    n_samples: int
    probs: np.ndarray  # (C,) grade probabilities
    hazards: np.ndarray  # (K,)
    risk: float
    attention: np.ndarray | None  # (F, N)
    grade_set: np.ndarray | None  # (C,) bool conformal prediction set
    risk_lo: float | None  # conformal risk interval
    risk_hi: float | None


class SlideScorer(SlideStage):
    """Generator + fusion + conformal + attention per slide; writes results and commits."""

    def __init__(self, ctx: WorkerContext) -> None:
        super().__init__(ctx)
        self.generator, self.fusion = load_models(
            ctx.generator,
            ctx.fusion,
            device=str(resolve_device(ctx.device)),
            access=RegistryAccess(ctx.workspace, ctx.tracking_uri),
        )
        panel = self.generator.panel
        self.genes = list(panel.genes)
        self.families = list(panel.families)
        self.family_names = list(panel.family_names)
        self.panel_digest = panel.digest
        self.shared = shared_slides(cm.read_inputs(self.layout, self.retry))

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        rows = from_batch(batch)
        out = [r.but(bag=None) for r in rows]
        idx = [i for i, r in enumerate(rows) if r.status is SlideStatus.ENCODED]
        if idx:
            for i, res in zip(idx, self._score([rows[i] for i in idx]), strict=True):
                out[i] = res
        return to_batch(out)

    def _score(self, rows: list[SlideRow]) -> list[SlideRow]:
        """Score ``rows`` together (one output row each, in order); when that fails, one by
        one, so that only the slide that cannot be scored fails."""
        t0 = time.perf_counter()
        try:
            results = self.predict([_bag(r).feats for r in rows])
        except SLIDE_FAILURES as e:
            if len(rows) > 1:
                return [done for r in rows for done in self._score([r])]
            return [self.fail(rows[0], "score", e, rows[0].times)]
        share = (time.perf_counter() - t0) / len(rows)
        return [self._write(r, res, share) for r, res in zip(rows, results, strict=True)]

    def predict(self, bags: Sequence[np.ndarray]) -> list[SlidePrediction]:
        """bags: each (N_i, D) -> one prediction per bag."""
        mean, std = self.generator.generate(
            list(bags), n_samples=self.ctx.n_samples, seed=self.ctx.seed, batch_size=len(bags)
        )  # (B, G) each
        pred = self.fusion.predict(list(bags), mean, batch_size=len(bags))
        n = self.ctx.n_samples or self.generator.sampler.n_samples
        return [
            SlidePrediction(
                mean=mean[i],
                std=std[i],
                n_samples=int(n),
                probs=pred.grade_probs[i],
                hazards=pred.hazards[i],
                risk=float(pred.risk[i]),
                attention=None if pred.attention is None else pred.attention[i],  # (F, N)
                grade_set=None if pred.grade_sets is None else pred.grade_sets[i],
                risk_lo=None if pred.risk_lo is None else float(pred.risk_lo[i]),
                risk_hi=None if pred.risk_hi is None else float(pred.risk_hi[i]),
            )
            for i in range(len(bags))
        ]

    def _tables(self, r: SlideRow, res: SlidePrediction) -> dict[str, pa.Table]:
        """The slide's per-slide tables: transcriptomes, tile attention, features."""
        sid, bag, contract = r.source.slide_id, _bag(r), self.ctx.contract
        tables = {
            "transcriptomes": transcriptome_table(
                sid,
                self.genes,
                self.families,
                self.panel_digest,
                res.mean,
                res.std,
                res.n_samples,
                self.lineage,
            )
        }
        if res.attention is not None:
            att = np.asarray(res.attention, dtype=np.float32)  # (F, N)
            names = self.family_names if att.shape[0] == len(self.family_names) else ["slide"]
            tables["tile_attention"] = attention_table(
                sid,
                bag.x,
                bag.y,
                r.size_l0,
                contract.tile_px,
                contract.mpp,
                names,
                att,
                self.lineage,
            )
        if self.ctx.write_features or sid in self.shared:
            tables["features"] = features_table(
                sid, bag.x, bag.y, r.size_l0, bag.tissue, bag.feats, self.lineage
            )
        return tables

    def record(
        self,
        res: SlidePrediction,
        *,
        slide_id: str,
        source_uri: str,
        patient_id: str | None,
        n_tiles: int,
        slide_mpp: float | None = None,
        mpp_source: str | None = None,
    ) -> dict[str, Any]:
        """The ``predictions`` record of a prediction."""
        fus = self.fusion
        return prediction_record(
            slide_id=slide_id,
            source_uri=source_uri,
            patient_id=patient_id,
            n_tiles=n_tiles,
            slide_mpp=slide_mpp,
            mpp_source=mpp_source,
            grade_classes=fus.grade_classes,
            grade_probs=res.probs,
            grade_set=res.grade_set,
            grade_set_alpha=None if fus.grade_conformal is None else fus.grade_conformal.alpha,
            bin_edges=fus.bin_edges,
            hazards=res.hazards,
            risk=res.risk,
            risk_lo=res.risk_lo,
            risk_hi=res.risk_hi,
            risk_interval_alpha=None if fus.risk_conformal is None else fus.risk_conformal.alpha,
            risk_cuts=fus.risk_cuts,
            gene_panel_digest=self.panel_digest,
            lineage=self.lineage,
        )

    def _write(self, r: SlideRow, res: SlidePrediction, score_s: float) -> SlideRow:
        src = r.source
        t0 = time.perf_counter()
        rec = self.record(
            res,
            slide_id=src.slide_id,
            source_uri=src.uri,
            patient_id=src.patient_id,
            n_tiles=r.n_tiles,
            slide_mpp=r.slide_mpp,
            mpp_source=r.mpp_source,
        )
        tables = self._tables(r, res)
        times = replace(r.times, score=score_s)
        attempt_id = r.attempt_id or ""
        try:
            for name, table in tables.items():
                cm.write_slide_table(self.layout, src.slide_id, attempt_id, name, table, self.retry)
        except StorageError as e:
            return self.fail(r, "write", e, times)
        times.write = time.perf_counter() - t0
        won = self.commit(
            r,
            "scored",
            rec,
            times,
            attempt_id=attempt_id,
            tables=[*tables, *(["thumbnails"] if r.has_thumbnail else [])],
        )
        return r.but(
            status=SlideStatus.SCORED if won else SlideStatus.SKIPPED, bag=None, times=times
        )


class StoredBagScorer:
    """``reuse_features``: :class:`.encode_stage.FeatureReader` then :class:`SlideScorer`, in
    one actor (a batch of slides read from the ``features`` table, then scored together)."""

    def __init__(self, ctx: WorkerContext) -> None:
        self.reader = FeatureReader(ctx)
        self.scorer = SlideScorer(ctx)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self.scorer(self.reader(batch))


def _bag(r: SlideRow) -> TileBag:
    if r.bag is None:  # an encoded row always has its bag
        raise ValueError(f"slide {r.source.slide_id}: encoded without a bag")
    return r.bag


def union_predictor(
    ctx: WorkerContext,
) -> Callable[[Sequence[tuple[str, np.ndarray]]], list[Mapping[str, Any]]]:
    """The models of run ``ctx`` as a function [(patient id, union bag feats (N, D))] -> the
    ``predictions`` record of each bag, scored together (for
    :func:`pathgen_batch.batch.patients.score_patients`)."""
    scorer = SlideScorer(ctx)

    def predict(items: Sequence[tuple[str, np.ndarray]]) -> list[Mapping[str, Any]]:
        results = scorer.predict([feats for _, feats in items])
        return [
            scorer.record(res, slide_id=pid, source_uri="", patient_id=pid, n_tiles=len(feats))
            for (pid, feats), res in zip(items, results, strict=True)
        ]

    return predict
