"""Runs left RUNNING by a process that died (SIGKILL, power loss) are ended FAILED at the next start.

A run records which process owns it (tag ``strokelens.worker``: host, pid, process start time).
At its next start a worker asks :func:`fail_stale_runs` to end, as FAILED, every RUNNING run of
the study (``train``) or of its kind (``explain``) whose owner the caller declares dead, and the
nested runs under them, so the MLflow UI never shows a run that nothing will finish.
"""

from __future__ import annotations

import json
from collections.abc import Callable

import mlflow
from mlflow.entities import ViewType
from mlflow.tracking import MlflowClient

from tracking.runs import TAG_KIND, TAG_STUDY, experiment_ids, tracking_uri

TAG_WORKER = "strokelens.worker"


def tag_worker(identity: dict) -> None:
    """Record the owning process on the active run."""
    mlflow.set_tag(TAG_WORKER, json.dumps(identity, sort_keys=True))


def fail_stale_runs(experiment: str, study: str | None, dead: Callable[[dict], bool], also: tuple[str, ...] = (),
                    kind: str | None = None) -> list[str]:
    """End FAILED the RUNNING runs of a study (or of a kind) whose owner is ``dead``, and the runs in ``also``.

    The RUNNING nested runs under each run ended are ended FAILED with it (a killed ``explain``
    leaves its method × filter runs open; they carry no owner of their own).

    Args:
        experiment: the study's MLflow experiment name (its sections' runs are ended too).
        study: the study tag (None: any study).
        dead: called with a run's worker identity; True when that process is gone.
        also: run ids to end FAILED when still RUNNING (e.g. the MLflow runs of trials that the
            search storage has already declared failed).
        kind: the ``strokelens.kind`` tag (``explain``, …; None: any kind).

    Returns:
        The ids of the runs ended now, nested ones included.
    """
    client = MlflowClient(tracking_uri())
    ids = experiment_ids(experiment, kind)
    if not ids:
        return []
    where = ["attributes.status = 'RUNNING'"]
    if study is not None:
        where.append(f"tags.`{TAG_STUDY}` = '{study}'")
    if kind is not None:
        where.append(f"tags.`{TAG_KIND}` = '{kind}'")
    running = client.search_runs(ids, " and ".join(where), run_view_type=ViewType.ACTIVE_ONLY,
                                 max_results=5000)
    ended = []
    for run in running:
        worker = run.data.tags.get(TAG_WORKER)
        if run.info.run_id in also or (worker and dead(json.loads(worker))):
            client.set_terminated(run.info.run_id, "FAILED")
            ended.append(run.info.run_id)
            children = client.search_runs(ids, f"tags.`mlflow.parentRunId` = "
                                          f"'{run.info.run_id}' and attributes.status = 'RUNNING'",
                                          run_view_type=ViewType.ACTIVE_ONLY, max_results=5000)
            for child in children:
                client.set_terminated(child.info.run_id, "FAILED")
                ended.append(child.info.run_id)
    return ended
