"""The code MLflow logs as the registered model's ``python_model`` (models from code: nothing is pickled)."""

from mlflow.models import set_model

from tracking.serving import StrokelensModel

set_model(StrokelensModel())
