"""Tile encoders, the feature contract and per-slide feature files.

::

    from pathgen_batch.features import build_encoder, extract_slide, load_bags, pad_bags

    enc = build_encoder("stain-texture", device="auto")       # or "resnet50-trunc", weights=...
    sf = extract_slide("slide.svs", enc)                      # x, y (N,), feats (N, D)
    bags = load_bags("features/", ["S1", "S2"], enc.contract) # id -> (coords (N, 2), feats)
    feats, mask = pad_bags([f for _, f in bags.values()], max_tiles=2048)
"""

from pathgen_batch.features.bags import pad_bags, subsample_indices
from pathgen_batch.features.contract import FeatureContract
from pathgen_batch.features.encode_slide import EncodedSlide, encode_slide, spec_for
from pathgen_batch.features.encoder import Encoder, resolve_device
from pathgen_batch.features.encoders import (
    DEFAULT_ENCODER,
    EncoderEntry,
    build_encoder,
    check_weights,
    encoder_entries,
    encoder_for_contract,
    encoder_names,
    register_encoder,
)
from pathgen_batch.features.extract import (
    FeatureTarget,
    SlideResult,
    cohort_slides,
    extract_cohort,
    extract_slide,
    extract_slides,
)
from pathgen_batch.features.store import (
    SlideFeatures,
    feature_file,
    feature_uri,
    load_bags,
    read_contract,
    read_slide_features,
    stored_slide_ids,
    write_slide_features,
)

__all__ = [
    "DEFAULT_ENCODER",
    "EncodedSlide",
    "Encoder",
    "EncoderEntry",
    "FeatureContract",
    "FeatureTarget",
    "SlideFeatures",
    "SlideResult",
    "build_encoder",
    "check_weights",
    "cohort_slides",
    "encode_slide",
    "encoder_entries",
    "encoder_for_contract",
    "encoder_names",
    "extract_cohort",
    "extract_slide",
    "extract_slides",
    "feature_file",
    "feature_uri",
    "load_bags",
    "pad_bags",
    "read_contract",
    "read_slide_features",
    "register_encoder",
    "resolve_device",
    "spec_for",
    "stored_slide_ids",
    "subsample_indices",
    "write_slide_features",
]
