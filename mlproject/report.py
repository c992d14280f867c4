"""``mlflow run . -e report`` / ``python -m mlproject.report``: the leaderboard report of a study.

Reads the study's runs from MLflow, writes ``reports/<study>/`` (``leaderboard.html``,
``leaderboard.md``, CSV tables, figures, the study's ``split.json``) and logs it under a
``report-<study>`` run (see :mod:`benchmark.stages.report`). What is missing is said plainly;
the exit status is non-zero only when there is nothing to report.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from benchmark.stages.report import report_study
from benchmark.training.profiles import DEFAULT_STUDY
from mlproject._cli import ArgumentParser, add_experiment_argument, run


def main(argv: Sequence[str] | None = None) -> int:
    """Build, write and log the report."""
    parser = ArgumentParser(prog="python -m mlproject.report", description=__doc__)
    parser.add_argument("--study", default=DEFAULT_STUDY, help=f"the Optuna study (and MLflow study tag) to "
                        f"report (empty: {DEFAULT_STUDY})")
    add_experiment_argument(parser)
    parser.add_argument("--out", default="reports", help="folder that receives <study>/")
    args = parser.parse_args(argv)
    print("\n".join(report_study(args.study or DEFAULT_STUDY, args.experiment, args.out).lines()))
    return 0


if __name__ == "__main__":
    sys.exit(run(main))
