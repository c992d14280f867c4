"""One plain function per pipeline stage, with typed arguments and a result object.

The command line (:mod:`mlproject`) parses arguments and calls exactly one of these; the whole
pipeline (:func:`benchmark.stages.pipeline.run_pipeline`) calls them in order and passes their
results on. A notebook can call them directly, e.g.
``from benchmark.stages import evaluate_study; evaluate_study("strokelens").val_cases``.

======================  =====================================  =====================
stage                   function                               result
======================  =====================================  =====================
prepare data            :func:`~.data.prepare_data`            ``DataResult``
plan (native mode)      :func:`~.plan.plan_data`               ``PlanResult``
search (+ export)       :func:`~.train.search_and_export`      ``TrainResult``
export                  :func:`~.export.export_model`          ``ExportResult``
evaluate                :func:`~.evaluate.evaluate_study`      ``EvaluationResult``
explain                 :func:`~.explanations.explain_model`   ``ExplanationResult``
study experiments       :func:`~.experiments.run_experiments`  ``ExperimentsResult``
report                  :func:`~.report.report_study`          ``ReportResult``
predict                 :func:`~.predict.predict_cases`        ``PredictionResult``
the whole pipeline      :func:`~.pipeline.run_pipeline`        ``PipelineResult``
team server             :func:`~.server.serve_team`            ``TeamServer``
======================  =====================================  =====================

The names are imported on first use, so ``import benchmark.stages`` stays cheap.
"""

from __future__ import annotations

import importlib

_HOMES = {
    "prepare_data": "data", "DataResult": "data", "model_split": "data",
    "plan_data": "plan", "PlanResult": "plan",
    "search_and_export": "train", "TrainResult": "train",
    "export_model": "export", "ExportResult": "export",
    "evaluate_study": "evaluate", "EvaluationResult": "evaluate",
    "explain_model": "explanations", "ExplanationResult": "explanations",
    "run_experiments": "experiments", "ExperimentsResult": "experiments", "ExperimentSettings": "experiments",
    "report_study": "report", "ReportResult": "report",
    "predict_cases": "predict", "PredictionResult": "predict",
    "run_pipeline": "pipeline", "PipelineResult": "pipeline",
    "serve_team": "server", "TeamServer": "server",
}
__all__ = sorted(_HOMES)


def __getattr__(name: str):
    if name not in _HOMES:
        raise AttributeError(f"module 'benchmark.stages' has no attribute '{name}'")
    return getattr(importlib.import_module(f"benchmark.stages.{_HOMES[name]}"), name)
