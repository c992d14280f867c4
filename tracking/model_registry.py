"""Trained models in MLflow: finding a checkpoint from what a user gives, ONNX models in the registry.

* :func:`resolve_model` turns a run id, ``runs:/…``, ``models:/<name>@<alias>`` or a ``.pt``
  path into a local checkpoint and its preprocessing settings (the default: the best trial of
  the latest search);
* :func:`log_onnx_model` logs an exported model with ``mlflow.onnx.log_model``, registers it as
  :data:`REGISTERED_MODEL` and moves the alias :data:`CHAMPION_ALIAS` to it;
* :func:`download_onnx_model` brings a registered model back for prediction.

Run names, tags and what each run logs are :mod:`tracking.runs`'s.
"""

from __future__ import annotations

import json
from pathlib import Path

from mlflow.tracking import MlflowClient

from tracking.errors import TrackingError
from tracking.runs import (
    CHECKPOINT_ARTIFACT,
    DEFAULT_EXPERIMENT,
    PREPROCESS_ARTIFACT,
    TAG_BEST_RUN,
    TAG_KIND,
    tracking_uri,
)

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

