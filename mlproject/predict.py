"""``mlflow run . -e predict`` / ``python -m mlproject.predict``: NIfTI in, lesion mask and probability out.

``model`` is a ``models:/`` URI (default ``models:/strokelens-segmenter@champion``) or an
``.onnx`` file with its JSON beside it; ``input`` is one case folder, a folder of nnU-Net image
files or a whole data folder (see :mod:`benchmark.stages.predict`).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from benchmark.stages.predict import DEFAULT_MODEL, predict_cases
from mlproject._cli import ArgumentParser, run


def main(argv: Sequence[str] | None = None) -> int:
    """Predict every case of ``input`` into ``output``."""
    parser = ArgumentParser(prog="python -m mlproject.predict", description=__doc__)
    parser.add_argument("--model", default=DEFAULT_MODEL, help="models:/ URI or .onnx path")
    parser.add_argument("--input", required=True, help="case folder, image set or data folder")
    parser.add_argument("--output", required=True, help="folder for the NIfTI outputs")
    parser.add_argument("--threshold", type=float, default=0.5, help="lesion probability threshold")
    args = parser.parse_args(argv)
    print(predict_cases(args.input, args.output, args.model, args.threshold).line())
    return 0


if __name__ == "__main__":
    sys.exit(run(main))
