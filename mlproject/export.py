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

from benchmark.preprocessing import PreprocessConfig
from benchmark.training import load_model
from mlproject._cli import ArgumentParser, run
from models.export import export_onnx
from tracking import runs as tracking


def export_model(reference: str, experiment: str = tracking.DEFAULT_EXPERIMENT, out: str = "",
                 register: bool = True) -> str:
    """Export, verify, log and register one model; returns a line saying where it went."""
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
                                                   len(preprocess["modalities"]), register=register)
    where = f"models:/{tracking.REGISTERED_MODEL}@{tracking.CHAMPION_ALIAS} (version {version})" if version else uri
    return (f"exported {model.build_config['name']} to ONNX (max |onnxruntime − PyTorch| {report.worst:.2e}); "
            f"logged under MLflow run {parent.info.run_id}: {where}")


def main(argv: Sequence[str] | None = None) -> int:
    """Export, verify, log and register one model."""
    parser = ArgumentParser(prog="python -m mlproject.export", description=__doc__)
    parser.add_argument("--model", default="", help="run id, runs:/…, or a .pt checkpoint (default: the best "
                        "trial of the latest search)")
    parser.add_argument("--experiment", default=tracking.DEFAULT_EXPERIMENT)
    parser.add_argument("--out", default="", help="also keep model.onnx and model.json in this folder")
    parser.add_argument("--no-register", action="store_true", help="log the model but do not register it")
    args = parser.parse_args(argv)
    print(export_model(args.model, args.experiment, args.out, register=not args.no_register))
    return 0


if __name__ == "__main__":
    sys.exit(run(main))
