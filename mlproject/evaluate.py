"""``mlflow run . -e evaluate`` / ``python -m mlproject.evaluate``: the figures of the architecture leaderboard.

The best trial of every architecture of a study and the clinical threshold rules, evaluated on the
validation cases of the study's saved split, or, for a study trained with ``--folds``/``--repeats``,
on every labelled case out of fold (see :mod:`benchmark.stages.evaluate`).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from benchmark.stages.evaluate import evaluate_study
from benchmark.training.profiles import DEFAULT_STUDY
from mlproject._cli import ArgumentParser, add_experiment_argument, run


def main(argv: Sequence[str] | None = None) -> int:
    """Evaluate and log; one flag per MLproject parameter."""
    parser = ArgumentParser(prog="python -m mlproject.evaluate", description=__doc__)
    parser.add_argument("--study", default=DEFAULT_STUDY, help=f"the Optuna study whose trials are evaluated "
                        f"(empty: {DEFAULT_STUDY})")
    add_experiment_argument(parser)
    parser.add_argument("--data", default="", help="data folder (default: the one the study's split was made from)")
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats of each latency")
    parser.add_argument("--seed", type=int, default=0, help="seed of the perturbations")
    args = parser.parse_args(argv)
    print(evaluate_study(args.study or DEFAULT_STUDY, args.experiment, args.data, args.repeats, args.seed).line())
    return 0


if __name__ == "__main__":
    sys.exit(run(main))
