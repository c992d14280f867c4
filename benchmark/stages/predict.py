"""The prediction stage: NIfTI in, lesion mask and probability out, by an exported ONNX model.

``model`` is a ``models:/`` URI (default ``models:/strokelens-segmenter@champion``) or an
``.onnx`` file with its JSON beside it; ``input`` is one ISLES 2017 case folder, a folder of
nnU-Net image files (``{case}_{XXXX}.nii.gz``, channels in the model's modality order) or a whole
data folder. Per case, ``<case>_lesion.nii.gz`` (uint8) and ``<case>_probability.nii.gz``
(float32) are written on the case's native grid with its original affine and header.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from benchmark.data.cases import prediction_inputs, read_case
from benchmark.data.nifti import write_volume
from benchmark.data.preprocessing import PreprocessConfig, prepare, to_native
from benchmark.errors import ParameterError
from models.onnx import Segmenter
from tracking import model_registry
from tracking import runs as tracking

DEFAULT_MODEL = f"models:/{model_registry.REGISTERED_MODEL}@{model_registry.CHAMPION_ALIAS}"


@dataclass
class PredictionResult:
    """What a prediction wrote: the cases, where, how fast and on which onnxruntime provider."""

    output: Path
    cases: list[str] = field(default_factory=list)
    seconds_per_case: float = 0.0
    provider: str = ""

    def line(self) -> str:
        """The summary line the command line prints."""
        return (f"predicted {len(self.cases)} cases into {self.output} ({self.seconds_per_case:.2f} s per case, "
                f"provider {self.provider})")


def predict_cases(input: str | Path, output: str | Path, model: str = DEFAULT_MODEL,
            threshold: float = 0.5) -> PredictionResult:
    """Predict every case of ``input`` into ``output`` (see the module docstring).

    Args:
        input: a case folder, a folder of nnU-Net image files, or a data folder.
        output: the folder that receives the NIfTI outputs.
        model: a ``models:/`` or ``runs:/`` URI, or an ``.onnx`` path.
        threshold: lesion probability threshold of the mask.

    Raises:
        ParameterError: ``output`` is a file.
        TrackingError: the model URI does not resolve.
        ModelError, DataError: the model or an input cannot be read.
    """
    from tqdm import tqdm

    output = Path(output)
    if output.exists() and not output.is_dir():
        raise ParameterError(f"output '{output}' is a file, not a folder: choose another path")
    if model.startswith("models:/") or model.startswith("runs:/"):
        tracking.setup()
        onnx_path, sidecar = model_registry.download_onnx_model(model)
    else:
        onnx_path, sidecar = Path(model), None
    segmenter = Segmenter(onnx_path, sidecar)
    config = PreprocessConfig.from_dict(segmenter.meta["preprocess"])
    refs = prediction_inputs(input, config.modalities)
    result = PredictionResult(output, provider=segmenter.provider)
    started = time.perf_counter()
    for ref in tqdm(refs, desc="predicting", unit="case"):
        case = read_case(ref)
        probability = to_native(segmenter.probability(prepare(case, config).image[None]), case.shape)[0]
        write_volume(output / f"{case.case_id}_probability.nii.gz", probability.astype(np.float32), case.affine,
                     header=case.header, dtype=np.float32)
        write_volume(output / f"{case.case_id}_lesion.nii.gz", (probability > threshold).astype(np.uint8),
                     case.affine, header=case.header, dtype=np.uint8)
        result.cases.append(case.case_id)
    result.seconds_per_case = (time.perf_counter() - started) / max(1, len(refs))
    return result
