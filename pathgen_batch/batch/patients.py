"""Patients of a scoring run: one ``patients`` row per patient the input names, exactly once.

When the input names patients (a manifest's ``patient_id`` column), a patient's slides in the
run form its bag, as in training (the union of its slides' tiles). The scorer keeps the bag of
every slide whose patient has several slides in the run (:func:`shared_slides`, written as the
slide's per-slide ``features`` table). After the last pass, when every slide has its commit,
the driver commits each patient still without one (:func:`score_patients`), and consolidation
writes the committed rows (:func:`patient_records`) into the ``patients`` table.

What a patient gets:

- all its slides scored: the prediction from the concatenated bag of its slides (generator
  samples from that bag, then the fusion model on that bag and that transcriptome); with one
  slide, that slide's own prediction.
- some of its slides failed: the same from its scored slides; ``n_slides_failed`` and
  ``failed_slide_ids`` say which are missing (their rows are in ``failures``).
- none of its slides scored, or its union bag could not be scored: status ``failed``, null
  prediction columns, and ``message`` says why.

Exactly once, as for slides: a patient's commit (``patients/<digest>.json`` beside the slide
commits) is created once; a rerun finds it and does nothing, and the table's rows come from the
commits only. The driver scores the patients in its own process, after the slides, their
union bags ``batch_size`` patients at a time (one by one when a batch fails, so that only the
patient that cannot be scored fails): the models are loaded there once, and only when some
patient has two or more scored slides.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from pathgen_batch import storage
from pathgen_batch.batch import commit as cm
from pathgen_batch.errors import DataError, PathgenError
from pathgen_batch.storage import RetryPolicy, SlideSource
from pathgen_batch.tables import io as tio
from pathgen_batch.tables.rows import Lineage, bag_from_features, patient_record

log = logging.getLogger(__name__)

# [(patient id, union bag feats (N, D))] -> the ``predictions`` record of each bag, in order
UnionPredictor = Callable[[Sequence[tuple[str, np.ndarray]]], list[Mapping[str, Any]]]
PATIENT_BATCH = 4  # union bags scored together
# errors the union bag of a patient can cause (as for a slide: anything else is a bug)
PATIENT_FAILURES: tuple[type[BaseException], ...] = (
    PathgenError,
    OSError,
    ValueError,
    RuntimeError,
)


def patient_groups(inputs: Sequence[SlideSource]) -> dict[str, list[str]]:
    """Patient id -> its slide ids, both in input order (slides without a patient left out)."""
    groups: dict[str, list[str]] = {}
    for s in inputs:
        if s.patient_id is not None:
            groups.setdefault(s.patient_id, []).append(s.slide_id)
    return groups


def shared_slides(inputs: Sequence[SlideSource]) -> set[str]:
    """The slides whose patient has several slides in the run (their bags are kept)."""
    return {sid for ids in patient_groups(inputs).values() if len(ids) > 1 for sid in ids}


def commit_patient(layout: cm.RunLayout, record: Mapping[str, Any], retry: RetryPolicy) -> bool:
    """Create the patient's commit; False when one exists already."""
    pid = str(record["patient_id"])
    body = {"patient_id": pid, "record": dict(record)}
    return storage.create_exclusive(layout.patient_commit(pid), json.dumps(body).encode(), retry)


def read_patient_commit(
    layout: cm.RunLayout, patient_id: str, retry: RetryPolicy
) -> dict[str, Any]:
    """The ``patients`` record committed for ``patient_id``."""
    uri = layout.patient_commit(patient_id)
    try:
        body = json.loads(storage.read_bytes(uri, retry))
    except json.JSONDecodeError as e:
        raise DataError(f"{uri}: not valid JSON ({e})") from e
    if not isinstance(body, dict) or body.get("patient_id") != patient_id:
        raise DataError(f"{uri}: not a commit of patient {patient_id!r}")
    return dict(body["record"])


def _union_bag(
    layout: cm.RunLayout, bodies: Sequence[Mapping[str, Any]], retry: RetryPolicy
) -> np.ndarray:
    """(N, D) feats of the scored slides' kept bags, concatenated in input order."""
    feats = []
    for body in bodies:
        sid = body["slide_id"]
        if "features" not in body["tables"]:
            raise DataError(f"slide {sid}: its bag was not kept for its patient")
        uri = layout.slide_file(sid, body["attempt_id"], "features")
        _, _, f, _ = bag_from_features(tio.read_parquet_bytes(storage.read_bytes(uri, retry), uri))
        feats.append(f)
    return np.concatenate(feats, axis=0)  # (sum N_i, D)


def _first_line(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return f"{type(e).__name__}: {lines[0] if lines else ''}"[:2000]


def _predict_each(
    predict: UnionPredictor, items: Sequence[tuple[str, np.ndarray]]
) -> tuple[dict[str, Mapping[str, Any]], dict[str, str]]:
    """(patient id -> record, patient id -> why it failed): the bags together, else one by
    one."""
    try:
        records = predict(items)
    except PATIENT_FAILURES as e:
        if len(items) == 1:
            return {}, {items[0][0]: f"could not be scored: {_first_line(e)}"}
        done: dict[str, Mapping[str, Any]] = {}
        why: dict[str, str] = {}
        for item in items:
            d, w = _predict_each(predict, [item])
            done.update(d)
            why.update(w)
        return done, why
    return {pid: r for (pid, _), r in zip(items, records, strict=True)}, {}


def score_patients(
    state: cm.RunState,
    predictor: Callable[[], UnionPredictor],
    lineage: Lineage,
    gene_panel_digest: str,
    retry: RetryPolicy,
    batch_size: int = PATIENT_BATCH,
) -> int:
    """Commit every patient of the run without a commit; how many this call committed.

    Every slide must have its commit. ``predictor()`` (called once, on the first patient with
    two or more scored slides) gives the function that predicts union bags, ``batch_size``
    patients per call.
    """
    layout = state.layout
    pending = state.pending()
    if pending:
        raise DataError(
            f"run {layout.run_id}: patients are scored once every slide has its commit; "
            f"{len(pending)} have none"
        )

    def commit(
        pid: str,
        slide_ids: list[str],
        scored: list[dict[str, Any]],
        failed: list[str],
        prediction: Mapping[str, Any] | None,
        message: str | None,
    ) -> bool:
        n_tiles = sum(int(b["record"]["n_tiles"]) for b in scored)
        rec = patient_record(
            patient_id=pid,
            slide_ids=slide_ids,
            failed_slide_ids=failed,
            n_tiles=n_tiles if prediction is not None else 0,
            prediction=prediction,
            message=message,
            gene_panel_digest=gene_panel_digest,
            lineage=lineage,
        )
        return commit_patient(layout, rec, retry)

    n = 0
    unions = []  # patients with two or more scored slides
    for pid, slide_ids in patient_groups(state.inputs).items():
        if storage.exists(layout.patient_commit(pid), retry):
            continue
        bodies = [cm.read_commit(layout, sid, retry) for sid in slide_ids]
        scored = [b for b in bodies if b["status"] == "scored"]
        failed = [b["slide_id"] for b in bodies if b["status"] != "scored"]
        if len(scored) > 1:
            unions.append((pid, slide_ids, scored, failed))
        elif scored:
            n += commit(pid, slide_ids, scored, failed, scored[0]["record"], None)
        else:
            first = bodies[0]["record"]
            message = (
                f"no slide of the patient was scored (e.g. {first['slide_id']}: {first['message']})"
            )
            n += commit(pid, slide_ids, scored, failed, None, message)
    predict: UnionPredictor | None = None
    for start in range(0, len(unions), max(1, batch_size)):
        part = unions[start : start + max(1, batch_size)]
        bags: list[tuple[str, np.ndarray]] = []
        why: dict[str, str] = {}
        for pid, _, scored, _ in part:
            try:
                bags.append((pid, _union_bag(layout, scored, retry)))
            except PATIENT_FAILURES as e:
                why[pid] = f"could not be read: {_first_line(e)}"
        done: dict[str, Mapping[str, Any]] = {}
        if bags:
            try:
                if predict is None:
                    predict = predictor()
                done, failures = _predict_each(predict, bags)
            except PATIENT_FAILURES as e:  # the models could not be loaded
                unloaded = f"could not be scored (models not loaded): {_first_line(e)}"
                failures = {pid: unloaded for pid, _ in bags}
            why.update(failures)
        for pid, slide_ids, scored, failed in part:
            said: str | None = None
            if pid in why:
                said = f"the union bag of {len(scored)} slides {why[pid]}"
                log.warning("patient %s: %s", pid, said)
            n += commit(pid, slide_ids, scored, failed, done.get(pid), said)
    return n


def patient_records(state: cm.RunState, retry: RetryPolicy) -> Iterator[dict[str, Any]]:
    """The committed ``patients`` records, in the order the patients first appear in the run."""
    for pid in patient_groups(state.inputs):
        if not storage.exists(state.layout.patient_commit(pid), retry):
            raise DataError(f"run {state.layout.run_id}: patient {pid!r} has no commit yet")
        yield read_patient_commit(state.layout, pid, retry)
