"""``mlflow run .`` / ``python -m mlproject.main``: the whole pipeline on one data folder.

Today: synthetic data when no ``--data`` is given (generated once, then reused) → a summary of the
data → the hyper-parameter search (``mlproject.train``) → ONNX export of its best model, registered
as ``strokelens-segmenter@champion`` (``mlproject.export``) → explanations of the best model
(``mlproject.explain``, every method, unfiltered, two validation cases); the report joins when its
issue lands. Every train flag passes through unchanged.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from benchmark.defaults import DEFAULT_CASES, DEFAULT_DATA, DEFAULT_SEED, ensure_default_data
from benchmark.summary import summarize_dataset
from explain.filters import parse_filters
from mlproject import explain
from mlproject._cli import ArgumentParser, run, split_list
from mlproject.train import parse, search_and_export
from tracking.runs import tracking_uri


def main(argv: Sequence[str] | None = None) -> int:
    """Run the pipeline; unknown flags go to the search (see ``python -m mlproject.train -h``)."""
    parser = ArgumentParser(prog="python -m mlproject.main", description=__doc__)
    parser.add_argument("--data", default="", help=f"data folder; empty: the synthetic default in {DEFAULT_DATA}")
    parser.add_argument("--cases", type=int, default=DEFAULT_CASES,
                        help="training cases of the synthetic default when it is generated")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help="seed of the data and the search")
    parser.add_argument("--explain-methods", default="all", help="methods explained after the search")
    parser.add_argument("--explain-filters", default="raw", help="relevance filters of the explanations")
    parser.add_argument("--explain-cases", default="2", help="validation cases explained")
    args, train_argv = parser.parse_known_args(argv)
    train_args, settings = parse(["--data", args.data, "--seed", str(args.seed), *train_argv])
    explain.parse_methods(args.explain_methods)  # refuse bad explanation settings before a long search
    parse_filters(split_list(args.explain_filters))
    data = args.data
    if not data:
        path, made = ensure_default_data(DEFAULT_DATA, args.cases, args.seed)
        print(f"{'generated' if made else 'reusing'} synthetic data in {path}")
        data = str(path)
    _, lines = summarize_dataset(data, with_baselines=False)
    print("\n".join(lines))
    result = search_and_export(train_args, settings)
    if not result.best_run_id:
        return 1
    explain.main(["--model", result.best_run_id, "--data", data, "--methods", args.explain_methods,
                  "--filters", args.explain_filters, "--cases", args.explain_cases,
                  "--experiment", settings.experiment, "--seed", str(args.seed)])
    print(f"compare the runs: mlflow ui --backend-store-uri {tracking_uri()}")
    return 0


if __name__ == "__main__":
    sys.exit(run(main))
