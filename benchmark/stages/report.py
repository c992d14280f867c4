"""The report stage: the leaderboard report of a study, written to disk and logged to MLflow.

Reads the study's search, trials, evaluation and explanations from MLflow, writes
``<out>/<study>/leaderboard.html`` (self-contained), ``leaderboard.md``, the tables as CSV and the
figures, adds the study's saved split (``split.json``: which cases the validation figures are
computed on), and logs them as artifacts of a ``report-<study>`` run. Each run it ranks gets its
rank back as metrics (:func:`benchmark.reporting.leaderboard.leaderboard_ranks`: ``rank`` on the
evaluation, clinical-rule and explanation runs, ``rank_raw`` and ``architecture_rank`` on the
explanation runs, ``leaderboard_rank`` on each architecture's trial) and the tag
``strokelens.ranked_by`` naming the report run. An evaluation made on another split
than the study's is named among the missing pieces. The exit status is non-zero only when there
is nothing to report.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from benchmark.data.splits import SPLIT_FILE, Split
from benchmark.errors import DataError
from benchmark.reporting.leaderboard import leaderboard_ranks
from benchmark.reporting.report import build_report
from benchmark.training.profiles import experiment_of
from benchmark.training.search import DEFAULT_CHECKPOINTS, study_split
from tracking import runs as tracking
from tracking.records import Store


@dataclass
class ReportResult:
    """What the report stage wrote and logged.

    Attributes:
        folder: ``<out>/<study>/``.
        run_id: the ``report-<study>`` run.
        architectures: rows of the architecture table.
        explanations: rows of the explanation table.
        missing: plain sentences saying what is missing and why.
        split_digest: the digest of the study's split ("" when none was found).
    """

    folder: Path
    run_id: str
    architectures: int
    explanations: int
    missing: list[str] = field(default_factory=list)
    split_digest: str = ""

    def lines(self) -> list[str]:
        """The summary lines the command line prints."""
        return [f"missing: {line}" for line in self.missing] + [
            f"report: {self.folder / 'leaderboard.html'} ({self.architectures} architecture rows, "
            f"{self.explanations} explanation rows; logged under MLflow run {self.run_id})"]


def _split_notes(store: Store, study: str, split: Split | None) -> list[str]:
    """What the report cannot vouch for: no saved split, or an evaluation made on another one."""
    if split is None:
        return [f"study '{study}' has no saved split: the report cannot name its validation cases; resume its "
                "search once to save it"]
    evaluate = [r for r in store.runs("evaluate", study) if r.status == "FINISHED"]
    if evaluate and evaluate[0].params.get("split") != split.digest:
        return [f"the evaluation (MLflow run {evaluate[0].run_id}) was not made on the study's split "
                f"{split.digest}: run mlflow run . -e evaluate -P study={study} again"]
    return []


def report_study(study: str, experiment: str = "", out: str | Path = "reports",
                 checkpoints: str | Path = DEFAULT_CHECKPOINTS, split: Split | None = None) -> ReportResult:
    """Build, write and log the report of a study.

    Args:
        study: the study tag of the runs.
        experiment: the MLflow experiment (empty: the project run's under ``mlflow run``, else ``strokelens``).
        out: the folder that receives ``<study>/``.
        checkpoints: where the study's split lies when MLflow holds none.
        split: the study's split, when the caller has it (else it is read from MLflow or ``checkpoints``).

    Raises:
        DataError: there is nothing to report.
    """
    experiment = experiment or tracking.default_experiment(experiment_of(study))
    report = build_report(study, experiment, out)  # before setup, which would create the experiment
    store = Store(experiment)
    missing = list(report.missing)
    try:
        split = split or study_split(study, experiment, checkpoints)
    except DataError as exc:
        missing.append(str(exc))
        split = None
    missing += _split_notes(store, study, split)
    files = list(report.files)
    if split is not None:
        files.append(split.save(report.folder / SPLIT_FILE))
    tracking.setup(experiment)
    params = {"study": study, "out": str(report.folder), "split": split.digest if split is not None else ""}
    with tracking.report_run(study, params) as parent:
        tracking.log_artifacts([p for p in files if p.parent == report.folder], "report")
        tracking.log_artifacts([p for p in files if p.parent != report.folder], "report/figures")
        tracking.log_summary({"architectures": len(report.architectures), "explanations": len(report.explanations),
                              "missing": len(missing)})
    tracking.log_ranks(leaderboard_ranks(report.architectures, report.explanations),
                       {tracking.TAG_RANKED_BY: parent.info.run_id})
    return ReportResult(report.folder, parent.info.run_id, len(report.architectures), len(report.explanations),
                        missing, split.digest if split is not None else "")
