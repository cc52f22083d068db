"""Names of the registered models and the tags every registered version carries.

Version tags (all strings):

=================================  ==========================================================
``pathgen.kind``                   ``generator`` | ``fusion`` | ``encoder``
``pathgen.model``                  architecture name (``generator``, ``fusion``, ...)
``pathgen.feature_contract``       canonical JSON of the feature contract
``pathgen.feature_contract_digest``  its ``sha256:`` digest
``pathgen.gene_panel_digest``      the gene panel's digest (generator and fusion)
``pathgen.n_genes``                genes in the panel
``pathgen.cohort``                 training cohort (folder name and mode)
``pathgen.data_digest``            digest of the training data (the cohort's ``cohort.json``)
``pathgen.eval_digest``            digest of the evaluation (cohort + patient folds)
``pathgen.code_version``           package version (+ git commit when known)
``pathgen.risk_cuts``              fusion: cut points of the relative risk groups, JSON
                                   ``{"quantiles": [...], "cuts": [...], "n": N}``
``pathgen.cv.<metric>``            cross-validated metrics the gate compares
``pathgen.previous_production``    the version that was Production before this one
``pathgen.audit.<NNNN>``           audit events (JSON), in order
=================================  ==========================================================
"""

from __future__ import annotations

import math
from collections.abc import Mapping

GENERATOR_MODEL = "pathgen-generator"
FUSION_MODEL = "pathgen-fusion"
ENCODER_MODEL = "pathgen-encoder"
DEFAULT_NAMES: dict[str, str] = {
    "generator": GENERATOR_MODEL,
    "fusion": FUSION_MODEL,
    "encoder": ENCODER_MODEL,
}
KINDS = ("generator", "fusion", "encoder")

STAGING, PRODUCTION, ARCHIVED, NONE_STAGE = "Staging", "Production", "Archived", "None"
STAGES = (NONE_STAGE, STAGING, PRODUCTION, ARCHIVED)
# aliases kept in step with the deprecated stages
STAGE_ALIASES: dict[str, str] = {STAGING: "staging", PRODUCTION: "champion"}

TAG_KIND = "pathgen.kind"
TAG_MODEL = "pathgen.model"
TAG_CONTRACT = "pathgen.feature_contract"
TAG_CONTRACT_DIGEST = "pathgen.feature_contract_digest"
TAG_PANEL_DIGEST = "pathgen.gene_panel_digest"
TAG_N_GENES = "pathgen.n_genes"
TAG_COHORT = "pathgen.cohort"
TAG_DATA_DIGEST = "pathgen.data_digest"
TAG_EVAL_DIGEST = "pathgen.eval_digest"
TAG_CODE_VERSION = "pathgen.code_version"
TAG_RISK_CUTS = "pathgen.risk_cuts"
TAG_PREVIOUS_PRODUCTION = "pathgen.previous_production"
CV_PREFIX = "pathgen.cv."
AUDIT_PREFIX = "pathgen.audit."

# metric keys of a run: cross-validated metrics are logged as ``cv/<name>``
RUN_CV_PREFIX = "cv/"


def canonical_stage(stage: str) -> str:
    """``production`` / ``PRODUCTION`` -> ``Production``; unknown stages are a ValueError."""
    for s in STAGES:
        if stage.strip().lower() == s.lower():
            return s
    raise ValueError(f"stage: expected one of {list(STAGES)}, got {stage!r}")


# which cross-validated metrics describe a model of each kind (prefixes of ``cv/<key>``)
CV_SECTIONS: dict[str, tuple[str, ...]] = {
    "generator": ("fidelity/", "pooled_fidelity/", "synthetic/"),
    "fusion": ("synthetic/", "real/", "wsi_trained/", "attention_mil/", "wsi_only/", "conformal/"),
    "encoder": (),
}


def cv_for_kind(metrics: Mapping[str, float], kind: str) -> dict[str, float]:
    """The metrics of ``metrics`` that describe a model of ``kind`` (all, for unknown kinds)."""
    prefixes = CV_SECTIONS.get(kind)
    if prefixes is None:
        return dict(metrics)
    return {k: v for k, v in metrics.items() if k.startswith(prefixes)}


def cv_tags(metrics: Mapping[str, float]) -> dict[str, str]:
    """``{"c_index": 0.71}`` -> ``{"pathgen.cv.c_index": "0.71"}`` (finite values only)."""
    out = {}
    for k, v in metrics.items():
        f = float(v)
        if math.isfinite(f):
            out[CV_PREFIX + k] = repr(f)
    return out


def cv_from_tags(tags: Mapping[str, str]) -> dict[str, float]:
    """The ``pathgen.cv.*`` tags of a version as floats (unparseable values are left out)."""
    out = {}
    for k, v in tags.items():
        if k.startswith(CV_PREFIX):
            try:
                out[k[len(CV_PREFIX) :]] = float(v)
            except ValueError:
                continue
    return out


def cv_from_run_metrics(metrics: Mapping[str, float]) -> dict[str, float]:
    """The ``cv/<name>`` metrics of a run, keyed by ``<name>``."""
    return {
        k[len(RUN_CV_PREFIX) :]: float(v) for k, v in metrics.items() if k.startswith(RUN_CV_PREFIX)
    }
