"""The export stage: a trained model to ONNX, verified, logged and registered in MLflow.

The model (by default the best trial of the latest search) is exported to ONNX, checked against
PyTorch on several grids, logged with ``mlflow.onnx.log_model`` and registered as
``strokelens-segmenter``, with the alias ``champion`` moved to the new version unless told
otherwise. Optionally an int8 model is made, calibrated on the training side of the split of the
search that trained the model, and its Dice change against fp32 is measured on the validation side.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from benchmark.data.cases import discover, read_case
from benchmark.data.preprocessing import PreprocessConfig, prepare, to_native
from benchmark.data.splits import Split
from benchmark.evaluation.segmentation import dice
from benchmark.stages.data import model_split
from benchmark.training.loop import load_model
from models.onnx import Segmenter, export_onnx, quantize_int8, sidecar_path
from tracking import model_registry
from tracking import runs as tracking

CALIBRATION_CASES = 8
"""Training cases that calibrate the int8 activation ranges."""


@dataclass
class ExportResult:
    """What an export logged.

    Attributes:
        run_id: the export run that holds the ONNX model.
        source_run: the trial run the weights come from (None for a checkpoint file).
        architecture: the network's registry name.
        max_abs_diff: the largest |onnxruntime − PyTorch| over the checked grids.
        uri: the logged MLflow model's URI.
        version: the registered version, or None when not registered.
        champion: whether the ``champion`` alias moved to it.
        int8_dice_change: mean Dice of int8 minus fp32 (None without an int8 model).
        int8_cases: how many cases that change is measured on.
        int8_cases_side: ``validation`` (the split's), or ``labelled`` for a model no search trained.
    """

    run_id: str
    source_run: str | None
    architecture: str
    max_abs_diff: float
    uri: str
    version: str | None
    champion: bool
    int8_dice_change: float | None = None
    int8_cases: int = 0
    int8_cases_side: str = "validation"

    def line(self) -> str:
        """The summary line the command line prints."""
        alias = f"@{model_registry.CHAMPION_ALIAS}" if self.champion else f"/{self.version}"
        where = f"models:/{model_registry.REGISTERED_MODEL}{alias} (version {self.version})" if self.version \
            else self.uri
        quantised = ""
        if self.int8_dice_change is not None:
            quantised = (f"; int8 Dice change {self.int8_dice_change:+.4f} on {self.int8_cases} "
                         f"{self.int8_cases_side} cases")
            if self.int8_cases_side != "validation":
                quantised += " (the model has no saved split: calibrated on the same cases)"
        return (f"exported {self.architecture} to ONNX (max |onnxruntime − PyTorch| {self.max_abs_diff:.2e}); "
                f"logged under MLflow run {self.run_id}: {where}{quantised}")


def int8_dice_change(onnx_path: Path, int8_path: Path, cases) -> dict[str, float]:
    """Mean Dice of the fp32 and int8 models on the native grid over ``cases`` (prepared), and the change."""
    fp32, int8 = Segmenter(onnx_path), Segmenter(int8_path)
    scores = {"fp32": [], "int8": []}
    for case in cases:
        for name, segmenter in (("fp32", fp32), ("int8", int8)):
            probability = to_native(segmenter.probability(case.image[None]), case.native_shape)[0]
            scores[name].append(dice(probability > 0.5, case.native_label))
    means = {f"val_dice_{k}": float(np.mean(v)) for k, v in scores.items()}
    return {**means, "int8_dice_change": means["val_dice_int8"] - means["val_dice_fp32"]}


def export_model(reference: str = "", experiment: str = "", out: str | Path = "", register: bool = True,
                 int8_data: str | Path = "", champion: bool = True, split: Split | None = None) -> ExportResult:
    """Export, verify, log and register one model.

    Args:
        reference: a run id, ``runs:/…``, ``models:/…`` or a ``.pt`` checkpoint; empty: the best
            trial of the latest search.
        experiment: the MLflow experiment (empty: the project run's under ``mlflow run``, else ``strokelens``).
        out: also keep ``model.onnx`` and its JSON in this folder.
        register: register the model (else only log it).
        int8_data: a data folder: also quantise to int8, calibrated on the training side of the
            model's split, and measure the Dice change on its validation side (checked against the
            split: changed data is refused). A model no search trained has no split: then every
            labelled case serves both, and the result says so.
        champion: move the ``champion`` alias to the new version.
        split: the model's split, when the caller has it (else it is looked up).

    Raises:
        TrackingError: the reference does not resolve or the store cannot be used.
        DataError: the data changed since the model's split was saved.
    """
    tracking.setup(experiment)
    experiment = experiment or tracking.default_experiment()
    checkpoint, preprocess, run_id = model_registry.resolve_model(reference, experiment)
    preprocess = preprocess or PreprocessConfig().to_dict()
    model = load_model(checkpoint)
    int8_refs = None
    if int8_data:
        split = split or model_split(run_id, checkpoint)
        if split is not None:
            int8_refs = (*split.resolve(int8_data), "validation")
        else:
            labelled = discover(int8_data, PreprocessConfig.from_dict(preprocess).modalities, split="train")
            int8_refs = (labelled, labelled, "labelled")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(out) if out else Path(tmp)
        report = export_onnx(model, folder / "model.onnx", preprocess)
        params = {"model": reference or run_id or str(checkpoint), "source_run": run_id or ""}
        if int8_refs is not None and split is not None:
            params["split"] = split.digest
        with tracking.export_run(run_id, params) as parent:
            tracking.log_summary({f"onnx_max_abs_diff_{k}": v for k, v in report.max_abs_diff.items()})
            uri, version = model_registry.log_onnx_model(report.onnx_path, report.sidecar_path,
                                                         len(preprocess["modalities"]), register=register,
                                                         champion=champion)
            result = ExportResult(parent.info.run_id, run_id, model.build_config["name"], report.worst, uri, version,
                                  champion and version is not None)
            if int8_refs is not None:
                train_refs, val_refs, side = int8_refs
                config = PreprocessConfig.from_dict(preprocess)
                calibration = [prepare(read_case(r), config).image[None] for r in train_refs[:CALIBRATION_CASES]]
                int8_path = quantize_int8(report.onnx_path, folder / "model_int8.onnx", calibration)
                change = int8_dice_change(report.onnx_path, int8_path, [prepare(read_case(r), config)
                                                                         for r in val_refs])
                tracking.log_summary(change)
                tracking.log_artifacts([int8_path, sidecar_path(int8_path)], "onnx-int8")
                result.int8_dice_change, result.int8_cases = change["int8_dice_change"], len(val_refs)
                result.int8_cases_side = side
    return result
