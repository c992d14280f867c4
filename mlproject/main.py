"""``mlflow run .`` / ``python -m mlproject.main``: the whole pipeline on one data folder.

Synthetic data when no ``--data`` is given (generated once, then reused) → a summary of the data →
the hyper-parameter search, which saves the study's train/validation split → ONNX export of its
best model, registered as ``strokelens-segmenter@champion`` → the architecture leaderboard's
figures for the best trial of every architecture and the clinical rules, on the split's
validation cases → explanations of the best model by every method under the study's filter
sweep, layer-wise and post-hoc → the leaderboard report. Every flag of ``mlproject.train`` is
accepted too; the stages are :func:`benchmark.stages.pipeline.run_pipeline`'s.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from benchmark.data.defaults import DEFAULT_CASES, DEFAULT_DATA, DEFAULT_SEED
from benchmark.stages.pipeline import DEFAULT_EXPLAIN_FILTERS, run_pipeline
from mlproject._cli import (
    ArgumentParser,
    add_search_arguments,
    auto_int,
    case_spec,
    method_list,
    run,
    search_settings,
    split_list,
)
from tracking.runs import tracking_uri


def main(argv: Sequence[str] | None = None) -> int:
    """Run the pipeline and print each stage's summary as it finishes."""
    parser = ArgumentParser(prog="python -m mlproject.main", description=__doc__)
    parser.add_argument("--data", default="", help=f"data folder; empty: the synthetic default in {DEFAULT_DATA}")
    parser.add_argument("--cases", type=auto_int, default=None,
                        help=f"training cases of the synthetic default when it is generated (default auto: "
                        f"{DEFAULT_CASES}, or what data/synthetic holds; another count than it holds is an error)")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help="seed of the data and the search")
    add_search_arguments(parser, data=False, seed=False)
    parser.add_argument("--explain-methods", default="auto", help="methods explained after the search (all, a comma "
                        "list; auto: the profile's, all but for smoke)")
    parser.add_argument("--explain-filters", default="auto", help="relevance filters of the explanations (auto: the "
                        f"profile's, {','.join(DEFAULT_EXPLAIN_FILTERS)} but raw for smoke)")
    parser.add_argument("--explain-cases", default="auto", help="validation cases explained (a count or case ids; "
                        "auto: the profile's, 2 but 1 for smoke)")
    parser.add_argument("--report-out", default="reports", help="folder that receives the report (<study>/)")
    parser.add_argument("--experiments", action="store_true", help="also run the study's experiments (dilution, "
                        "defects, amplitude, filter box plots, overlays) on the best trial before the report; "
                        "off by default (several minutes on a CPU); mlproject.experiments runs them alone")
    args = parser.parse_args(argv)
    settings = search_settings(args)
    profile = settings.profile
    methods = (list(profile.explain_methods) if profile.explain_methods else None) \
        if args.explain_methods.strip() == "auto" else method_list(args.explain_methods)
    filters = list(profile.explain_filters or DEFAULT_EXPLAIN_FILTERS) if args.explain_filters.strip() == "auto" \
        else split_list(args.explain_filters)
    cases = profile.explain_cases if args.explain_cases.strip() == "auto" else case_spec(args.explain_cases)
    result = run_pipeline(settings, synthetic_cases=args.cases, data_seed=args.seed, top_k=args.top_k,
                          export=not args.no_export, explain_methods=methods, explain_filters=filters,
                          explain_cases=cases, report_out=args.report_out, say=print, experiments=args.experiments)
    if not result.ok:
        return 1
    print(f"compare the runs: mlflow ui --backend-store-uri {tracking_uri()}")
    return 0


if __name__ == "__main__":
    sys.exit(run(main))
