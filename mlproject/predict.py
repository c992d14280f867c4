"""``mlflow run . -e predict`` / ``python -m mlproject.predict``: NIfTI in, lesion mask and probability out.

``model`` is a ``models:/`` URI (default ``models:/strokelens-segmenter@champion``) or an
``.onnx`` file with its JSON beside it; ``input`` is one case folder, a folder of nnU-Net image
files or a whole data folder (see :mod:`benchmark.stages.predict`). Each bad case gets one line and
the others go on; the exit status is 2 when any case failed. ``predictions.csv`` in the output folder
lists every case with its lesion volume (ml). A rerun skips cases already written (``--overwrite``).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from benchmark.stages.predict import (
    CSV_NAME,
    DEFAULT_MODEL,
    DEFAULT_SUBMISSION,
    NAMINGS,
    CaseOutcome,
    predict_cases,
)
from mlproject._cli import ArgumentParser, run


def _yes_no(text: str) -> bool:
    """Argparse type for flags MLproject passes with a value: true/false, yes/no, 1/0."""
    value = text.strip().lower()
    if value in ("true", "yes", "1", "on"):
        return True
    if value in ("false", "no", "0", "off", ""):
        return False
    raise argparse.ArgumentTypeError(f"'{text}' is neither true nor false")


def main(argv: Sequence[str] | None = None) -> int:
    """Predict every case of ``input`` into ``output``; 2 when a case failed."""
    from tqdm import tqdm

    parser = ArgumentParser(prog="python -m mlproject.predict", description=__doc__)
    parser.add_argument("-m", "--model", default=DEFAULT_MODEL, help="models:/ or runs:/ URI, or .onnx path")
    parser.add_argument("-i", "--input", required=True, help="case folder, image set or data folder")
    parser.add_argument("-o", "--output", required=True, help="folder for the NIfTI outputs and predictions.csv")
    parser.add_argument("--threshold", type=float, default=0.5, help="lesion probability threshold in (0, 1)")
    parser.add_argument("--naming", choices=NAMINGS, default="strokelens",
                        help="strokelens: <case>_lesion.nii.gz and <case>_probability.nii.gz; nnunet: <case>.nii.gz "
                        "(and <case>_probability.nii.gz with --save-probabilities); isles2017: the challenge's "
                        "SMIR.<name>.<id>.nii, <id> the SMIR id of the case's MTT file")
    parser.add_argument("--submission", default=DEFAULT_SUBMISSION,
                        help="the <name> of --naming isles2017's SMIR.<name>.<id>.nii (letters, digits, _ and -)")
    parser.add_argument("--save-probabilities", "--save_probabilities", nargs="?", const=True, default=False,
                        type=_yes_no, help="with --naming nnunet or isles2017, also write the probability map")
    parser.add_argument("--overwrite", nargs="?", const=True, default=False, type=_yes_no,
                        help="redo cases whose outputs exist (default: skip them; a changed --threshold needs this)")
    args = parser.parse_args(argv)

    def report(outcome: CaseOutcome) -> None:
        if outcome.status == "failed":
            tqdm.write(f"strokelens predict: case {outcome.case} failed: {outcome.cause}", file=sys.stderr)

    result = predict_cases(args.input, args.output, args.model, args.threshold, naming=args.naming,
                           save_probabilities=args.save_probabilities, overwrite=args.overwrite,
                           submission=args.submission, on_case=report)
    print(result.line())
    if result.failed:
        print(f"strokelens predict: error: {len(result.failed)} of {len(result.outcomes)} cases failed "
              f"({', '.join(result.failed)}): see the lines above and {result.output / CSV_NAME}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(run(main))
