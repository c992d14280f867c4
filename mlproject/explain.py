"""``mlflow run . -e explain`` / ``python -m mlproject.explain``: explain a trained model, tracked in MLflow.

Every method × filter on a few validation cases of the model's split: one ``explain`` run per
model with one nested MLflow run per method and its filters as a table (see
:mod:`benchmark.stages.explanations`). ``--architectures a,b`` or ``all`` explains the best trial of
each of those architectures of ``--study`` instead of one ``--model``. Finished method × case jobs
are kept in ``--out``; a rerun after a stop reuses them (``--overwrite`` recomputes them).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from benchmark.data.defaults import DEFAULT_DATA
from benchmark.errors import ParameterError
from benchmark.stages.explanations import DEFAULT_OUT, HEAVY_CHOICES, explain_architectures, explain_model
from explain.attribution import methods as all_methods
from mlproject._cli import ArgumentParser, add_experiment_argument, case_spec, method_list, run, split_list


def main(argv: Sequence[str] | None = None) -> int:
    """Explain and log; one flag per MLproject parameter."""
    parser = ArgumentParser(prog="python -m mlproject.explain", description=__doc__)
    parser.add_argument("--model", default="", help="run id, runs:/…, models:/name@alias, or a .pt checkpoint "
                        "(default: the best trial of the latest search)")
    parser.add_argument("--architectures", default="", help="comma list of architectures, or all: explain the best "
                        "trial of each in --study (instead of --model)")
    parser.add_argument("--study", default="", help="the study whose trials --architectures picks from (default: "
                        "the newest search's)")
    parser.add_argument("--data", default="", help="data folder (default: the one the model's split was made from, "
                        f"else the synthetic default, {DEFAULT_DATA})")
    parser.add_argument("--methods", default="all", help=f"comma list or all: {', '.join(all_methods())}")
    parser.add_argument("--filters", default="raw", help="comma list: raw, pass_A_B, clamp_A_B, post_…, study_sweep")
    parser.add_argument("--cases", default="2", help="how many validation cases, or a comma list of case ids")
    add_experiment_argument(parser)
    parser.add_argument("--heavy", default="raw", choices=HEAVY_CHOICES,
                        help="where to run the randomisation test (three more explanations per row); "
                        "faithfulness runs on every row")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(DEFAULT_OUT), help="folder that keeps finished method × case jobs "
                        "(relevance NIfTI, PNG, metrics JSON) so that a rerun after a stop reuses them")
    parser.add_argument("--overwrite", action="store_true", help="recompute jobs already complete in --out")
    args = parser.parse_args(argv)
    settings = {"data": args.data, "methods": method_list(args.methods), "filters": split_list(args.filters),
                "cases": case_spec(args.cases), "heavy": args.heavy, "seed": args.seed, "out": args.out,
                "overwrite": args.overwrite}
    architectures = split_list(args.architectures)
    if architectures and args.model:
        raise ParameterError("--model and --architectures both choose the model: pass one of them")
    if architectures:
        results = explain_architectures(args.study, args.experiment, architectures, **settings)
    else:
        results = [explain_model(args.model, experiment=args.experiment, **settings)]
    for result in results:
        print("\n".join(result.lines()))
    return 0


if __name__ == "__main__":
    sys.exit(run(main))
