"""``mlflow run . -e export`` / ``python -m mlproject.export``: ONNX export, MLflow model registry.

Exports a trained model (by default the best trial of the latest search) to ONNX, verifies it
against PyTorch on several grids, logs it as an MLflow pyfunc around the ONNX session and registers it as
``strokelens-segmenter`` with its tags and a description; the alias ``champion`` moves to the new
version only when it beats the current champion on the same validation cases, or with ``--promote``
(see :mod:`benchmark.stages.export`). ``--ensemble`` exports instead the fold models of a trial
(trained with ``--folds``/``--repeats``) as one ONNX graph of their averaged softmax probabilities.
``--lrp-onnx`` also exports the relevance graphs of ``lrp_epsilon`` and ``lrp_zplus``, ships them in the
served model (requests may ask for ``"relevance"``) and registers them as ``strokelens-relevance-<method>``.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from benchmark.stages.export import export_ensemble, export_model
from mlproject._cli import ArgumentParser, add_experiment_argument, run


def _flag(text: str) -> bool:
    """``--promote`` alone, or ``--promote true|false`` (as ``mlflow run`` passes it)."""
    return text.strip().lower() in ("1", "true", "yes", "on")


def main(argv: Sequence[str] | None = None) -> int:
    """Export, verify, log and register one model."""
    parser = ArgumentParser(prog="python -m mlproject.export", description=__doc__)
    parser.add_argument("--model", default="", help="run id, runs:/…, or a .pt checkpoint (default: the best "
                        "trial of the latest search)")
    add_experiment_argument(parser)
    parser.add_argument("--out", default="", help="also keep model.onnx and model.json in this folder")
    parser.add_argument("--no-register", action="store_true", help="log the model but do not register it")
    parser.add_argument("--int8-data", default="", help="also quantise to int8, calibrated on the training cases of "
                        "the model's split in this data folder, and report the validation Dice change")
    parser.add_argument("--promote", default=False, type=_flag, nargs="?", const=True,
                        help="make the new version the champion even when it does not beat the current one")
    parser.add_argument("--ensemble", default=False, type=_flag, nargs="?", const=True,
                        help="export the trial's K folds × R repeats as one ONNX model averaging their softmax "
                        "probabilities (the trial must have been trained with --folds/--repeats)")
    parser.add_argument("--lrp-onnx", default=False, type=_flag, nargs="?", const=True,
                        help="also export the LRP relevance of lrp_epsilon and lrp_zplus as ONNX graphs (verified "
                        "against explain.attribute), ship them in the served model and register them as "
                        "strokelens-relevance-<method> (about 20-100 s per method on a CPU)")
    args = parser.parse_args(argv)
    if args.ensemble and args.lrp_onnx:
        parser.error("--lrp-onnx exports the relevance of one network: it does not apply to --ensemble")
    if args.ensemble:
        print(export_ensemble(args.model, args.experiment, args.out, register=not args.no_register,
                              promote=args.promote).line())
        return 0
    print(export_model(args.model, args.experiment, args.out, register=not args.no_register,
                       int8_data=args.int8_data, promote=args.promote, lrp_onnx=args.lrp_onnx).line())
    return 0


if __name__ == "__main__":
    sys.exit(run(main))
