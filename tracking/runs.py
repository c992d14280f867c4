"""MLflow conventions: store, experiment, run names, tags, and what each run logs.

This is the only module that knows MLflow's names and the run structure (trained and registered
models are :mod:`tracking.model_registry`'s):

* store: ``MLFLOW_TRACKING_URI`` when set, else ``sqlite:///mlflow.db`` (the file store is
  refused by MLflow 3). The database is created under a file lock before any worker uses it,
  because concurrent first migrations crash.
* experiments: runs are grouped by kind (:data:`tracking.names.SECTIONS`). The study's experiment
  (the name given, :data:`DEFAULT_EXPERIMENT` or the profile's by default) holds the searches, trials,
  folds and exports; ``<experiment>-evaluation``, ``<experiment>-explanations``,
  ``<experiment>-reproduction`` (the study's experiments) and ``<experiment>-report`` hold the rest,
  each created on first use with a description and the model-training view. Runs link across them
  by tags (``strokelens.study``, ``strokelens.model_run``, ``strokelens.architecture``).
* inside ``mlflow run`` the project's run (``MLFLOW_RUN_ID``) is taken once, at the first
  :func:`setup` or :func:`default_experiment`: the first stage run of the process whose experiment
  is the project run's *is* that run (``mlflow run . -e train`` shows the search as the project's
  run); every later stage run is a run of its own. An empty ``experiment`` means the study's
  experiment of the project run's experiment under ``mlflow run`` (``strokelens-evaluation`` →
  ``strokelens``), else :data:`DEFAULT_EXPERIMENT`. A stage that logs to another experiment than
  the project run's leaves a note on the project run naming its run.
* a search is one parent run (``search-<study>``, tag ``strokelens.kind=search``) with one
  nested child run per Optuna trial (``trial-<NNN>-<architecture>``, ``strokelens.kind=trial``,
  ``strokelens.state`` = complete / pruned / failed); it logs the study's split as
  :data:`SPLIT_ARTIFACT` and as an MLflow dataset input whose digest is the split's.
* ``folds-<study>`` (kind ``folds``) has one nested ``fold-<k>-repeat-<r>-<architecture>`` run (kind
  ``fold``, tags ``strokelens.fold``, ``strokelens.repeat``, the architecture and, in
  ``strokelens.model_run``, the trial whose hyper-parameters it trained with; state tags as trials).
* ``export-<run>`` (kind ``export``) holds an ONNX model; ``evaluate-<study>`` (kind
  ``evaluate``) has one nested ``evaluation-<architecture>`` and one ``clinical-rule-<rule>`` run;
  ``explain-<run>`` (kind ``explain``, one per explained model) has one nested
  ``<architecture>-<method>`` run (kind ``explanation``) whose metrics are its unfiltered row's
  and (``best_filter/<metric>``) its best filtered row's, with every filter's means in the
  :data:`FILTER_TABLE` artifact (an MLflow table); the report logs each method run's ``rank``,
  ``rank_raw`` and ``architecture_rank``, and each evaluation and clinical-rule run's ``rank``, back
  onto it (:func:`log_ranks`). No metric is logged as NaN or ±inf (a metric
  that does not apply is absent). ``experiments-<study>`` (kind ``experiments``) has one nested
  ``experiment-<name>`` run per study experiment (kind ``experiment``). ``report-<study>`` (kind
  ``report``) holds the leaderboard.
  Runs of a study carry ``strokelens.study``; evaluations and explanations name their trial in
  ``strokelens.model_run`` and its architecture in ``strokelens.architecture``.
  :mod:`tracking.records` reads them back.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
import tempfile
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import mlflow
from mlflow.tracking import MlflowClient

from tracking.context import SYSTEM_METRICS_INTERVAL_S, context_tags
from tracking.errors import TrackingError
from tracking.locks import sqlite_lock
from tracking.names import SECTIONS, base_experiment, name_problem, section_experiment, section_of
from tracking.stores import check_reachable, prepare_sqlite

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
TAG_METHOD = "strokelens.method"
TAG_SPLIT = "strokelens.split"
TAG_FOLD = "strokelens.fold"
TAG_REPEAT = "strokelens.repeat"
"""The digest of the split a search, evaluation, explanation or export used."""

STATE_COMPLETE, STATE_PRUNED, STATE_FAILED = "complete", "pruned", "failed"

PARENT_BEST_PREFIX = "study_best_"
"""Prefix of the best trial's metrics on a search run (``study_best_val_dice``)."""
CHECKPOINT_ARTIFACT = "checkpoint/best.pt"
"""Where a trial run keeps its best weights (state_dict + build config, ``weights_only``)."""
RESUME_ARTIFACT = "checkpoint/last.pt"
"""Where a trial run keeps its resume point (weights, optimiser, epoch, history, random states)."""
PREPROCESS_ARTIFACT = "checkpoint/preprocess.json"
"""The preprocessing settings the weights expect."""
SPLIT_ARTIFACT = "split.json"
"""Where a search run keeps its study's train/validation split."""
FILTER_TABLE = "filters.json"
"""An explanation (method) run's per-filter means: an MLflow table (``{"columns": […], "data": […]}``)."""


@dataclass
class _Session:
    """What this process knows: the experiment it logs to and the run ``mlflow run`` started for it."""

    experiment_id: str | None = None
    experiment: str | None = None
    sections: dict[tuple[str, str], str] = dataclasses.field(default_factory=dict)
    project_run: str | None = None
    project_experiment: str | None = None
    project_run_adopted: bool = False


_SESSION = _Session()


def tracking_uri() -> str:
    """``MLFLOW_TRACKING_URI`` if set, else the project's SQLite default."""
    return os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI


def _take_project_run() -> _Session:
    """Take ``MLFLOW_RUN_ID`` (set by ``mlflow run``) into the session, once.

    It is removed from the environment: MLflow's ``start_run`` would otherwise resume that run for
    whatever run is started next, nested ones included. Which stage run adopts it is decided in
    :func:`_stage_run`.
    """
    run_id = os.environ.pop("MLFLOW_RUN_ID", None)
    if run_id and run_id != _SESSION.project_run:
        try:
            experiment_id = MlflowClient(tracking_uri()).get_run(run_id).info.experiment_id
        except Exception as exc:
            raise TrackingError(f"the run {run_id} that mlflow run started is not in the store '{tracking_uri()}' "
                                 f"({type(exc).__name__}): set MLFLOW_TRACKING_URI to the store mlflow run "
                                 "uses") from exc
        _SESSION.project_run, _SESSION.project_experiment, _SESSION.project_run_adopted = run_id, experiment_id, False
    return _SESSION


def setup(experiment: str = "") -> str:
    """Point MLflow at the store, create it and the experiment once; returns the experiment id.

    Args:
        experiment: the experiment's name (:mod:`tracking.names`' rule: one path component, no
            leading dot); empty: :func:`default_experiment`.

    Raises:
        TrackingError: the store cannot be opened, or ``experiment`` breaks the rule (checked
            before the store is touched).
    """
    problem = name_problem(experiment, "experiment") if experiment else None
    if problem:
        raise TrackingError(problem)
    uri = tracking_uri()
    mlflow.set_tracking_uri(uri)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # one bar per checkpoint read is noise
    for name in ("mlflow.store.db.utils", "alembic", "mlflow.system_metrics"):  # chatter, not the user's business
        logging.getLogger(name).setLevel(logging.WARNING)
    check_reachable(uri)
    try:
        prepare_sqlite(uri, lambda building: MlflowClient(building).search_experiments(max_results=1))
        experiment = base_experiment(experiment or default_experiment())
        experiment_id = _ensure_experiment(experiment, "")
    except TrackingError:
        raise
    except Exception as exc:
        raise TrackingError(f"cannot open the MLflow store '{uri}' ({type(exc).__name__}: "
                             f"{str(exc).splitlines()[0] if str(exc) else ''}): set MLFLOW_TRACKING_URI "
                             "to a reachable store, e.g. sqlite:///mlflow.db") from exc
    mlflow.set_experiment(experiment_id=experiment_id)
    _SESSION.experiment_id, _SESSION.experiment = experiment_id, experiment
    _SESSION.sections = {(uri, ""): experiment_id}
    return experiment_id


def _ensure_experiment(base: str, section: str) -> str:
    """The id of the experiment of ``section`` for the study's experiment ``base``, created and described once."""
    uri = tracking_uri()
    name = section_experiment(base, section)
    with sqlite_lock(uri):
        client = MlflowClient(uri)
        found = client.get_experiment_by_name(name)
        experiment_id = found.experiment_id if found else _create_experiment(client, name)
        describe_experiment(client, experiment_id, found.tags if found else {}, section, base)
    return experiment_id


def _section_experiment(kind: str) -> str:
    """The id of the experiment that holds runs of ``kind`` (:func:`tracking.names.experiment_for`)."""
    if _SESSION.experiment is None:
        setup()
    key = (tracking_uri(), section_of(kind))
    if key not in _SESSION.sections:
        _SESSION.sections[key] = _ensure_experiment(_SESSION.experiment, key[1])
    return _SESSION.sections[key]


def experiment_ids(base: str, kind: str | None = None) -> list[str]:
    """Ids of the existing experiments that may hold runs of ``kind`` (None: any kind) for ``base``.

    The kind's own experiment first, then the study's experiment itself, which held every kind before
    the runs were split by kind (older stores keep being read).
    """
    client = MlflowClient(tracking_uri())
    sections = [section_of(kind), ""] if kind is not None else list(SECTIONS)
    ids = []
    for section in dict.fromkeys(sections):
        found = client.get_experiment_by_name(section_experiment(base, section))
        if found is not None and found.lifecycle_stage == "active" and found.experiment_id not in ids:
            ids.append(found.experiment_id)
    return ids


def _create_experiment(client: MlflowClient, name: str) -> str:
    """Create experiment ``name``, or take the one another worker created a moment before.

    Two workers starting together on a tracking server both find no experiment; the store refuses the
    second row with the same name, and the second worker reads the first one's.
    """
    try:
        return client.create_experiment(name)
    except mlflow.exceptions.MlflowException:
        found = client.get_experiment_by_name(name)
        if found is None:
            raise
        return found.experiment_id


EXPERIMENT_KIND_TAG, EXPERIMENT_KIND = "mlflow.experimentKind", "custom_model_development"
"""The MLflow UI opens an experiment with this tag in its model-training view, not the GenAI one."""
NOTE_TAG = "mlflow.note.content"
TAG_BASE_EXPERIMENT = "strokelens.experiment_base"
"""On each section experiment: the study's experiment it belongs to.

The descriptions name placeholders in capitals (``search-STUDY``): the MLflow UI renders a note as
Markdown, where ``<study>`` would vanish as an HTML tag."""
_LINKS = ("Each run's kind is its tag strokelens.kind. Runs link across the experiments by tags: strokelens.study, "
          "strokelens.model_run (the trial run) and strokelens.architecture; filter a study with "
          "tags.strokelens.study = 'STUDY'.")
SECTION_DESCRIPTIONS = {
    "": ("strokelens: ischemic-stroke lesion segmentation benchmark, the training runs. Each search-STUDY run is "
         "one search invocation (its best trial as study_best_* metrics) with one nested trial-NNN-ARCHITECTURE "
         "run per Optuna trial: hyper-parameters, per-epoch train_loss/val_dice (step = epoch), best_val_dice, "
         "checkpoints, system metrics and the split as dataset input. folds-STUDY holds the cross-validation "
         "fold models, export-RUN the ONNX models registered as strokelens-segmenter. Evaluations, explanations "
         "and reports are in the experiments {base}-evaluation, {base}-explanations and {base}-report. "),
    "evaluation": ("strokelens: the evaluations of {base}. Each evaluate-STUDY run has one nested "
                   "evaluation-ARCHITECTURE run per architecture (its best trial, tag strokelens.model_run) and "
                   "one clinical-rule-RULE run per threshold rule: Dice, HD95, ASSD, lesion F1, volume difference "
                   "(mean and sd over the validation cases), robustness and latency, with per-case cases.csv; the "
                   "report logs each row's leaderboard rank back as the metric rank. "),
    "explanations": ("strokelens: the LRP explanations of {base}'s models. Each explain-ARCHITECTURE-RUN run "
                     "explains one model (its trial run in strokelens.model_run) with one nested "
                     "ARCHITECTURE-METHOD run per method: the unfiltered metrics, the best filter's as "
                     "best_filter/METRIC, every filter in filters.json, relevance NIfTI and PNG per case; the "
                     "report logs rank, rank_raw and architecture_rank back, so methods compare across models. "),
    "reproduction": ("strokelens: the study's experiments on {base}'s models (dilution, lesion-like defects, "
                     "relevance amplitude, filter comparison, overlays): one experiments-STUDY run with one "
                     "nested experiment-NAME run each. "),
    "resolution": ("strokelens: resolution studies of {base}'s data: one resolution-STUDY run (resolution.csv, "
                   "resolution.png, the split and the plan) with one nested resolution-SETTING run per input "
                   "resolution (the study's grids and native mode), each with its epoch curves and cases.csv. "),
    "report": ("strokelens: the leaderboard reports of {base}'s studies. Each report-STUDY run holds "
               "leaderboard.html (open it from the run's artifacts), its tables and figures. "),
}
EXPERIMENT_DESCRIPTION = SECTION_DESCRIPTIONS[""]


def describe_experiment(client: MlflowClient, experiment_id: str, tags: dict, section: str = "",
                        base: str = "strokelens") -> None:
    """Set the experiment's view (model training) and its description, unless the user already set them."""
    if EXPERIMENT_KIND_TAG not in tags:
        client.set_experiment_tag(experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
    if not tags.get(NOTE_TAG):
        client.set_experiment_tag(experiment_id, NOTE_TAG, SECTION_DESCRIPTIONS[section].format(base=base) + _LINKS)
    if section and TAG_BASE_EXPERIMENT not in tags:
        client.set_experiment_tag(experiment_id, TAG_BASE_EXPERIMENT, base)


def default_experiment(fallback: str = DEFAULT_EXPERIMENT) -> str:
    """Under ``mlflow run`` the study's experiment of the project run's experiment, else ``fallback``.

    ``fallback`` is the profile's experiment (:mod:`benchmark.training.profiles`), ``strokelens`` by default.
    """
    session = _take_project_run()
    if session.project_experiment:
        try:
            return base_experiment(experiment_name(session.project_experiment))
        except Exception:
            return fallback
    return fallback


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
    """A top-level run of one pipeline stage; FAILED if the block raises.

    The first stage run in the project run's experiment adopts the run ``mlflow run`` started
    (:func:`_take_project_run`); the name is also set as a tag, so that run gets it too.
    """
    session = _take_project_run()
    target = _section_experiment(kind)
    adopt = (session.project_run is not None and not session.project_run_adopted
             and session.project_experiment == target)
    if adopt:
        session.project_run_adopted = True
        start = {"run_id": session.project_run}
    else:
        start = {"run_name": name, "experiment_id": target}
    with mlflow.start_run(**start) as run:
        mlflow.set_tags({TAG_KIND: kind, "mlflow.runName": name, **context_tags(), **tags})
        log_params_once(params)
        if session.project_run is not None and not session.project_run_adopted:
            _point_project_run(session.project_run, run.info.run_id, target)
        yield run


def _point_project_run(project_run: str, run_id: str, experiment_id: str) -> None:
    """Note on the run ``mlflow run`` started, when a stage logs to another experiment, where the stage's run is."""
    client = MlflowClient(tracking_uri())
    with contextlib.suppress(Exception):
        client.set_tag(project_run, "strokelens.stage_run", run_id)
        client.set_tag(project_run, NOTE_TAG, f"This stage logged its run {run_id} in the experiment "
                       f"'{experiment_name(experiment_id)}' (runs are grouped by kind, see tracking.names).")


@contextlib.contextmanager
def _nested_run(kind: str, name: str, params: dict, tags: dict, system_metrics: bool = False
                ) -> Iterator[mlflow.ActiveRun]:
    """A nested run of kind ``kind`` under the active run, with its tags, parameters and optionally system metrics."""
    if system_metrics:
        mlflow.set_system_metrics_sampling_interval(SYSTEM_METRICS_INTERVAL_S)
    parent = mlflow.active_run()
    with mlflow.start_run(run_name=name, nested=True, log_system_metrics=system_metrics,
                          experiment_id=parent.info.experiment_id if parent else None) as run:
        mlflow.set_tags({TAG_KIND: kind, **context_tags(), **tags})
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
    with _nested_run("trial", trial_run_name(number, architecture), params, tags, system_metrics=True) as run:
        yield run


def set_state(state: str) -> None:
    """Tag the active run with its trial state (complete / pruned / failed)."""
    mlflow.set_tag(TAG_STATE, state)


def log_epoch(row: dict) -> None:
    """Log one epoch's metrics (``train_loss``, ``val_dice``, …) at ``step = epoch``; NaN values are left out."""
    metrics = finite({k: v for k, v in row.items() if k != "epoch"})
    if metrics:
        mlflow.log_metrics(metrics, step=int(row["epoch"]))


def log_summary(metrics: dict) -> None:
    """Log final values (no step) on the active run; NaN and ±inf are left out (a metric that does not apply)."""
    finite_metrics = finite(metrics)
    if finite_metrics:
        mlflow.log_metrics(finite_metrics)


def log_checkpoint(checkpoint: Path, preprocess: dict) -> None:
    """Log the best weights and the preprocessing settings as the run's checkpoint artifacts."""
    mlflow.log_artifact(str(checkpoint), artifact_path=Path(CHECKPOINT_ARTIFACT).parent.as_posix())
    mlflow.log_dict(preprocess, PREPROCESS_ARTIFACT)


def log_resume_point(last: Path, best: Path | None = None) -> None:
    """Log (replace) the run's resume point, so a worker on any host can continue the trial.

    ``best`` (the best weights so far, when they changed since the last upload) travels with it: a trial
    resumed elsewhere keeps the best epoch it had reached, not only the last one.
    """
    mlflow.log_artifact(str(last), artifact_path=Path(RESUME_ARTIFACT).parent.as_posix())
    if best is not None and best.is_file():
        mlflow.log_artifact(str(best), artifact_path=Path(CHECKPOINT_ARTIFACT).parent.as_posix())


def log_figures(paths: list[Path], folder: str = "figures") -> None:
    """Log PNG files under ``folder``."""
    for path in paths:
        mlflow.log_artifact(str(path), artifact_path=folder)


def log_best_trial(run_id: str, number: int, params: dict, metrics: dict) -> None:
    """Give the parent run the best trial's metrics, parameters and a pointer to its run.

    The metrics are named ``study_best_<metric>``, distinct from the trials' own ``best_val_dice``, so
    the two never share a chart; NaN values are left out.
    """
    mlflow.set_tag(TAG_BEST_RUN, run_id)
    mlflow.log_metrics({f"{PARENT_BEST_PREFIX}{k}": v for k, v in finite(metrics).items()})
    mlflow.log_dict({"run_id": run_id, "trial": number, "params": params, "metrics": metrics},
                    "best_trial.json")


def log_split(split_file: Path, rows: list[dict], digest: str, name: str, source: Path) -> None:
    """Log a study's split on the active (search) run: the file and an MLflow dataset input.

    Args:
        split_file: the ``split.json`` to log as :data:`SPLIT_ARTIFACT`.
        rows: one row per case (case, side, digest): the dataset's table.
        digest: the split's digest, the dataset's digest (at most 36 characters, MLflow's limit).
        name: the dataset's name (the data folder's).
        source: the data folder, the dataset's source.
    """
    import mlflow.data
    import pandas as pd

    mlflow.log_artifact(str(split_file))
    mlflow.set_tag(TAG_SPLIT, digest)
    with warnings.catch_warnings():  # a local path matches two registered source classes, both the same
        warnings.filterwarnings("ignore", message="The specified dataset source can be interpreted in multiple ways")
        dataset = mlflow.data.from_pandas(pd.DataFrame(rows), source=Path(source).resolve().as_uri(), name=name,
                                          digest=digest)
    for attempt in range(3):
        try:
            mlflow.log_input(dataset, context="training", tags={TAG_SPLIT: digest})
            return
        except mlflow.exceptions.MlflowException as exc:
            # Two workers logging the same new dataset race in the tracking store (it looks the dataset up,
            # then inserts it: PostgreSQL refuses the second insert). The retry finds the first one's row.
            if "dataset" not in str(exc).lower() or attempt == 2:
                raise
            time.sleep(0.2 * (attempt + 1))


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


@contextlib.contextmanager
def folds_run(study: str, params: dict) -> Iterator[mlflow.ActiveRun]:
    """The parent run of the cross-validation folds trained after a search (``folds-<study>``)."""
    with _stage_run("folds", f"folds-{study}", params, {TAG_STUDY: study}) as run:
        yield run


@contextlib.contextmanager
def fold_run(study: str, architecture: str, trial_run: str, fold: int, repeat: int, params: dict
             ) -> Iterator[mlflow.ActiveRun]:
    """A nested run for one fold × repeat of a trial's configuration; its state tag is ``failed`` unless set."""
    tags = {TAG_STUDY: study, TAG_ARCHITECTURE: architecture, TAG_MODEL_RUN: trial_run, TAG_FOLD: str(fold),
            TAG_REPEAT: str(repeat), TAG_STATE: STATE_FAILED}
    with _nested_run("fold", f"fold-{fold}-repeat-{repeat}-{architecture}", params, tags, system_metrics=True) as run:
        yield run


@contextlib.contextmanager
def explain_run(model_run: str | None, params: dict, architecture: str = "") -> Iterator[mlflow.ActiveRun]:
    """The parent run of one ``explain`` of one model (its trial run and architecture as tags); FAILED if it raises."""
    name = f"explain-{architecture + '-' if architecture else ''}{model_run[:8] if model_run else 'checkpoint'}"
    tags = {TAG_MODEL_RUN: model_run or "", TAG_STUDY: study_of(model_run), TAG_ARCHITECTURE: architecture}
    with _stage_run("explain", name, params, tags) as run:
        yield run


@contextlib.contextmanager
def explanation_run(method: str, architecture: str, model_run: str | None, params: dict
                    ) -> Iterator[mlflow.ActiveRun]:
    """A nested run for one method of one model (``<architecture>-<method>``), so the MLflow UI compares them.

    Its parameters and tags carry the method, the architecture, the trial run and the study.
    """
    study = study_of(model_run)
    tags = {TAG_METHOD: method, TAG_ARCHITECTURE: architecture, TAG_MODEL_RUN: model_run or "", TAG_STUDY: study}
    params = {"method": method, "architecture": architecture, "model_run": model_run or "", "study": study, **params}
    with _nested_run("explanation", f"{architecture or 'model'}-{method}", params, tags) as run:
        yield run


def finite(metrics: dict) -> dict[str, float]:
    """The metrics with a finite value (NaN and ±inf dropped: a metric that does not apply is absent)."""
    out = {}
    for key, value in metrics.items():
        try:
            number = float(value)
        except (TypeError, ValueError):
            continue
        if math.isfinite(number):
            out[key] = number
    return out


def log_explanation(raw: dict | None, best_filter: str = "", best: dict | None = None,
                    rows: list[dict] | None = None) -> None:
    """Log a method run: its unfiltered metrics, its best filter's as ``best_filter/<metric>``, the filter table.

    Args:
        raw: the unfiltered row's mean metrics (None: the method has no unfiltered row).
        best_filter: the best-ranked filter of the method (a parameter), empty for none.
        best: that filter's mean metrics.
        rows: one dict per filter (``filter`` and the means), logged as :data:`FILTER_TABLE`.
    """
    import pandas as pd

    metrics = finite(raw or {})
    if best_filter and best:
        mlflow.log_param("best_filter", best_filter)
        metrics.update({f"best_filter/{k}": v for k, v in finite(best).items()})
    if metrics:
        mlflow.log_metrics(metrics)
    if rows:
        table = pd.DataFrame(rows)
        mlflow.log_table(table.astype(object).where(table.notna(), None), artifact_file=FILTER_TABLE)


TAG_RANKED_BY = "strokelens.ranked_by"
"""On a ranked run: the report run whose ranks it holds."""


def log_ranks(ranks: dict[str, dict[str, float]], tags: dict[str, str] | None = None) -> None:
    """Log ranks (``{run id: {"rank": 1.0, …}}``) onto finished runs, e.g. the report's onto explanation runs.

    Each value is logged at step 0 with the time of this call, so the newest report's rank is the run's
    value; non-finite values are left out; ``tags`` are set on every run ranked.
    """
    from mlflow.entities import Metric, RunTag

    client = MlflowClient(tracking_uri())
    now = int(time.time() * 1000)
    for run_id, values in ranks.items():
        metrics = [Metric(key, value, now, 0) for key, value in finite(values).items()]
        if metrics:
            client.log_batch(run_id, metrics=metrics, tags=[RunTag(k, v) for k, v in (tags or {}).items()])


def log_artifacts(paths: list[Path], folder: str) -> None:
    """Log files under an artifact folder of the active run (``""``: its root)."""
    for path in paths:
        mlflow.log_artifact(str(path), artifact_path=folder or None)


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


TAG_EXPERIMENT = "strokelens.experiment"
"""The name of one of the study's experiments (dilution, defects, amplitude, filters, overlays)."""


@contextlib.contextmanager
def experiments_run(study: str, model_run: str | None, architecture: str, params: dict) -> Iterator[mlflow.ActiveRun]:
    """The parent run of one ``experiments`` invocation (``experiments-<study>``); FAILED if the block raises."""
    tags = {TAG_STUDY: study, TAG_MODEL_RUN: model_run or "", TAG_ARCHITECTURE: architecture}
    with _stage_run("experiments", f"experiments-{study}", params, tags) as run:
        yield run


@contextlib.contextmanager
def experiment_run(name: str, study: str, model_run: str | None, architecture: str,
                   params: dict) -> Iterator[mlflow.ActiveRun]:
    """A nested run for one of the study's experiments (kind ``experiment``, tag :data:`TAG_EXPERIMENT`)."""
    tags = {TAG_EXPERIMENT: name, TAG_STUDY: study, TAG_MODEL_RUN: model_run or "", TAG_ARCHITECTURE: architecture}
    with _nested_run("experiment", f"experiment-{name}", params, tags) as run:
        yield run


def architecture_of(run_id: str | None) -> str:
    """The architecture tag of a run (a trial), or ``""``."""
    if not run_id:
        return ""
    try:
        return MlflowClient(tracking_uri()).get_run(run_id).data.tags.get(TAG_ARCHITECTURE, "")
    except Exception:
        return ""


def study_of(run_id: str | None) -> str:
    """The study tag of a run (a trial), or ``""``."""
    if not run_id:
        return ""
    try:
        return MlflowClient(tracking_uri()).get_run(run_id).data.tags.get(TAG_STUDY, "")
    except Exception:
        return ""


@contextlib.contextmanager
def resolution_run(study: str, params: dict) -> Iterator[mlflow.ActiveRun]:
    """The parent run of one resolution study (``resolution-<study>``); FAILED if the block raises."""
    with _stage_run("resolution", f"resolution-{study}", params, {TAG_STUDY: study}) as run:
        yield run


@contextlib.contextmanager
def resolution_setting_run(study: str, setting: str, params: dict) -> Iterator[mlflow.ActiveRun]:
    """One setting of the resolution study, nested (kind ``resolution_setting``, tag ``strokelens.setting``)."""
    tags = {TAG_STUDY: study, "strokelens.setting": setting}
    with _nested_run("resolution_setting", f"resolution-{setting}", params, tags, system_metrics=True) as run:
        yield run


def log_json(content: dict, path: str) -> None:
    """Log a JSON artifact of the active run."""
    mlflow.log_dict(content, path)


def set_note(text: str) -> None:
    """The active run's description (the MLflow UI shows it at the top of the run's page)."""
    mlflow.set_tag(NOTE_TAG, text)
