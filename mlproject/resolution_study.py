"""``python -m mlproject.resolution_study``: the same network at the study's grids and at native resolution.

Trains one configuration per setting and scores them on the same cases; see
:mod:`benchmark.stages.resolution`. Example (the CPU default: 48×48×19, 96×96×19 and native)::

    python -m mlproject.resolution_study --epochs 24
    python -m mlproject.resolution_study --grids 48x48x19,96x96x19,144x144x19,192x192x19   # the study's four
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from benchmark.stages.resolution import run_resolution_study
from benchmark.training.profiles import DEFAULT_PROFILE, PROFILES
from benchmark.training.resolution import StudyTraining, parse_grid
from mlproject._cli import ArgumentParser, run


def main(argv: Sequence[str] | None = None) -> int:
    """Train and score every setting and print one line per setting and the verdict."""
    defaults = StudyTraining()
    parser = ArgumentParser(prog="python -m mlproject.resolution_study", description=__doc__)
    parser.add_argument("--data", default="", help="data folder (default: the synthetic default data set)")
    parser.add_argument("--study", default=PROFILES[DEFAULT_PROFILE].study,
                        help="the study whose saved split and plan are used, when it has them (default: make run's)")
    parser.add_argument("--experiment", default="", help="MLflow experiment (default: the project's)")
    parser.add_argument("--grids", default="",
                        help="comma-separated seed grids X x Y x Z (default: 48x48x19,96x96x19 on a CPU, the study's "
                             "four on a GPU)")
    parser.add_argument("--no-native", action="store_true", help="leave out the native setting")
    parser.add_argument("--plan", default=None, help="plan.json for the native setting (default: the study's, or new)")
    parser.add_argument("--architecture", default=defaults.architecture)
    parser.add_argument("--width", type=float, default=defaults.width)
    parser.add_argument("--epochs", type=int, default=defaults.epochs)
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size)
    parser.add_argument("--lr", type=float, default=defaults.lr)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--device", default=defaults.device, help="cpu, cuda or auto")
    parser.add_argument("--checkpoints", default="checkpoints")
    args = parser.parse_args(argv)
    grids = [parse_grid(g) for g in args.grids.split(",") if g.strip()] or None
    training = StudyTraining(architecture=args.architecture, width=args.width, epochs=args.epochs,
                             batch_size=args.batch_size, lr=args.lr, seed=args.seed, device=args.device)
    result = run_resolution_study(args.data, args.study, args.experiment, grids, not args.no_native, args.plan,
                                  training, args.checkpoints)
    print("\n".join(result.lines()))
    return 0


if __name__ == "__main__":
    sys.exit(run(main))
