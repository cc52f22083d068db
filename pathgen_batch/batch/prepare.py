"""Everything a scoring run settles before any slide is read.

:func:`prepare` resolves the models (registry URIs pinned to version numbers), compares their
feature contract and gene panel, checks the archive and the output for access, names the run
and, with ``reuse_features``, finds the run whose stored features to score;
:func:`worker_context` is what each stage is given. With a pseudonym key, the run's inputs
are the pseudonymised sources (:mod:`pathgen_batch.tables.pseudonyms`): tables, state files
and logs see only those, and the workers get a map back to the real locations, not the key.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
import os
import tempfile
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from pathgen_batch import storage
from pathgen_batch.batch import commit as cm
from pathgen_batch.batch.config import ScoreConfig
from pathgen_batch.batch.model_refs import (
    EncoderRef,
    ModelRef,
    PairInfo,
    RegistryAccess,
    check_pair,
    resolve_encoder,
    resolve_model,
)
from pathgen_batch.batch.stages import WorkerContext
from pathgen_batch.errors import ConfigError
from pathgen_batch.features.contract import FeatureContract
from pathgen_batch.storage import SlideSource
from pathgen_batch.tables import io as tio
from pathgen_batch.tables.pseudonyms import Pseudonymiser, SourceMap
from pathgen_batch.tables.redaction import Redactor
from pathgen_batch.tables.rows import Lineage

log = logging.getLogger(__name__)


class Listing:
    """The archive's slides, listed once (real sources) and as the run sees them."""

    def __init__(self, cfg: ScoreConfig, pseudonyms: Pseudonymiser | None) -> None:
        self.cfg = cfg
        self.pseudonyms = pseudonyms
        self._real: Sequence[SlideSource] | None = None
        self.found: storage.ArchiveListing | None = None  # what the listing kept and skipped
        self._map: SourceMap | None = None

    def real(self) -> Sequence[SlideSource]:
        if self._real is None:
            cfg = self.cfg
            self.found = storage.scan_archive(cfg.archive, cfg.extensions, cfg.retry)
            self._real = self.found.slides
        return self._real

    def inputs(self) -> Sequence[SlideSource]:
        ps = self.pseudonyms
        return self.real() if ps is None else [ps.source(s) for s in self.real()]

    def source_map(self) -> SourceMap | None:
        ps = self.pseudonyms
        if ps is None:
            return None
        if self._map is None:
            self._map = SourceMap.build(self.real(), ps, archive=self.cfg.archive)
        return self._map

    def redactor(self) -> Redactor | None:
        """What replaces the real locations and ids in the run's log records (None: as made)."""
        sources = self.source_map()
        return None if sources is None else Redactor(sources.replacements())


def new_run_id() -> str:
    """``YYYYmmddTHHMMSSZ-<6 hex>``: sortable by start time, unique."""
    now = dt.datetime.now(dt.timezone.utc)
    return f"{now:%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:6]}"


@dataclass(frozen=True)
class Prepared:
    """A run ready to start: its settings, id, resolved models and their fit, its lineage and
    (``reuse_features``) where each slide's stored bag is."""

    cfg: ScoreConfig
    run_id: str
    generator: ModelRef
    fusion: ModelRef
    pair: PairInfo
    lineage: Lineage
    features_run: str | None
    feature_index: dict[str, tuple[str, int]]
    listing: Listing
    encoder: EncoderRef = field(default_factory=EncoderRef)

    @property
    def layout(self) -> cm.RunLayout:
        return cm.RunLayout(self.cfg.output, self.run_id)

    @property
    def public_config(self) -> ScoreConfig:
        """The settings as outputs record them: a pseudonymised run names its archive by
        its pseudonym (an archive prefix can hold a patient's accession number)."""
        ps = self.listing.pseudonyms
        return (
            self.cfg
            if ps is None
            else dataclasses.replace(self.cfg, archive=ps.token(self.cfg.archive))
        )

    def identity(self) -> dict[str, Any]:
        c = self.cfg
        return {
            "generator": [self.generator.name, self.generator.version],
            "fusion": [self.fusion.name, self.fusion.version],
            "contract_digest": self.pair.contract.digest,
            "gene_panel_digest": self.pair.panel.digest,
            "min_tissue": c.min_tissue,
            "n_samples": c.n_samples,
            "seed": c.seed,
            "write_features": c.write_features,
            "features_run": self.features_run,
            "exclude_geojson": c.exclude_geojson,
            **({"pseudonym_key_id": ps.key_id} if (ps := self.listing.pseudonyms) else {}),
        }


def _latest_features_run(output: str, contract: FeatureContract) -> str:
    runs = tio.complete_runs(output)
    if not runs:
        raise ConfigError(f"reuse_features: {output} holds no complete run to take features from")
    table = tio.read_runs(output)
    rows = [
        r
        for r in table.to_pylist()
        if r["features_written"] and r["contract_digest"] == contract.digest
    ]
    if not rows:
        raise ConfigError(
            f"reuse_features: no complete run in {output} stored features with the models' "
            f"contract ({contract.describe()}); score once with write_features"
        )
    return str(max(rows, key=lambda r: r["finished_at"])[tio.PARTITION])


def _features_source(output: str, run: str | None, contract: FeatureContract) -> str:
    if run is None:
        return _latest_features_run(output, contract)
    if run not in tio.complete_runs(output):
        raise ConfigError(f"features_run: run {run!r} is not a complete run in {output}")
    row = tio.read_table(output, "runs", [run]).to_pylist()[0]
    if not row["features_written"]:
        raise ConfigError(f"features_run: run {run!r} did not store features")
    if row["contract_digest"] != contract.digest:
        stored = FeatureContract.from_json(row["encoder_contract"], f"run {run}")
        contract.check_matches(stored, what=f"models vs features of run {run}")
    return run


def check_storage(cfg: ScoreConfig) -> None:
    """Use the profiles given for the archive and the output, then check that the output may be
    listed, read, written and deleted in, and the archive listed and read (never written)."""
    storage.use_profiles(
        {cfg.archive: cfg.archive_profile, cfg.output: cfg.output_profile},
        {cfg.archive: "--archive-profile", cfg.output: "--output-profile"},
    )
    for role, uri, write in (("output", cfg.output, True), ("archive", cfg.archive, False)):
        try:
            storage.check_access(uri, write=write, retry=cfg.retry)
        except storage.StorageError as e:
            raise storage.StorageError(f"{role} {e}") from e.__cause__


def prepare(cfg: ScoreConfig) -> Prepared:
    """Everything that can fail before a slide is read: models, their fit, storage access."""
    run_id = tio.check_run_id(cfg.run_id) if cfg.run_id is not None else new_run_id()
    key = cfg.pseudonym_key
    pseudonyms = Pseudonymiser.from_file(key) if key is not None else None
    access = RegistryAccess(cfg.workspace, cfg.tracking_uri)
    gen = resolve_model(cfg.generator, "generator", access)
    fus = resolve_model(cfg.fusion, "fusion", access)
    pair = check_pair(gen, fus)
    lineage = Lineage(
        generator_model=gen.name,
        generator_version=gen.version,
        fusion_model=fus.name,
        fusion_version=fus.version,
        encoder_contract=pair.contract.to_json(),
        contract_digest=pair.contract.digest,
    )
    check_storage(cfg)
    features_run = None
    index: dict[str, tuple[str, int]] = {}
    if cfg.reuse_features:
        features_run = _features_source(cfg.output, cfg.features_run, pair.contract)
        index = tio.feature_index(cfg.output, features_run)
    # the models' encoder, checked against their contract (not needed to reuse stored features)
    encoder = (
        EncoderRef()
        if cfg.reuse_features
        else resolve_encoder(cfg.encoder_weights, pair.contract, access)
    )
    listing = Listing(cfg, pseudonyms)
    return Prepared(cfg, run_id, gen, fus, pair, lineage, features_run, index, listing, encoder)


def list_inputs(p: Prepared) -> Callable[[], Sequence[SlideSource]]:
    """The archive's listing, deferred (a resumed run keeps the inputs it froze). What it
    skipped, and why, is written to the run's ``listing.json`` and logged in one line (a
    warning when files that are not slides were skipped); a pseudonymised run names the
    skipped files by their pseudonyms."""
    cfg = p.cfg

    def listing() -> Sequence[SlideSource]:
        inputs = p.listing.inputs()
        found = p.listing.found
        assert found is not None
        ps = p.listing.pseudonyms
        if ps is not None:  # the archive, skipped files and companions' slides by pseudonym
            found = dataclasses.replace(
                found,
                uri=ps.token(found.uri),
                skipped=[
                    dataclasses.replace(s, uri=ps.token(s.uri), reason=_pseudonymous(s.reason, ps))
                    for s in found.skipped
                ],
            )
        report = {
            "summary": found.summary(),
            "kinds": found.kinds,
            "skipped": [{"uri": s.uri, "reason": s.reason} for s in found.skipped],
        }
        storage.write_bytes(p.layout.listing, json.dumps(report, indent=1).encode(), cfg.retry)
        others = any(s.reason == "not a slide extension" for s in found.skipped)
        log.log(logging.WARNING if others else logging.INFO, "%s", found.summary())
        return inputs

    return listing


def _pseudonymous(reason: str, ps: Pseudonymiser) -> str:
    """A skip reason with the slide it names replaced by its pseudonym."""
    head = "companion file of "
    return head + ps.token(reason[len(head) :]) if reason.startswith(head) else reason


def listing_summary(p: Prepared) -> str | None:
    """The one-line summary of the run's archive listing (None for a run begun without one)."""
    if not storage.exists(p.layout.listing, p.cfg.retry):
        return None
    return str(json.loads(storage.read_bytes(p.layout.listing, p.cfg.retry))["summary"])


def worker_context(p: Prepared, device: str = "auto") -> WorkerContext:
    """What every stage of run ``p`` needs (sent to each Ray actor once)."""
    cfg = p.cfg
    scratch = cfg.scratch_dir or os.path.join(tempfile.gettempdir(), "pathgen-scratch")
    return WorkerContext(
        output=storage.normalise(cfg.output),
        run_id=p.run_id,
        lineage=p.lineage,
        contract=p.pair.contract,
        generator=p.generator,
        fusion=p.fusion,
        workspace=cfg.workspace,
        tracking_uri=cfg.tracking_uri,
        scratch_dir=os.path.join(scratch, p.run_id),
        retry=cfg.retry,
        min_tissue=cfg.min_tissue,
        encoder_batch_size=cfg.encoder_batch_size,
        n_samples=cfg.n_samples,
        seed=cfg.seed,
        write_features=cfg.write_features,
        device=device,
        encoder=p.encoder,
        exclude_geojson=cfg.exclude_geojson,
        sources=None if cfg.reuse_features else p.listing.source_map(),
    )
