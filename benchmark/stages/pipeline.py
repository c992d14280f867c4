"""The whole pipeline on one data folder: data → search → export → evaluate → explain → (experiments) → report.

The study's experiments (:mod:`benchmark.stages.experiments`) are off by default: with their CPU
defaults they add several minutes to ``make run``; ``experiments=True`` (``--experiments``) runs them
on the best trial before the report, which then shows them.

Each stage's result feeds the next: the search's experiment, study, split and best trial go to
the export, the evaluation, the explanation and the report; nothing is handed on through the
command line or the environment.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from benchmark.data.defaults import DEFAULT_SEED
from benchmark.stages.data import DataResult, prepare_data
from benchmark.stages.evaluate import EvaluationResult, evaluate_study
from benchmark.stages.experiments import ExperimentSettings, ExperimentsResult, run_experiments
from benchmark.stages.explanations import ExplanationResult, check_methods, explain_model
from benchmark.stages.report import ReportResult, report_study
from benchmark.stages.train import TrainResult, search_and_export
from benchmark.training.search import SearchSettings
from explain.filters import parse_filters

DEFAULT_EXPLAIN_FILTERS = ("study_sweep", "study_sweep_post")
"""The study's filter sweep, layer-wise and post-hoc."""


@dataclass
class PipelineResult:
    """Every stage's result; evaluation and explanation are None when no trial finished."""

    data: DataResult
    train: TrainResult
    evaluation: EvaluationResult | None
    explanation: ExplanationResult | None
    report: ReportResult
    experiments: ExperimentsResult | None = None

    @property
    def ok(self) -> bool:
        """Whether a trial finished (else the report shows what the pruned ones did)."""
        return self.train.search.best_run_id is not None


def run_pipeline(search: SearchSettings, synthetic_cases: int | None = None, data_seed: int = DEFAULT_SEED,
                 top_k: int = 1, export: bool = True, explain_methods: Sequence[str] | None = None,
                 explain_filters: Sequence[str] = DEFAULT_EXPLAIN_FILTERS, explain_cases: int | Sequence[str] = 2,
                 report_out: str | Path = "reports", say: Callable[[str], None] | None = None,
                 experiments: bool = False, experiment_settings: ExperimentSettings | None = None) -> PipelineResult:
    """Run every stage in order; bad explanation settings are refused before the long search.

    Args:
        search: the search's settings; ``search.data`` equal to the synthetic default's path (or
            empty) means the synthetic default, generated once with ``synthetic_cases`` cases and ``data_seed``.
        synthetic_cases: training cases of the synthetic default when it is generated (None: the
            existing default's, else :data:`~benchmark.data.defaults.DEFAULT_CASES`).
        data_seed: random seed of the synthetic default when it is generated.
        top_k: how many best trials to export (the best becomes the champion).
        export: export at all.
        explain_methods: methods explained (None: all).
        explain_filters: relevance filters of the explanations.
        explain_cases: how many validation cases to explain, or their ids.
        report_out: the folder that receives ``<study>/``.
        say: receives each summary line as soon as it is known (e.g. ``print``).
        experiments: run the study's experiments on the best trial before the report (off by default).
        experiment_settings: their settings (default :class:`~benchmark.stages.experiments.ExperimentSettings`).
    """
    say = say or (lambda line: None)
    check_methods(explain_methods)
    parse_filters(list(explain_filters))
    if experiments:
        (experiment_settings or ExperimentSettings()).check()
    data = prepare_data(search.data, synthetic_cases, data_seed)
    for line in data.lines():
        say(line)
    trained = search_and_export(dataclasses.replace(search, data=data.folder), top_k, export, say)
    found = trained.search
    evaluation = explanation = None
    if found.best_run_id:  # else no trial finished: report what the pruned ones show
        evaluation = evaluate_study(found.study, found.experiment, data.folder, seed=search.seed, split=found.split)
        say(evaluation.line())
        explanation = explain_model(found.best_run_id, data.folder, explain_methods, explain_filters, explain_cases,
                                    found.experiment, seed=search.seed, split=found.split)
        for line in explanation.lines():
            say(line)
    studied = None
    if experiments and found.best_run_id:
        studied = run_experiments(found.best_run_id, data.folder, experiment=found.experiment, study=found.study,
                                  settings=experiment_settings, seed=search.seed, split=found.split)
        for line in studied.lines():
            say(line)
    report = report_study(found.study, found.experiment, report_out, search.checkpoints, split=found.split)
    for line in report.lines():
        say(line)
    return PipelineResult(data, trained, evaluation, explanation, report, studied)
