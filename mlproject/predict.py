"""``mlflow run . -e predict`` / ``python -m mlproject.predict``: NIfTI in, lesion mask and probability out.

``model`` is a ``models:/`` URI (default ``models:/strokelens-segmenter@champion``) or an
``.onnx`` file with its JSON beside it; ``input`` is one ISLES 2017 case folder, a folder of
nnU-Net image files (``{case}_{XXXX}.nii.gz``, channels in the model's modality order) or a whole
data folder. Per case, ``<case>_lesion.nii.gz`` (uint8) and ``<case>_probability.nii.gz``
(float32) are written on the case's native grid with its original affine and header.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from benchmark.data.cases import prediction_inputs, read_case
from benchmark.data.nifti import write_volume
from benchmark.data.preprocessing import PreprocessConfig, prepare, to_native
from benchmark.errors import ParameterError
from mlproject._cli import ArgumentParser, run
from models.onnx import Segmenter
from tracking import runs as tracking

DEFAULT_MODEL = f"models:/{tracking.REGISTERED_MODEL}@{tracking.CHAMPION_ALIAS}"


def main(argv: Sequence[str] | None = None) -> int:
    """Predict every case of ``input`` into ``output``."""
    from tqdm import tqdm

    parser = ArgumentParser(prog="python -m mlproject.predict", description=__doc__)
    parser.add_argument("--model", default=DEFAULT_MODEL, help="models:/ URI or .onnx path")
    parser.add_argument("--input", required=True, help="case folder, image set or data folder")
    parser.add_argument("--output", required=True, help="folder for the NIfTI outputs")
    parser.add_argument("--threshold", type=float, default=0.5, help="lesion probability threshold")
    args = parser.parse_args(argv)
    output = Path(args.output)
    if output.exists() and not output.is_dir():
        raise ParameterError(f"output '{output}' is a file, not a folder: choose another path")
    if args.model.startswith("models:/") or args.model.startswith("runs:/"):
        tracking.setup()
        onnx_path, sidecar = tracking.download_onnx_model(args.model)
    else:
        onnx_path, sidecar = Path(args.model), None
    segmenter = Segmenter(onnx_path, sidecar)
    config = PreprocessConfig.from_dict(segmenter.meta["preprocess"])
    refs = prediction_inputs(args.input, config.modalities)
    started = time.perf_counter()
    for ref in tqdm(refs, desc="predicting", unit="case"):
        case = read_case(ref)
        prepared = prepare(case, config)
        probability = to_native(segmenter.probability(prepared.image[None]), case.shape)[0]
        write_volume(output / f"{case.case_id}_probability.nii.gz", probability.astype(np.float32), case.affine,
                     header=case.header, dtype=np.float32)
        write_volume(output / f"{case.case_id}_lesion.nii.gz", (probability > args.threshold).astype(np.uint8),
                     case.affine, header=case.header, dtype=np.uint8)
    seconds = (time.perf_counter() - started) / max(1, len(refs))
    print(f"predicted {len(refs)} cases into {output} ({seconds:.2f} s per case, provider {segmenter.provider})")
    return 0


if __name__ == "__main__":
    sys.exit(run(main))
