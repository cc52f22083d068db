"""The code of every registered encoder (MLflow "models from code"): builds the wrapper, which
loads the weights file and contract of the bundle artifact in ``load_context``."""

from mlflow.models import set_model

from pathgen_batch.registry.encoder import EncoderModel

set_model(EncoderModel())
