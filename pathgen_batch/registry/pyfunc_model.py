"""The code of every registered pathgen model (MLflow "models from code").

MLflow copies this file into the model and runs it when the model is loaded; it builds the
wrapper, which then loads the bundle artifact in ``load_context``. No object is pickled.
"""

from mlflow.models import set_model

from pathgen_batch.registry.pyfunc import BundleModel

set_model(BundleModel())
