"""``mlflow run . -e experiments`` / ``python -m mlproject.experiments``: the study's experiments, tracked in MLflow.

Dilution curves, lesion-like defects, the normalised-mean relevance amplitude by channel, the
filter box plots and raw-vs-filtered overlays on a trained model, one nested MLflow run each
(see :mod:`benchmark.stages.experiments`); ``mlflow run . -e report`` shows them.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from benchmark.evaluation.dilution import DEFAULT_LEVELS, STUDY_DRAWS
from benchmark.stages.experiments import EXPERIMENTS, ExperimentSettings, run_experiments
from benchmark.training.profiles import DEFAULT_STUDY
from mlproject._cli import ArgumentParser, add_experiment_argument, case_spec, method_list, run, split_list


def _levels(text: str) -> tuple[float, ...]:
    """Argparse type: ``'0,0.1,0.2'`` → (0.0, 0.1, 0.2); empty → () (the kind is left out)."""
    try:
        return tuple(float(v) for v in split_list(text))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"'{text}' is not a comma list of numbers") from exc


def _joined(values: Sequence[float]) -> str:
    return ",".join(f"{v:g}" for v in values)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the experiments and log them; one flag per MLproject parameter."""
    parser = ArgumentParser(prog="python -m mlproject.experiments", description=__doc__)
    parser.add_argument("--model", default="", help="run id, runs:/…, models:/name@alias or a .pt checkpoint "
                        "(default: the best trial of --study's latest search)")
    parser.add_argument("--study", default=DEFAULT_STUDY, help="the study whose best trial is used and whose report "
                        f"shows the results (empty: {DEFAULT_STUDY})")
    parser.add_argument("--data", default="", help="data folder (default: the one the model's split was made from)")
    parser.add_argument("--cases", default="3", help="how many cases (validation first), or a comma list of case ids")
    add_experiment_argument(parser)
    parser.add_argument("--experiments", default="all", help=f"comma list or all: {', '.join(EXPERIMENTS)}")
    parser.add_argument("--draws", type=int, default=5, help=f"dilution draws per case and level (the study: "
                        f"{STUDY_DRAWS})")
    for kind in ("noise", "zero", "smooth", "study_noise"):
        default = _joined(DEFAULT_LEVELS.get(kind, ()))
        parser.add_argument(f"--{kind.replace('_', '-')}-levels", type=_levels, default=_levels(default),
                            help=f"dilution levels of {kind} (comma list; empty leaves it out; default '{default}')")
    parser.add_argument("--defect-ml", type=_levels, default=(2.0, 8.0), help="defect sizes in ml (comma list)")
    parser.add_argument("--defects-per-size", type=int, default=2, help="defects per case and size")
    parser.add_argument("--defect-epochs", type=int, default=2, help="epochs fine-tuning a copy of the model on "
                        "defect data (0: no defect-trained model)")
    parser.add_argument("--methods", default="all", help="LRP methods of the relevance experiments (comma list or all)")
    parser.add_argument("--sweep-methods", default="auto", help="LRP methods run through every filter of the sweep "
                        "(box plots, overlays; comma list); auto: reference_lrp on the study's network, else "
                        "study_published")
    parser.add_argument("--defect-method", default="lrp_epsilon", help="the LRP method of the defect experiment")
    parser.add_argument("--filters", default="study_sweep", help="filters of the sweep: raw, pass_A_B, clamp_A_B, "
                        "post_…, study_sweep, study_sweep_post")
    parser.add_argument("--overlay-method", default="", help="the overlay's method (default: the first method)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    levels = {kind: getattr(args, f"{kind}_levels") for kind in ("noise", "study_noise", "zero", "smooth")}
    sweep = None if args.sweep_methods == "auto" else split_list(args.sweep_methods)
    settings = ExperimentSettings(draws=args.draws, levels={k: v for k, v in levels.items() if v},
                                  defect_ml=args.defect_ml, defects_per_size=args.defects_per_size,
                                  defect_epochs=args.defect_epochs, methods=method_list(args.methods),
                                  sweep_methods=sweep,
                                  defect_method=args.defect_method, filters=split_list(args.filters),
                                  overlay_method=args.overlay_method)
    which = list(EXPERIMENTS) if args.experiments.strip() in ("", "all") else split_list(args.experiments)
    result = run_experiments(args.model, args.data, case_spec(args.cases), args.experiment,
                             args.study or DEFAULT_STUDY, which, settings, args.seed)
    print("\n".join(result.lines()))
    return 0


if __name__ == "__main__":
    sys.exit(run(main))
