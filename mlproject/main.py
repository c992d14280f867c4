"""``mlflow run .`` / ``python -m mlproject.main``: the whole pipeline on one data folder.

Synthetic data when no ``--data`` is given (generated once, then reused) → a summary of the data →
the hyper-parameter search (``mlproject.train``) → ONNX export of its best model, registered as
``strokelens-segmenter@champion`` (``mlproject.export``) → the architecture leaderboard's figures
for the best trial of every architecture and the clinical rules (``mlproject.evaluate``) →
explanations of the best model by every method under the study's filter sweep, layer-wise and
post-hoc (``mlproject.explain``) → the leaderboard report (``mlproject.report``). Every train flag
passes through unchanged.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from benchmark.data.defaults import DEFAULT_CASES, DEFAULT_DATA, DEFAULT_SEED, ensure_default_data
from benchmark.evaluation.dataset_summary import summarize_dataset
from explain.filters import parse_filters
from mlproject import evaluate, explain, report
from mlproject._cli import ArgumentParser, run, split_list
from mlproject.train import parse, search_and_export
from tracking.runs import tracking_uri

DEFAULT_FILTERS = "study_sweep,study_sweep_post"


def main(argv: Sequence[str] | None = None) -> int:
    """Run the pipeline; unknown flags go to the search (see ``python -m mlproject.train -h``)."""
    parser = ArgumentParser(prog="python -m mlproject.main", description=__doc__)
    parser.add_argument("--data", default="", help=f"data folder; empty: the synthetic default in {DEFAULT_DATA}")
    parser.add_argument("--cases", type=int, default=DEFAULT_CASES,
                        help="training cases of the synthetic default when it is generated")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help="seed of the data and the search")
    parser.add_argument("--explain-methods", default="all", help="methods explained after the search")
    parser.add_argument("--explain-filters", default=DEFAULT_FILTERS, help="relevance filters of the explanations")
    parser.add_argument("--explain-cases", default="2", help="validation cases explained")
    parser.add_argument("--report-out", default="reports", help="folder that receives the report (<study>/)")
    args, train_argv = parser.parse_known_args(argv)
    train_args, settings = parse(["--data", args.data, "--seed", str(args.seed), *train_argv])
    explain.parse_methods(args.explain_methods)  # refuse bad explanation settings before a long search
    parse_filters(split_list(args.explain_filters))
    data = args.data
    if not data:
        path, made = ensure_default_data(DEFAULT_DATA, args.cases, args.seed)
        print(f"{'generated' if made else 'reusing'} synthetic data in {path}")
        data = str(path)
    _, lines = summarize_dataset(data, with_rules=False)
    print("\n".join(lines))
    result = search_and_export(train_args, settings)
    experiment = result.experiment  # under `mlflow run`, the project run's experiment holds the search
    report_args = ["--study", settings.study, "--experiment", experiment, "--out", args.report_out]
    if not result.best_run_id:  # no trial finished: report what the pruned ones show, then fail
        report.main(report_args)
        return 1
    print(evaluate.evaluate_study(settings.study, experiment, data, seed=args.seed))
    explain.main(["--model", result.best_run_id, "--data", data, "--methods", args.explain_methods,
                  "--filters", args.explain_filters, "--cases", args.explain_cases,
                  "--experiment", experiment, "--seed", str(args.seed)])
    report.main(report_args)
    print(f"compare the runs: mlflow ui --backend-store-uri {tracking_uri()}")
    return 0


if __name__ == "__main__":
    sys.exit(run(main))
