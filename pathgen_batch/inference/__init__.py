"""The trained generator and fusion model as used at scoring time, their bundles, the z-scaler.

::

    from pathgen_batch.inference import load_bundle

    gen = load_bundle("models/generator")      # TrainedGenerator
    mean, std = gen.generate(bags)             # (B, G) in expression units
    fus = load_bundle("models/fusion")         # TrainedFusion
    pred = fus.predict(bags, mean)             # probs, hazards, risk, sets, attention

Training (:mod:`pathgen_batch.training`) produces these objects and bundles; the batch scorer,
the registry and the report consume them. Nothing here imports ``training``.
"""

from pathgen_batch.inference.bundle import load_bundle, read_manifest, save_fusion, save_generator
from pathgen_batch.inference.fusion import FusionPrediction, TrainedFusion
from pathgen_batch.inference.generator import TrainedGenerator
from pathgen_batch.inference.scaling import ZScoreScaler

__all__ = [
    "FusionPrediction",
    "TrainedFusion",
    "TrainedGenerator",
    "ZScoreScaler",
    "load_bundle",
    "read_manifest",
    "save_fusion",
    "save_generator",
]
