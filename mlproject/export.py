"""``mlflow run . -e export`` / ``python -m mlproject.export``: ONNX export, MLflow model registry.

Exports a trained model (by default the best trial of the latest search) to ONNX, verifies it
against PyTorch on several grids, logs it with ``mlflow.onnx.log_model`` and registers it as
``strokelens-segmenter`` with the alias ``champion`` moved to the new version.
"""

from __future__ import annotations

import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from benchmark.data.cases import discover, read_case
from benchmark.data.preprocessing import PreprocessConfig, prepare, to_native
from benchmark.evaluation.segmentation import dice
from benchmark.training.loop import load_model
from benchmark.training.search import split_cases
from mlproject._cli import ArgumentParser, add_experiment_argument, experiment_of, run
from models.onnx import Segmenter, export_onnx, quantize_int8, sidecar_path
from tracking import runs as tracking


def int8_dice_change(onnx_path: Path, int8_path: Path, cases) -> dict[str, float]:
    """Mean validation Dice of the fp32 and int8 models on the native grid, and the change."""
    fp32, int8 = Segmenter(onnx_path), Segmenter(int8_path)
    scores = {"fp32": [], "int8": []}
    for case in cases:
        for name, segmenter in (("fp32", fp32), ("int8", int8)):
            probability = to_native(segmenter.probability(case.image[None]), case.native_shape)[0]
            scores[name].append(dice(probability > 0.5, case.native_label))
    means = {f"val_dice_{k}": float(np.mean(v)) for k, v in scores.items()}
    return {**means, "int8_dice_change": means["val_dice_int8"] - means["val_dice_fp32"]}


def export_model(reference: str, experiment: str = tracking.DEFAULT_EXPERIMENT, out: str = "",
                 register: bool = True, int8_data: str = "", champion: bool = True) -> str:
    """Export, verify, log and register one model; returns a line saying where it went.

    With ``int8_data`` (a data folder) an int8 model is also made, calibrated on the search's
    training cases, and its Dice change against fp32 on the validation cases is logged. With
    ``champion`` False the new version is registered without moving the ``champion`` alias.
    """
    tracking.setup(experiment)
    checkpoint, preprocess, run_id = tracking.resolve_model(reference, experiment)
    preprocess = preprocess or PreprocessConfig().to_dict()
    model = load_model(checkpoint)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(out) if out else Path(tmp)
        report = export_onnx(model, folder / "model.onnx", preprocess)
        with tracking.export_run(run_id, {"model": reference or run_id or str(checkpoint),
                                          "source_run": run_id or ""}) as parent:
            tracking.log_summary({f"onnx_max_abs_diff_{k}": v for k, v in report.max_abs_diff.items()})
            uri, version = tracking.log_onnx_model(report.onnx_path, report.sidecar_path,
                                                   len(preprocess["modalities"]), register=register,
                                                   champion=champion)
            quantised = ""
            if int8_data:
                config = PreprocessConfig.from_dict(preprocess)
                train_refs, val_refs = split_cases(discover(int8_data, config.modalities, split="train"), seed=0)
                calibration = [prepare(read_case(r), config).image[None] for r in train_refs[:8]]
                int8_path = quantize_int8(report.onnx_path, folder / "model_int8.onnx", calibration)
                change = int8_dice_change(report.onnx_path, int8_path, [prepare(read_case(r), config)
                                                                         for r in val_refs])
                tracking.log_summary(change)
                tracking.log_artifacts([int8_path, sidecar_path(int8_path)], "onnx-int8")
                quantised = f"; int8 Dice change {change['int8_dice_change']:+.4f} on {len(val_refs)} validation cases"
    alias = f"@{tracking.CHAMPION_ALIAS}" if champion else f"/{version}"
    where = f"models:/{tracking.REGISTERED_MODEL}{alias} (version {version})" if version else uri
    return (f"exported {model.build_config['name']} to ONNX (max |onnxruntime − PyTorch| {report.worst:.2e}); "
            f"logged under MLflow run {parent.info.run_id}: {where}{quantised}")


def main(argv: Sequence[str] | None = None) -> int:
    """Export, verify, log and register one model."""
    parser = ArgumentParser(prog="python -m mlproject.export", description=__doc__)
    parser.add_argument("--model", default="", help="run id, runs:/…, or a .pt checkpoint (default: the best "
                        "trial of the latest search)")
    add_experiment_argument(parser)
    parser.add_argument("--out", default="", help="also keep model.onnx and model.json in this folder")
    parser.add_argument("--no-register", action="store_true", help="log the model but do not register it")
    parser.add_argument("--int8-data", default="", help="also quantise to int8, calibrated on this data folder's "
                        "training cases, and report the validation Dice change")
    args = parser.parse_args(argv)
    print(export_model(args.model, experiment_of(args), args.out, register=not args.no_register,
                       int8_data=args.int8_data))
    return 0


if __name__ == "__main__":
    sys.exit(run(main))
