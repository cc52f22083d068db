"""Configuration of a scoring run (a frozen dataclass, loaded strictly)."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

from pathgen_batch.batch.model_refs import DEFAULT_FUSION, DEFAULT_GENERATOR
from pathgen_batch.errors import ConfigError
from pathgen_batch.storage import SLIDE_EXTENSIONS, RetryPolicy


@dataclass(frozen=True)
class ScoreConfig:
    """One scoring run.

    archive: ``s3://bucket/prefix``, a local folder, or a manifest table (.csv/.parquet).
    output: ``s3://bucket/prefix`` or a local folder; tables go to ``<output>/<table>/``.
    run_id: names the run (None: a new id); the same id resumes the run.
    generator, fusion: bundle folders or registry URIs (default: the Production versions);
    encoder_weights: the weights of the models' tile encoder when their feature contract names
    one that has weights (``uni``, ``resnet50-trunc``, ...): a local file or a registry URI
    (``models:/pathgen-encoder/3``, ``models:/pathgen-encoder@champion``); None: the newest
    ``pathgen-encoder`` version registered with exactly that contract. Either is checked
    against the contract before any slide is read.
    workspace, tracking_uri: the registry store (see ``pathgen_batch.registry``).
    ray_address: join this cluster (``auto``, ``ray://...``, ``host:port``); None starts a
    local Ray with ``num_cpus`` CPUs (None: all).
    in_process: run the same stages one batch after the other in this process, no Ray
    (``num_cpus`` threads read and encode a slide's tiles side by side). None: in process
    when re-scoring (``reuse_features``) without a cluster to join (no ``ray_address``, no
    ``RAY_ADDRESS``): with no slide to decode or encode, starting Ray costs more than the work;
    otherwise Ray.
    scratch_dir: node-local folder for staged slides (None: the system temp folder).
    encoder_actors: tile+encode actors; each holds at most one staged slide, so this bounds
    the slides on scratch at once (per node: the actors placed there). None: one per GPU when
    the cluster has GPUs, else one per CPU.
    encoder_batch_size: tiles per encoder forward pass; None: chosen by each encoder actor from
    its device's free memory (64 on a CPU).
    encoder_num_cpus/gpus, scorer_num_cpus/gpus: Ray resources per actor; None: derived
    from the cluster (GPUs when it has them).
    scorer_actors: actors running generator + fusion + conformal + attention;
    scorer_batch_size: slides per model call.
    min_tissue: tissue fraction a tile needs; n_samples: generator samples per slide (None:
    the bundle's default); seed: sampling seed.
    write_features: also keep a ``features`` table (for re-scoring without the slides).
    reuse_features: score from the ``features`` table of run ``features_run`` (None: the
    latest complete run in ``output`` with features of the same contract); no slide is read.
    retries, retry_backoff_s: storage retries per transfer; max_passes: pipeline passes over
    slides still without a result before they are recorded as failed.
    extensions: slide file extensions listed in an S3 prefix or folder.
    progress_every_s: seconds between progress lines.
    archive_profile, output_profile: named profiles of the shared AWS credentials/config files
    for the S3 archive and the S3 output (None: boto3's standard chain); only the names travel.
    pseudonym_key: a key file; slide ids, patient ids and source URIs in every table and log
    line become keyed hashes (:mod:`pathgen_batch.tables.pseudonyms`). None: as given.
    """

    archive: str
    output: str
    run_id: str | None = None
    generator: str = DEFAULT_GENERATOR
    fusion: str = DEFAULT_FUSION
    encoder_weights: str | None = None
    workspace: str = "workspace"
    tracking_uri: str | None = None
    ray_address: str | None = None
    in_process: bool | None = None
    num_cpus: int | None = None
    scratch_dir: str | None = None
    encoder_actors: int | None = None
    encoder_batch_size: int | None = None
    encoder_num_cpus: float | None = None
    encoder_num_gpus: float | None = None
    scorer_actors: int = 1
    scorer_batch_size: int = 4
    scorer_num_cpus: float | None = None
    scorer_num_gpus: float | None = None
    min_tissue: float = 0.5
    n_samples: int | None = None
    seed: int = 0
    write_features: bool = False
    reuse_features: bool = False
    features_run: str | None = None
    retries: int = 4
    retry_backoff_s: float = 0.5
    max_passes: int = 3
    extensions: tuple[str, ...] = tuple(sorted(SLIDE_EXTENSIONS))
    progress_every_s: float = 5.0
    exclude_geojson: str | None = None  # folder / prefix of <slide_id>.geojson annotations
    archive_profile: str | None = None
    output_profile: str | None = None
    pseudonym_key: str | None = None

    def __post_init__(self) -> None:
        for name in ("archive", "output", "generator", "fusion", "workspace"):
            v = getattr(self, name)
            if not isinstance(v, str) or not v.strip():
                raise ConfigError(f"ScoreConfig.{name}: expected a non-empty string, got {v!r}")
        ints = {
            "scorer_actors": 1,
            "scorer_batch_size": 1,
            "retries": 1,
            "max_passes": 1,
            "seed": 0,
        }
        for name, low in ints.items():
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < low:
                raise ConfigError(f"ScoreConfig.{name}: expected an integer >= {low}, got {v!r}")
        for name in ("encoder_actors", "encoder_batch_size", "num_cpus", "n_samples"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
                raise ConfigError(
                    f"ScoreConfig.{name}: expected None or an integer >= 1, got {v!r}"
                )
        for name in ("encoder_num_cpus", "encoder_num_gpus", "scorer_num_cpus", "scorer_num_gpus"):
            v = getattr(self, name)
            if v is not None and (
                isinstance(v, bool) or not isinstance(v, int | float) or not 0 <= v < math.inf
            ):
                raise ConfigError(f"ScoreConfig.{name}: expected None or a number >= 0, got {v!r}")
        if not 0.0 <= self.min_tissue <= 1.0:
            raise ConfigError(f"ScoreConfig.min_tissue: expected 0..1, got {self.min_tissue}")
        if not self.retry_backoff_s >= 0:
            raise ConfigError(
                f"ScoreConfig.retry_backoff_s: expected >= 0, got {self.retry_backoff_s}"
            )
        if not self.progress_every_s > 0:
            raise ConfigError(
                f"ScoreConfig.progress_every_s: expected > 0, got {self.progress_every_s}"
            )
        if self.write_features and self.reuse_features:
            raise ConfigError(
                "ScoreConfig: write_features and reuse_features exclude each other (features "
                "read from a run are already stored there)"
            )
        if self.features_run is not None and not self.reuse_features:
            raise ConfigError("ScoreConfig.features_run: only meaningful with reuse_features")
        if self.in_process and self.ray_address:
            raise ConfigError("ScoreConfig: in_process and ray_address exclude each other")

    def runs_in_process(self) -> bool:
        """Whether the run uses no Ray (``in_process``, or its default: see the class)."""
        if self.in_process is not None:
            return self.in_process
        return self.reuse_features and not (self.ray_address or os.environ.get("RAY_ADDRESS"))
        if not self.extensions:
            raise ConfigError("ScoreConfig.extensions: expected at least one extension")

    @property
    def retry(self) -> RetryPolicy:
        return RetryPolicy(attempts=self.retries, backoff_s=self.retry_backoff_s)
