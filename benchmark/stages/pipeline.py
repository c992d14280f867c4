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
from benchmark.stages.explanations import ExplanationResult, best_models, check_methods, explain_model
from benchmark.stages.report import ReportResult, report_study
from benchmark.stages.train import TrainResult, search_and_export
from benchmark.training.search import SearchSettings
from explain.filters import parse_filters

DEFAULT_EXPLAIN_FILTERS = ("raw", "pass_0.2_1", "post_pass_0.2_1")
"""The champion's filters: raw and the study's strongest-relevance pass interval, layer-wise and post-hoc.

Every row now gets region perturbation (the faithfulness that ranks: 8 forward passes, 1.3–2.4 s
per row and case for a width-0.25 U-Net at 48×48×19 on 2 CPU cores), so the study's full sweep
(``study_sweep,study_sweep_post``: 31 filters, about 15 minutes for 13 methods on 2 cases) no
longer fits the default; pass it with ``--explain-filters``."""
OTHER_EXPLAIN_METHODS = ("lrp_epsilon", "lrp_zplus", "lrp_zplus_zbox", "random", "prediction")
"""The methods explained on every other architecture's best trial (among those chosen for the champion):
three LRP variants, the random floor and the prediction reference."""
OTHER_EXPLAIN_FILTERS = ("raw",)
"""The filters of the other architectures: unfiltered only (the methods themselves, compared across architectures)."""


@dataclass
class PipelineResult:
    """Every stage's result; evaluation and explanation are None when no trial finished."""

    data: DataResult
    train: TrainResult
    evaluation: EvaluationResult | None
    explanation: ExplanationResult | None
    report: ReportResult
    experiments: ExperimentsResult | None = None
    other_explanations: list[ExplanationResult] = dataclasses.field(default_factory=list)

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
        explain_methods: methods explained on the champion (None: all); the other architectures' best
            trials get those of :data:`OTHER_EXPLAIN_METHODS` among them.
        explain_filters: relevance filters of the champion's explanations; the other architectures get
            those of :data:`OTHER_EXPLAIN_FILTERS` among them (``raw`` at least), with no randomisation test.
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
    other_explanations: list[ExplanationResult] = []
    if found.best_run_id:  # else no trial finished: report what the pruned ones show
        evaluation = evaluate_study(found.study, found.experiment, data.folder, repeats=search.profile.latency_repeats,
                                    seed=search.seed, split=found.split)
        say(evaluation.line())
        explanation = explain_model(found.best_run_id, data.folder, explain_methods, explain_filters, explain_cases,
                                    found.experiment, seed=search.seed, split=found.split)
        for line in explanation.lines():
            say(line)
        others = _other_settings(explain_methods, explain_filters)
        for architecture, run_id in best_models(found.study, found.experiment).items():
            if run_id == found.best_run_id or architecture == explanation.architecture:
                continue
            other = explain_model(run_id, data.folder, others[0], others[1], explain_cases, found.experiment,
                                  heavy="none", seed=search.seed, split=found.split)
            other_explanations.append(other)
            say(other.lines()[0])
    studied = None
    if experiments and found.best_run_id:
        studied = run_experiments(found.best_run_id, data.folder, experiment=found.experiment, study=found.study,
                                  settings=experiment_settings, seed=search.seed, split=found.split)
        for line in studied.lines():
            say(line)
    report = report_study(found.study, found.experiment, report_out, search.checkpoints, split=found.split)
    for line in report.lines():
        say(line)
    return PipelineResult(data, trained, evaluation, explanation, report, studied, other_explanations)


def _other_settings(methods: Sequence[str] | None, filters: Sequence[str]) -> tuple[list[str], list[str]]:
    """The methods and filters of the other architectures: the defaults' among the champion's."""
    chosen = check_methods(methods)
    names = [f.name for f in parse_filters(list(filters))]
    other_methods = [m for m in OTHER_EXPLAIN_METHODS if m in chosen] or chosen
    return other_methods, [f for f in OTHER_EXPLAIN_FILTERS if f in names] or ["raw"]
