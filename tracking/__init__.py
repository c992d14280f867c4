"""MLflow conventions in one place.

Experiment and run naming, logging, the model registry, reading runs back; the only package that
imports ``mlflow``. Raises :class:`tracking.errors.TrackingError`.
"""
