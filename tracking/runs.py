"""MLflow conventions: store, experiment, run names, tags, and what each run logs.

This is the only module that knows MLflow's names and the run structure:

* store: ``MLFLOW_TRACKING_URI`` when set, else ``sqlite:///mlflow.db`` (the file store is
  refused by MLflow 3). The database is created under a file lock before any worker uses it,
  because concurrent first migrations crash.
* inside ``mlflow run`` (``MLFLOW_RUN_ID`` set) the project's run is the parent and its
  experiment is used; elsewhere the experiment is the ``experiment`` argument.
* a search is one parent run (``search-<study>``, tag ``strokelens.kind=search``) with one
  nested child run per Optuna trial (``trial-<NNN>-<architecture>``, ``strokelens.kind=trial``,
  ``strokelens.state`` = complete / pruned / failed).
* ``export-<run>`` (kind ``export``) holds an ONNX model; ``evaluate-<study>`` (kind
  ``evaluate``) has one nested ``evaluation-<architecture>`` and one ``baseline-<rule>`` run;
  ``explain-<run>`` (kind ``explain``) has one nested ``<method>-<filter>`` run (kind
  ``explanation``); ``report-<study>`` (kind ``report``) holds the leaderboard. Runs of a study
  carry ``strokelens.study``; evaluations and explanations name their trial in
  ``strokelens.model_run``. :mod:`tracking.records` reads them back.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import mlflow
from mlflow.tracking import MlflowClient

from tracking.errors import TrackingError
from tracking.locks import sqlite_lock

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
DEFAULT_EXPERIMENT = "strokelens"

TAG_KIND = "strokelens.kind"
TAG_STUDY = "strokelens.study"
TAG_STATE = "strokelens.state"
TAG_TRIAL = "strokelens.trial"
TAG_ARCHITECTURE = "strokelens.architecture"
TAG_PROFILE = "strokelens.profile"
TAG_BEST_RUN = "strokelens.best_trial_run"
TAG_MODEL_RUN = "strokelens.model_run"

STATE_COMPLETE, STATE_PRUNED, STATE_FAILED = "complete", "pruned", "failed"

CHECKPOINT_ARTIFACT = "checkpoint/best.pt"
"""Where a trial run keeps its best weights (state_dict + build config, ``weights_only``)."""
PREPROCESS_ARTIFACT = "checkpoint/preprocess.json"
"""The preprocessing settings the weights expect."""


def tracking_uri() -> str:
    """``MLFLOW_TRACKING_URI`` if set, else the project's SQLite default."""
    return os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI


def setup(experiment: str = DEFAULT_EXPERIMENT) -> str:
    """Point MLflow at the store, create it and the experiment once; returns the experiment id.

    Raises:
        TrackingError: the store cannot be opened.
    """
    uri = tracking_uri()
    mlflow.set_tracking_uri(uri)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # one bar per checkpoint read is noise
    for name in ("mlflow.store.db.utils", "alembic"):  # schema set-up chatter, not the user's business
        logging.getLogger(name).setLevel(logging.WARNING)
    try:
        with sqlite_lock(uri):
            client = MlflowClient(uri)
            found = client.get_experiment_by_name(experiment)
            experiment_id = found.experiment_id if found else client.create_experiment(experiment)
    except Exception as exc:
        raise TrackingError(f"cannot open the MLflow store '{uri}' ({type(exc).__name__}: "
                             f"{str(exc).splitlines()[0] if str(exc) else ''}): set MLFLOW_TRACKING_URI "
                             "to a reachable store, e.g. sqlite:///mlflow.db") from exc
    project_run = os.environ.get("MLFLOW_RUN_ID")
    if project_run:  # inside `mlflow run`: its run becomes the parent, in its experiment
        experiment_id = MlflowClient(uri).get_run(project_run).info.experiment_id
    mlflow.set_experiment(experiment_id=experiment_id)
    return experiment_id


def default_experiment() -> str:
    """Under ``mlflow run`` the project run's experiment (where its stages log), else ``strokelens``."""
    project_run = os.environ.get("MLFLOW_RUN_ID")
    if project_run:
        try:
            return experiment_name(MlflowClient(tracking_uri()).get_run(project_run).info.experiment_id)
        except Exception:
            return DEFAULT_EXPERIMENT
    return DEFAULT_EXPERIMENT


def experiment_name(experiment_id: str) -> str:
    """The name of an experiment given its id."""
    return MlflowClient(tracking_uri()).get_experiment(experiment_id).name


def search_run_name(study: str) -> str:
    """Name of the parent run of a search."""
    return f"search-{study}"


def trial_run_name(number: int, architecture: str) -> str:
    """Name of a trial's nested run."""
    return f"trial-{number:03d}-{architecture}"


@contextlib.contextmanager
def search_run(study: str, params: dict, profile: str) -> Iterator[mlflow.ActiveRun]:
    """The parent run of one search invocation; FAILED if the block raises (Ctrl-C included)."""
    with _stage_run("search", search_run_name(study), params, {TAG_STUDY: study, TAG_PROFILE: profile}) as run:
        yield run


@contextlib.contextmanager
def _stage_run(kind: str, name: str, params: dict, tags: dict) -> Iterator[mlflow.ActiveRun]:
    """A top-level run of one pipeline stage (search, explain, export); FAILED if the block raises.

    The name is also set as a tag, so a run that ``mlflow run`` started for the stage gets it too.
    """
    with mlflow.start_run(run_name=name) as run:
        mlflow.set_tags({TAG_KIND: kind, "mlflow.runName": name, **tags})
        log_params_once(params)
        yield run


@contextlib.contextmanager
def _nested_run(kind: str, name: str, params: dict, tags: dict) -> Iterator[mlflow.ActiveRun]:
    """A nested run of kind ``kind`` under the active run, with its tags and parameters."""
    with mlflow.start_run(run_name=name, nested=True) as run:
        mlflow.set_tags({TAG_KIND: kind, **tags})
        mlflow.log_params(params)
        yield run


def log_params_once(params: dict) -> None:
    """Log parameters on the active run without clashing with `mlflow run`'s own.

    A key that `mlflow run` already logged with another value (``trials=auto`` → 6) is logged
    again as ``resolved_<key>``.
    """
    existing = mlflow.get_run(mlflow.active_run().info.run_id).data.params
    fresh = {}
    for key, value in params.items():
        if key not in existing:
            fresh[key] = value
        elif existing[key] != str(value):
            fresh[f"resolved_{key}"] = value
    if fresh:
        mlflow.log_params(fresh)


@contextlib.contextmanager
def trial_run(study: str, number: int, architecture: str, params: dict) -> Iterator[mlflow.ActiveRun]:
    """A nested child run for one trial; its state tag is ``failed`` unless set otherwise."""
    tags = {TAG_STUDY: study, TAG_TRIAL: str(number), TAG_ARCHITECTURE: architecture, TAG_STATE: STATE_FAILED}
    with _nested_run("trial", trial_run_name(number, architecture), params, tags) as run:
        yield run


def set_state(state: str) -> None:
    """Tag the active run with its trial state (complete / pruned / failed)."""
    mlflow.set_tag(TAG_STATE, state)


def log_epoch(row: dict) -> None:
    """Log one epoch's metrics (``train_loss``, ``val_dice``, …) at ``step = epoch``."""
    metrics = {k: float(v) for k, v in row.items() if k != "epoch"}
    mlflow.log_metrics(metrics, step=int(row["epoch"]))


def log_summary(metrics: dict) -> None:
    """Log final values (no step) on the active run."""
    mlflow.log_metrics({k: float(v) for k, v in metrics.items()})


def log_checkpoint(checkpoint: Path, preprocess: dict) -> None:
    """Log the best weights and the preprocessing settings as the run's checkpoint artifacts."""
    mlflow.log_artifact(str(checkpoint), artifact_path=Path(CHECKPOINT_ARTIFACT).parent.as_posix())
    mlflow.log_dict(preprocess, PREPROCESS_ARTIFACT)


def log_figures(paths: list[Path], folder: str = "figures") -> None:
    """Log PNG files under ``folder``."""
    for path in paths:
        mlflow.log_artifact(str(path), artifact_path=folder)


def log_best_trial(run_id: str, number: int, params: dict, metrics: dict) -> None:
    """Give the parent run the best trial's metrics, parameters and a pointer to its run."""
    mlflow.set_tag(TAG_BEST_RUN, run_id)
    mlflow.log_metrics({f"best_{k}": float(v) for k, v in metrics.items()})
    mlflow.log_dict({"run_id": run_id, "trial": number, "params": params, "metrics": metrics},
                    "best_trial.json")


def best_epoch_metrics(run_id: str) -> dict:
    """A trial run's validation metrics at its best epoch, its parameter count and seconds per epoch."""
    client = MlflowClient(tracking_uri())
    run = client.get_run(run_id)
    best_epoch = int(run.data.metrics.get("best_epoch", -1))
    out = {"val_dice": run.data.metrics.get("best_val_dice", float("nan"))}
    for key in ("val_hd95", "val_assd", "val_volume_diff_ml", "val_precision", "val_recall", "val_lesion_f1"):
        at_best = [m.value for m in client.get_metric_history(run_id, key) if m.step == best_epoch]
        if at_best:
            out[key] = at_best[-1]
    out["param_count"] = run.data.metrics.get("param_count", float("nan"))
    out["seconds_per_epoch"] = run.data.metrics.get("seconds_per_epoch", float("nan"))
    return out


def latest_best_trial_run(experiment: str = DEFAULT_EXPERIMENT) -> str | None:
    """The run id of the best trial recorded by the latest finished search, or None."""
    client = MlflowClient(tracking_uri())
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return None
    runs = client.search_runs([found.experiment_id], f"tags.`{TAG_KIND}` = 'search'",
                              order_by=["attributes.start_time DESC"], max_results=20)
    for run in runs:
        best = run.data.tags.get(TAG_BEST_RUN)
        if best:
            return best
    return None


def dumps(value) -> str:
    """JSON for a tag or parameter value."""
    return json.dumps(value, sort_keys=True)


def resolve_model(reference: str, experiment: str = DEFAULT_EXPERIMENT) -> tuple[Path, dict | None, str | None]:
    """Find a trained model's checkpoint from what a user gives.

    Args:
        reference: ``""`` (the best trial of the latest search), an MLflow run id or
            ``runs:/<id>``, ``models:/<name>@<alias>`` or ``models:/<name>/<version>`` (the
            version's source run), or a path to a ``.pt`` checkpoint (``preprocess.json`` beside
            it is used when present).
        experiment: where to look for the latest search.

    Returns:
        (local checkpoint path, preprocessing settings or None, run id or None).

    Raises:
        TrackingError: the reference does not resolve.
    """
    import mlflow.artifacts

    client = MlflowClient(tracking_uri())
    path = Path(reference)
    if reference and (path.suffix == ".pt" or path.exists()):
        if not path.is_file():
            raise TrackingError(f"model checkpoint '{reference}' does not exist: give a .pt written by training")
        sidecar = path.with_name("preprocess.json")
        return path, json.loads(sidecar.read_text()) if sidecar.is_file() else None, None
    run_id = reference
    try:
        if not reference:
            run_id = latest_best_trial_run(experiment)
            if run_id is None:
                raise TrackingError(f"no finished search in MLflow experiment '{experiment}' ({tracking_uri()}): "
                                     "run mlflow run . -e train first or pass model=<run id | models:/… | .pt>")
        elif reference.startswith("runs:/"):
            run_id = reference[len("runs:/"):].split("/")[0]
        elif reference.startswith("models:/"):
            spec = reference[len("models:/"):]
            if "@" in spec:
                name, alias = spec.split("@", 1)
                run_id = client.get_model_version_by_alias(name, alias).run_id
            else:
                name, version = spec.rsplit("/", 1)
                run_id = client.get_model_version(name, version).run_id
        folder = Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="checkpoint",
                                                          tracking_uri=tracking_uri()))
    except TrackingError:
        raise
    except Exception as exc:
        raise TrackingError(f"model '{reference or run_id}' does not resolve ({type(exc).__name__}: "
                             f"{str(exc).splitlines()[0] if str(exc) else ''}): give a run id with a checkpoint, "
                             "a models:/ URI or a .pt path") from exc
    checkpoint = folder / Path(CHECKPOINT_ARTIFACT).name
    if not checkpoint.is_file():
        raise TrackingError(f"run {run_id} has no {CHECKPOINT_ARTIFACT}: give a trial run of a search")
    preprocess = folder / Path(PREPROCESS_ARTIFACT).name
    return checkpoint, json.loads(preprocess.read_text()) if preprocess.is_file() else None, run_id


@contextlib.contextmanager
def explain_run(model_run: str | None, params: dict) -> Iterator[mlflow.ActiveRun]:
    """The parent run of one ``explain`` invocation; FAILED if the block raises."""
    name = f"explain-{model_run[:8]}" if model_run else "explain"
    tags = {TAG_MODEL_RUN: model_run or "", TAG_STUDY: study_of(model_run)}
    with _stage_run("explain", name, params, tags) as run:
        yield run


@contextlib.contextmanager
def explanation_run(method: str, filter_name: str, params: dict) -> Iterator[mlflow.ActiveRun]:
    """A nested run for one method × filter, so the MLflow UI compares them."""
    tags = {"strokelens.method": method, "strokelens.filter": filter_name}
    with _nested_run("explanation", f"{method}-{filter_name}", params, tags) as run:
        yield run


def log_artifacts(paths: list[Path], folder: str) -> None:
    """Log files under an artifact folder of the active run."""
    for path in paths:
        mlflow.log_artifact(str(path), artifact_path=folder)


REGISTERED_MODEL = "strokelens-segmenter"
CHAMPION_ALIAS = "champion"
ONNX_ARTIFACT = "onnx-model"


def log_onnx_model(onnx_path: Path, sidecar: Path, channels: int, register: bool = True,
                   champion: bool = True) -> tuple[str, str | None]:
    """Log an exported model with ``mlflow.onnx.log_model``, register it, and make it the champion.

    The signature takes (-1, C, -1, -1, -1) float32 ``image`` and gives (-1, 2, -1, -1, -1)
    ``logits``; execution providers are CUDA then CPU; the preprocessing JSON travels inside the
    MLflow model (``extra_files``). The alias ``champion`` moves to the new version.

    Returns:
        (the logged model's URI, the registered version or None).
    """
    from importlib.metadata import PackageNotFoundError, version

    import mlflow.onnx
    import numpy as np
    import onnx
    import onnxruntime
    import torch
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    # MLflow's input-example check opens a CUDA session; on a machine without a CUDA device the
    # missing CUDA library is no error of the user's (with one, a real failure stays visible)
    onnxruntime.set_default_logger_severity(3 if torch.cuda.is_available() else 4)
    signature = ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, channels, -1, -1, -1), "image")]),
        outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, 2, -1, -1, -1), "logits")]))
    example = {"image": np.zeros((1, channels, 4, 8, 8), np.float32)}
    requirements = []
    for package in ("onnxruntime-gpu", "onnx", "numpy"):
        try:
            requirements.append(f"{package}=={version(package)}")
        except PackageNotFoundError:
            continue
    try:
        info = mlflow.onnx.log_model(onnx.load(str(onnx_path)), name=ONNX_ARTIFACT, signature=signature,
                                     input_example=example, pip_requirements=requirements,
                                     onnx_execution_providers=["CUDAExecutionProvider", "CPUExecutionProvider"],
                                     extra_files=[str(sidecar)], save_as_external_data=False)
    finally:
        onnxruntime.set_default_logger_severity(3)
    mlflow.log_artifact(str(sidecar), artifact_path="onnx")
    if not register:
        return info.model_uri, None
    registered = mlflow.register_model(info.model_uri, REGISTERED_MODEL)
    if champion:
        MlflowClient(tracking_uri()).set_registered_model_alias(REGISTERED_MODEL, CHAMPION_ALIAS, registered.version)
    return info.model_uri, str(registered.version)


def download_onnx_model(uri: str) -> tuple[Path, Path]:
    """(model.onnx, its preprocessing JSON) of a ``models:/`` URI, or a :class:`TrackingError`."""
    import mlflow.artifacts

    try:
        folder = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, tracking_uri=tracking_uri()))
    except Exception as exc:
        raise TrackingError(f"model '{uri}' does not resolve ({type(exc).__name__}: "
                             f"{str(exc).splitlines()[0] if str(exc) else ''}): export a model first "
                             "(mlflow run . -e export) or give an .onnx path") from exc
    onnx_files = sorted(folder.rglob("*.onnx"))
    sidecars = [p for p in folder.rglob("*.json") if '"strokelens-onnx/1"' in p.read_text()]
    if not onnx_files or not sidecars:
        raise TrackingError(f"model '{uri}' holds no ONNX file with its preprocessing JSON: export it with "
                             "mlproject.export")
    return onnx_files[0], sidecars[0]


@contextlib.contextmanager
def export_run(source_run: str | None, params: dict) -> Iterator[mlflow.ActiveRun]:
    """The run that holds an exported model; FAILED if the block raises."""
    name = f"export-{source_run[:8]}" if source_run else "export"
    with _stage_run("export", name, params, {TAG_MODEL_RUN: source_run or ""}) as run:
        yield run


@contextlib.contextmanager
def evaluate_run(study: str, params: dict) -> Iterator[mlflow.ActiveRun]:
    """The parent run of one ``evaluate`` invocation (``evaluate-<study>``); FAILED if the block raises."""
    with _stage_run("evaluate", f"evaluate-{study}", params, {TAG_STUDY: study}) as run:
        yield run


@contextlib.contextmanager
def evaluation_run(study: str, architecture: str, model_run: str, params: dict) -> Iterator[mlflow.ActiveRun]:
    """A nested run with the leaderboard figures of one architecture's best trial."""
    tags = {TAG_STUDY: study, TAG_ARCHITECTURE: architecture, TAG_MODEL_RUN: model_run}
    with _nested_run("evaluation", f"evaluation-{architecture}", params, tags) as run:
        yield run


@contextlib.contextmanager
def clinical_rule_run(study: str, rule: str, params: dict) -> Iterator[mlflow.ActiveRun]:
    """A nested run with the leaderboard figures of one clinical threshold rule."""
    tags = {TAG_STUDY: study, TAG_ARCHITECTURE: rule}
    with _nested_run("clinical_rule", f"clinical-rule-{rule}", params, tags) as run:
        yield run


CASES_TABLE = "cases.csv"
"""Per-case rows of an evaluation, baseline or explain run."""


def log_cases(rows: list[dict]) -> None:
    """Log per-case rows as the active run's :data:`CASES_TABLE` artifact."""
    import pandas as pd

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / CASES_TABLE
        pd.DataFrame(rows).to_csv(path, index=False)
        mlflow.log_artifact(str(path))


@contextlib.contextmanager
def report_run(study: str, params: dict) -> Iterator[mlflow.ActiveRun]:
    """The run that holds a leaderboard report (``report-<study>``); FAILED if the block raises."""
    with _stage_run("report", f"report-{study}", params, {TAG_STUDY: study}) as run:
        yield run


def study_of(run_id: str | None) -> str:
    """The study tag of a run (a trial), or ``""``."""
    if not run_id:
        return ""
    try:
        return MlflowClient(tracking_uri()).get_run(run_id).data.tags.get(TAG_STUDY, "")
    except Exception:
        return ""
