"""Trained models in MLflow: finding a checkpoint from what a user gives, ONNX models in the registry.

* :func:`resolve_model` turns a run id, ``runs:/…``, ``models:/<name>@<alias>`` or a ``.pt``
  path into a local checkpoint and its preprocessing settings (the default: the best trial of
  the latest search);
* :func:`log_onnx_model` logs an exported model as a pyfunc around its ONNX session
  (:mod:`tracking.serving`) and registers it as
  :data:`REGISTERED_MODEL` with its tags (:data:`VERSION_TAGS`) and a description, moving the alias
  :data:`CHAMPION_ALIAS` to it only when the caller decided so;
* :func:`champion_tags` reads the current champion's tags (its validation Dice and split digest),
  :func:`source_run_facts` what a trial run recorded (architecture, study, profile, best val Dice);
* :func:`download_onnx_model` brings a registered model back for prediction;
* :func:`log_relevance_model` logs an exported relevance graph (:mod:`explain.onnx_export`) as an
  MLflow ONNX model (``mlflow.onnx``: loadable by ``mlflow.onnx.load_model`` or as a pyfunc of numpy
  inputs, served without PyTorch) and registers it as ``strokelens-relevance-<method>``
  (:func:`relevance_model_name`) with tags (:data:`RELEVANCE_TAGS`) naming the segmenter version it
  explains, the parity with ``explain.attribute`` and the architecture.

Run names, tags and what each run logs are :mod:`tracking.runs`'s.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import mlflow
from mlflow.tracking import MlflowClient

from tracking.errors import TrackingError
from tracking.runs import (
    CHECKPOINT_ARTIFACT,
    DEFAULT_EXPERIMENT,
    PREPROCESS_ARTIFACT,
    TAG_ARCHITECTURE,
    TAG_BEST_RUN,
    TAG_KIND,
    TAG_PROFILE,
    TAG_STUDY,
    tracking_uri,
)

REGISTERED_MODEL = "strokelens-segmenter"
CHAMPION_ALIAS = "champion"
MODEL_ARTIFACT = "model"
"""The logged MLflow model's name in its run (a pyfunc; the ONNX file and its JSON are its artifacts)."""
VERSION_TAGS = ("architecture", "study", "trial_run", "val_dice", "val_dice_ci_low", "val_dice_ci_high",
                "val_cases", "split", "data_digest", "profile")
"""The tags every registered version carries (empty strings where a fact is unknown)."""
RELEVANCE_MODEL_PREFIX = "strokelens-relevance"
RELEVANCE_ARTIFACT = "relevance"
"""Where a relevance model is logged in the export run: ``relevance-<method>`` (its JSON under ``relevance-onnx``)."""
RELEVANCE_TAGS = ("method", "target", "architecture", "segmenter_model", "segmenter_version", "segmenter_run",
                  "trial_run", "study", "parity_relative_l1", "parity_grids")
"""The tags every registered relevance version carries."""


def relevance_model_name(method: str) -> str:
    """The registered name of an LRP method's relevance model: ``strokelens-relevance-<method>``."""
    return f"{RELEVANCE_MODEL_PREFIX}-{method}"


def log_onnx_model(onnx_path: Path, sidecar: Path, predictor: str, register: bool = True,
                   champion: bool = False, tags: dict | None = None,
                   description: str = "", relevance: dict[str, Path] | None = None) -> tuple[str, str | None]:
    """Log an exported model as an MLflow pyfunc around its ONNX session, and register it with tags and a description.

    The MLflow model is :class:`tracking.serving.StrokelensModel` (logged from code): its artifacts
    are the ONNX file and its preprocessing JSON, and ``predictor`` (``module:function``, e.g.
    ``benchmark.serving:load_predictor``) names the factory that builds what answers a request from
    those two files. The alias ``champion`` moves to the new version only when ``champion`` is true
    (the caller decides, see :mod:`benchmark.stages.export`).

    Returns:
        (the logged model's URI, the registered version or None).
    """
    from tracking.serving import log_pyfunc_model

    info = log_pyfunc_model(MODEL_ARTIFACT, onnx_path, sidecar, predictor)
    mlflow.log_artifact(str(sidecar), artifact_path="onnx")
    if not register:
        return info.model_uri, None
    return info.model_uri, register_version(info.model_uri, tags or {}, description, champion)


def register_version(model_uri: str, tags: dict, description: str = "", champion: bool = False) -> str:
    """Register ``model_uri`` as a new version of :data:`REGISTERED_MODEL` with ``tags`` and ``description``.

    Every key of :data:`VERSION_TAGS` is set (an empty string when ``tags`` lacks it); the alias
    :data:`CHAMPION_ALIAS` moves to the version when ``champion`` is true. Returns the version.
    """
    full = {key: "" for key in VERSION_TAGS} | {k: str(v) for k, v in tags.items()}
    registered = mlflow.register_model(model_uri, REGISTERED_MODEL, tags=full)
    client = MlflowClient(tracking_uri())
    if description:
        client.update_model_version(REGISTERED_MODEL, registered.version, description=description)
    if champion:
        client.set_registered_model_alias(REGISTERED_MODEL, CHAMPION_ALIAS, registered.version)
    return str(registered.version)


def log_relevance_model(onnx_path: Path, sidecar: Path, method: str, register: bool = True,
                        tags: dict | None = None, description: str = "",
                        champion: bool = False) -> tuple[str, str | None]:
    """Log a relevance graph as an MLflow ONNX model in the active run; register it as :func:`relevance_model_name`.

    The model's input is ``image`` (N, C, D, H, W) float32 — the segmenter's prepared input — and
    its outputs ``relevance``, ``logits`` and ``target`` (:mod:`explain.onnx_export`); its JSON (method,
    options, parity) is logged beside it. Every key of :data:`RELEVANCE_TAGS` is set; the alias
    :data:`CHAMPION_ALIAS` moves to the version when ``champion`` is true (the segmenter it explains is
    the champion).

    Returns:
        (the logged model's URI, the registered version or None).
    """
    import mlflow.onnx
    import onnx

    from tracking.serving import pinned_requirements

    requirements = [r for r in pinned_requirements() if r.split("==")[0] in ("onnx", "onnxruntime", "numpy")]
    info = mlflow.onnx.log_model(onnx.load(str(onnx_path)), name=f"{RELEVANCE_ARTIFACT}-{method}",
                                 pip_requirements=requirements, save_as_external_data=False)
    mlflow.log_artifact(str(sidecar), artifact_path=f"{RELEVANCE_ARTIFACT}-onnx")
    if not register:
        return info.model_uri, None
    name = relevance_model_name(method)
    full = {key: "" for key in RELEVANCE_TAGS} | {"method": method} | {k: str(v) for k, v in (tags or {}).items()}
    registered = mlflow.register_model(info.model_uri, name, tags=full)
    client = MlflowClient(tracking_uri())
    if description:
        client.update_model_version(name, registered.version, description=description)
    if champion:
        client.set_registered_model_alias(name, CHAMPION_ALIAS, registered.version)
    return info.model_uri, str(registered.version)


def tag_version(version: str, tags: dict) -> None:
    """Set (or overwrite) tags on a registered version of :data:`REGISTERED_MODEL`."""
    client = MlflowClient(tracking_uri())
    for key, value in tags.items():
        client.set_model_version_tag(REGISTERED_MODEL, version, key, str(value))


def set_champion(version: str) -> None:
    """Move the alias :data:`CHAMPION_ALIAS` to ``version``."""
    MlflowClient(tracking_uri()).set_registered_model_alias(REGISTERED_MODEL, CHAMPION_ALIAS, version)


def champion_tags() -> dict | None:
    """The current champion's version tags plus ``version``, or None when no version holds the alias."""
    client = MlflowClient(tracking_uri())
    try:
        found = client.get_model_version_by_alias(REGISTERED_MODEL, CHAMPION_ALIAS)
    except Exception:  # no such model or alias yet
        return None
    return {**found.tags, "version": str(found.version)}


def version_facts(version: str) -> tuple[dict, str, list[str]]:
    """(tags, description, aliases) of one registered version of :data:`REGISTERED_MODEL`."""
    found = MlflowClient(tracking_uri()).get_model_version(REGISTERED_MODEL, version)
    return dict(found.tags), found.description or "", list(found.aliases)


def source_run_facts(run_id: str | None) -> dict:
    """What a trial run recorded: architecture, study, profile (its search's) and best validation Dice.

    Returns an empty dict for no run or one that cannot be read.
    """
    if not run_id:
        return {}
    client = MlflowClient(tracking_uri())
    try:
        run = client.get_run(run_id)
    except Exception:
        return {}
    tags = run.data.tags
    facts = {"architecture": tags.get(TAG_ARCHITECTURE, ""), "study": tags.get(TAG_STUDY, ""),
             "profile": tags.get(TAG_PROFILE, ""), "val_dice": run.data.metrics.get("best_val_dice")}
    parent = tags.get("mlflow.parentRunId")
    if parent and not facts["profile"]:
        with contextlib.suppress(Exception):  # a parent run deleted meanwhile: no profile
            facts["profile"] = client.get_run(parent).data.tags.get(TAG_PROFILE, "")
    return facts


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

