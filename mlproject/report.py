"""``mlflow run . -e report`` / ``python -m mlproject.report``: the leaderboard report of a study.

Reads the study's search, trials, evaluation and explanations from MLflow, writes
``reports/<study>/leaderboard.html`` (self-contained), ``leaderboard.md``, the tables as CSV and
the figures, and logs them as artifacts of a ``report-<study>`` run. What is missing is said
plainly; the exit status is non-zero only when there is nothing to report.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from benchmark.reporting.report import build_report
from mlproject._cli import ArgumentParser, add_experiment_argument, experiment_of, run
from tracking import runs as tracking


def main(argv: Sequence[str] | None = None) -> int:
    """Build, write and log the report."""
    parser = ArgumentParser(prog="python -m mlproject.report", description=__doc__)
    parser.add_argument("--study", default="strokelens", help="the Optuna study (and MLflow study tag) to report")
    add_experiment_argument(parser)
    parser.add_argument("--out", default="reports", help="folder that receives <study>/")
    args = parser.parse_args(argv)
    experiment = experiment_of(args)
    report = build_report(args.study, experiment, args.out)  # before setup, which would create the experiment
    tracking.setup(experiment)
    with tracking.report_run(args.study, {"study": args.study, "out": str(report.folder)}) as parent:
        tracking.log_artifacts([p for p in report.files if p.parent == report.folder], "report")
        tracking.log_artifacts([p for p in report.files if p.parent != report.folder], "report/figures")
        tracking.log_summary({"architectures": len(report.architectures), "explanations": len(report.explanations),
                              "missing": len(report.missing)})
    for line in report.missing:
        print(f"missing: {line}")
    print(f"report: {report.folder / 'leaderboard.html'} ({len(report.architectures)} architecture rows, "
          f"{len(report.explanations)} explanation rows; logged under MLflow run {parent.info.run_id})")
    return 0


if __name__ == "__main__":
    sys.exit(run(main))
