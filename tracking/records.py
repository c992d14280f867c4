"""Reading the runs of a study back from MLflow as plain records (what the report and evaluate use).

The run structure is the one :mod:`tracking.runs` writes: runs are found by their tags
``strokelens.kind`` and ``strokelens.study``, never by name, in the experiment that holds their kind
(:func:`tracking.names.experiment_for`) and in the study's experiment itself (older stores). :func:`search_run_of` and
:func:`download_split` bring back the split a model's search logged.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from pathlib import Path

from mlflow.entities import ViewType
from mlflow.tracking import MlflowClient

from tracking.names import base_experiment
from tracking.runs import (
    CASES_TABLE,
    CHECKPOINT_ARTIFACT,
    DEFAULT_EXPERIMENT,
    FILTER_TABLE,
    RESUME_ARTIFACT,
    SPLIT_ARTIFACT,
    STATE_COMPLETE,
    STATE_PRUNED,
    TAG_ARCHITECTURE,
    TAG_KIND,
    TAG_MODEL_RUN,
    TAG_STATE,
    TAG_STUDY,
    experiment_ids,
    tracking_uri,
)


@dataclass
class RunRecord:
    """One MLflow run: ids, status, tags, parameters and final metric values."""

    run_id: str
    name: str
    status: str
    start_time: int
    parent_id: str
    tags: dict = field(default_factory=dict)
    params: dict = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)

    @property
    def kind(self) -> str:
        """The ``strokelens.kind`` tag (search, trial, evaluate, evaluation, baseline, explain, …)."""
        return self.tags.get(TAG_KIND, "")

    @property
    def architecture(self) -> str:
        """The architecture (trials, evaluations) or rule (baselines)."""
        return self.tags.get(TAG_ARCHITECTURE, "")

    @property
    def state(self) -> str:
        """A trial's state tag: complete, pruned or failed."""
        return self.tags.get(TAG_STATE, "")

    @property
    def model_run(self) -> str:
        """The trial run an evaluation or explanation is about."""
        return self.tags.get(TAG_MODEL_RUN, "")

    def metric(self, key: str) -> float:
        """A metric's final value, NaN when absent."""
        return float(self.metrics.get(key, math.nan))


class Store:
    """The runs of one study's experiment and its sections, read by kind and study.

    Args:
        experiment: the study's MLflow experiment name (a section's name, ``strokelens-evaluation``,
            means its study's experiment).

    Attributes:
        experiment_id: the study's experiment's id; None when the experiment does not exist.
    """

    def __init__(self, experiment: str = DEFAULT_EXPERIMENT):
        self.client = MlflowClient(tracking_uri())
        self.experiment = base_experiment(experiment)
        found = self.client.get_experiment_by_name(self.experiment)
        self.experiment_id = found.experiment_id if found else None

    def runs(self, kind: str, study: str | None = None, extra: str = "") -> list[RunRecord]:
        """Active runs of a kind (and study), newest first."""
        if self.experiment_id is None:
            return []
        ids = experiment_ids(self.experiment, kind)
        if not ids:
            return []
        query = f"tags.`{TAG_KIND}` = '{kind}'"
        if study is not None:
            query += f" and tags.`{TAG_STUDY}` = '{study}'"
        if extra:
            query += f" and {extra}"
        found = self.client.search_runs(ids, query, run_view_type=ViewType.ACTIVE_ONLY,
                                        order_by=["attributes.start_time DESC"], max_results=5000)
        return [RunRecord(r.info.run_id, r.info.run_name or "", r.info.status, r.info.start_time or 0,
                          r.data.tags.get("mlflow.parentRunId", ""), dict(r.data.tags), dict(r.data.params),
                          dict(r.data.metrics)) for r in found]

    def children(self, parent: RunRecord, kind: str) -> list[RunRecord]:
        """The nested runs of a kind under a parent run."""
        return self.runs(kind, extra=f"tags.`mlflow.parentRunId` = '{parent.run_id}'")

    def studies(self) -> list[str]:
        """Names of the studies with a search in this experiment, newest first."""
        names: list[str] = []
        for run in self.runs("search"):
            study = run.tags.get(TAG_STUDY, "")
            if study and study not in names:
                names.append(study)
        return names

    def artifacts(self, run_id: str, folder: str = "") -> list[str]:
        """Paths of the files directly under an artifact folder of a run."""
        try:
            return [f.path for f in self.client.list_artifacts(run_id, folder or None) if not f.is_dir]
        except Exception:
            return []

    def download(self, run_id: str, path: str, destination: Path) -> Path | None:
        """An artifact of a run copied under ``destination``, or None when it is missing."""
        return download_artifact(run_id, path, destination)

    def cases_table(self, run_id: str, destination: Path):
        """The run's per-case table (:data:`tracking.runs.CASES_TABLE`) as a DataFrame, or None."""
        import pandas as pd

        path = self.download(run_id, CASES_TABLE, destination / run_id)
        return pd.read_csv(path) if path is not None and path.is_file() else None

    def filter_table(self, run_id: str, destination: Path):
        """An explanation run's per-filter table (:data:`tracking.runs.FILTER_TABLE`) as a DataFrame, or None."""
        import json

        import pandas as pd

        path = self.download(run_id, FILTER_TABLE, destination / run_id)
        if path is None or not path.is_file():
            return None
        try:
            payload = json.loads(path.read_text(encoding="utf-8"))
            table = pd.DataFrame(payload["data"], columns=payload["columns"])
        except (ValueError, KeyError, TypeError):
            return None
        for column in table.columns:
            with contextlib.suppress(ValueError, TypeError):  # a column of words (filter, kind, mode) stays
                table[column] = pd.to_numeric(table[column])
        return table

    def has_checkpoint(self, run_id: str) -> bool:
        """Whether a trial run logged best weights."""
        return CHECKPOINT_ARTIFACT in self.artifacts(run_id, str(Path(CHECKPOINT_ARTIFACT).parent))


def best_trial_per_architecture(trials: list[RunRecord]) -> dict[str, RunRecord]:
    """Per architecture, its trial with the highest ``best_val_dice``: complete trials first, then pruned ones."""
    best: dict[str, RunRecord] = {}
    rank = {STATE_COMPLETE: 1, STATE_PRUNED: 0}
    for trial in trials:
        if trial.state not in rank or math.isnan(trial.metric("best_val_dice")):
            continue
        key = (rank[trial.state], trial.metric("best_val_dice"))
        held = best.get(trial.architecture)
        if held is None or key > (rank[held.state], held.metric("best_val_dice")):
            best[trial.architecture] = trial
    return dict(sorted(best.items()))


def download_artifact(run_id: str, path: str, destination: Path) -> Path | None:
    """An artifact of a run copied under ``destination``, or None when the run or the artifact is missing."""
    import mlflow.artifacts

    destination.mkdir(parents=True, exist_ok=True)
    try:
        return Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=path,
                                                        dst_path=str(destination), tracking_uri=tracking_uri()))
    except Exception:
        return None


def download_resume_point(run_id: str, destination: Path) -> Path | None:
    """A trial run's resume point (:data:`~tracking.runs.RESUME_ARTIFACT`) copied under ``destination``, or None.

    The best weights it had logged (:data:`~tracking.runs.CHECKPOINT_ARTIFACT`) are copied beside it when
    present. None when there is no run id, or the trial was killed before its first epoch (it starts afresh).
    """
    if not run_id:
        return None
    last = download_artifact(run_id, RESUME_ARTIFACT, destination)
    if last is not None:
        best = download_artifact(run_id, CHECKPOINT_ARTIFACT, destination)
        if best is not None and best.parent != last.parent:
            best.replace(last.parent / best.name)
    return last


def download_split(run_id: str, destination: Path) -> Path | None:
    """A run's :data:`SPLIT_ARTIFACT` copied under ``destination``, or None when it has none."""
    import mlflow.artifacts

    try:
        if SPLIT_ARTIFACT not in {f.path for f in MlflowClient(tracking_uri()).list_artifacts(run_id)}:
            return None
        return Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=SPLIT_ARTIFACT,
                                                        dst_path=str(destination), tracking_uri=tracking_uri()))
    except Exception:
        return None


def search_run_of(run_id: str | None) -> str | None:
    """The search run a model belongs to: a trial's parent (an export run leads to its trial first), or None."""
    client = MlflowClient(tracking_uri())
    for _ in range(3):  # export → trial → search
        if not run_id:
            return None
        try:
            tags = client.get_run(run_id).data.tags
        except Exception:
            return None
        kind = tags.get(TAG_KIND)
        if kind == "search":
            return run_id
        run_id = tags.get("mlflow.parentRunId") if kind == "trial" else tags.get(TAG_MODEL_RUN)
    return None
