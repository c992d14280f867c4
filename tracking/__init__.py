"""MLflow conventions in one place.

Experiment and run naming, logging and the ``mlflow run`` project run (:mod:`~tracking.runs`),
trained models and the model registry (:mod:`~tracking.model_registry`), reading runs back
(:mod:`~tracking.records`), the team's services (:mod:`~tracking.services`); the only package that
imports ``mlflow``. Raises :class:`tracking.errors.TrackingError`.
"""
