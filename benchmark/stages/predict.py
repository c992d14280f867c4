"""The prediction stage: NIfTI in, lesion mask and probability out, by an exported ONNX model.

``model`` is a ``models:/`` or ``runs:/`` URI (default ``models:/strokelens-segmenter@champion``;
only these touch the MLflow store) or an ``.onnx`` file with its JSON beside it; ``input`` is one
ISLES 2017 case folder, a folder of nnU-Net image files (``{case}_{XXXX}.nii.gz``, channels in the
model's modality order) or a whole data folder. Outputs are written on the case's native grid with
its original affine and header, each atomically (complete or absent):

* ``naming="strokelens"``: ``<case>_lesion.nii.gz`` (uint8 mask) and ``<case>_probability.nii.gz``
  (float32 lesion probability), always both.
* ``naming="nnunet"``: ``<case>.nii.gz`` (uint8 mask) as nnU-Net's ``nnUNetv2_predict`` names it, and
  ``<case>_probability.nii.gz`` (float32) only with ``save_probabilities`` (nnU-Net writes ``.npz``
  there; ours stays NIfTI on the native grid).
* ``naming="isles2017"``: ``SMIR.<name>.<id>.nii`` (uint8 mask, uncompressed), the ISLES 2017
  challenge's submission name: ``<name>`` the submission's name (``submission``, letters, digits,
  ``_`` and ``-``), ``<id>`` the SMIR id of the case's MTT volume (the number after ``MR_MTT.`` in its
  file name, e.g. ``127014``), as the study's ``save_one_case`` writes it (``dataio/dataISLES2017.py:43-55,
  144-149``); ``<case>_probability.nii.gz`` only with ``save_probabilities``. A case without an MTT
  file of that name (an nnU-Net image set) fails with that reason.

The model's preprocessing (its JSON) decides how a case is run: a ``seed`` model sees the case resampled
to its training grid; a ``native`` model sees it resampled to its target spacing, tiled into Gaussian-weighted
sliding windows of its patch (:meth:`models.onnx.Segmenter.probability`); either probability is resampled
back to the case's native grid. Mask = probability > ``threshold``.

Each bad case (missing modality, corrupt or NaN file, files on different grids) is reported and the
others go on; labels are never read. A case whose outputs all exist is skipped unless ``overwrite``;
hidden temporary files left by a killed run (``.<name>.XXXXXXXX.tmp.nii.gz``) are removed at the
start. ``predictions.csv`` in the output folder holds one row per case: ``case, status (ok | skipped |
failed), lesion_ml, lesion_voxels, seconds, provider, cause``, with lesion volume in ml = mask voxels ×
voxel volume (product of the case's spacing in mm / 1000).
"""

from __future__ import annotations

import csv
import math
import re
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import nibabel as nib
import numpy as np

from benchmark.atomic import atomic_file, remove_temporary
from benchmark.data.cases import CaseRef, prediction_inputs, read_case
from benchmark.data.nifti import write_volume
from benchmark.data.preprocessing import PreprocessConfig, prepare, to_native
from benchmark.errors import CaseError, DataError, DataWarning, ParameterError
from benchmark.paths import check_writable
from models.errors import ModelError
from models.onnx import Segmenter
from tracking import model_registry
from tracking import runs as tracking

DEFAULT_MODEL = f"models:/{model_registry.REGISTERED_MODEL}@{model_registry.CHAMPION_ALIAS}"
NAMINGS: tuple[str, ...] = ("strokelens", "nnunet", "isles2017")
"""Output naming schemes (see the module docstring)."""
DEFAULT_SUBMISSION = "strokelens"
"""The ``<name>`` of ``SMIR.<name>.<id>.nii`` when none is given."""
_SUBMISSION = re.compile(r"[A-Za-z0-9_-]+")
_SMIR_ID = re.compile(r"\.MR_MTT\.(\d+)(?:\.|$)", re.IGNORECASE)
CSV_NAME = "predictions.csv"
CSV_COLUMNS: tuple[str, ...] = ("case", "status", "lesion_ml", "lesion_voxels", "seconds", "provider", "cause")


@dataclass
class CaseOutcome:
    """One case's row of ``predictions.csv``."""

    case: str
    status: str
    lesion_ml: float | None = None
    lesion_voxels: int | None = None
    seconds: float | None = None
    provider: str = ""
    cause: str = ""

    def row(self) -> dict[str, str]:
        """The CSV row (empty cells where a value does not apply)."""
        def cell(value, fmt):
            return "" if value is None else format(value, fmt)
        return {"case": self.case, "status": self.status, "lesion_ml": cell(self.lesion_ml, ".4f"),
                "lesion_voxels": cell(self.lesion_voxels, "d"), "seconds": cell(self.seconds, ".3f"),
                "provider": self.provider, "cause": self.cause}


@dataclass
class PredictionResult:
    """What a prediction did: one outcome per case, where, how fast and on which onnxruntime provider."""

    output: Path
    outcomes: list[CaseOutcome] = field(default_factory=list)
    provider: str = ""
    removed_temporary: int = 0

    def _with(self, status: str) -> list[CaseOutcome]:
        return [o for o in self.outcomes if o.status == status]

    @property
    def cases(self) -> list[str]:
        """The cases predicted by this call."""
        return [o.case for o in self._with("ok")]

    @property
    def failed(self) -> list[str]:
        """The cases that could not be predicted."""
        return [o.case for o in self._with("failed")]

    @property
    def skipped(self) -> list[str]:
        """The cases whose outputs already existed."""
        return [o.case for o in self._with("skipped")]

    @property
    def seconds_per_case(self) -> float:
        """Mean wall time of a predicted case (read, preprocess, run, write), s."""
        seconds = [o.seconds for o in self._with("ok") if o.seconds is not None]
        return sum(seconds) / len(seconds) if seconds else 0.0

    def line(self) -> str:
        """The summary line the command line prints."""
        done, failed = len(self.cases), self.failed
        text = f"predicted {done} of {done + len(failed)} cases" if failed else f"predicted {done} cases"
        text += f" into {self.output}"
        if failed:
            text += f"; {len(failed)} failed: {', '.join(failed)}"
        if self.skipped:
            text += f"; skipped {len(self.skipped)} with outputs already there (--overwrite redoes them)"
        if self.removed_temporary:
            text += f"; removed {self.removed_temporary} temporary files of an interrupted run"
        return text + f" ({self.seconds_per_case:.2f} s per case, provider {self.provider}; volumes in {CSV_NAME})"


def smir_id(ref: CaseRef) -> str:
    """The SMIR id of an ISLES 2017 case: the number after ``MR_MTT.`` in its MTT file's name.

    The MTT file is the model's input when MTT is among its modalities, else it is looked up in the
    case's folder (the folder named like the case above its files).

    Raises:
        CaseError: the case has no ``*.MR_MTT.<id>`` file (an nnU-Net image set, say).
    """
    candidates = [ref.images["MTT"]] if "MTT" in ref.images else []
    if not candidates:
        folders = [p for path in ref.images.values() for p in path.parents if p.name == ref.case_id]
        if folders:
            candidates = sorted(p for p in folders[0].rglob("*") if _SMIR_ID.search(p.name) and p.is_file())
    for path in candidates:
        match = _SMIR_ID.search(path.name)
        if match:
            return match.group(1)
    raise CaseError(ref.case_id, f"case {ref.case_id}: --naming isles2017 needs the SMIR id of the case's MTT file "
                    "(*.MR_MTT.<id>.nii, ISLES 2017 layout), and there is none: use --naming strokelens or nnunet")


def check_submission(name: str) -> str:
    """Return ``name`` if it can be the ``<name>`` of ``SMIR.<name>.<id>.nii``, else raise :class:`ParameterError`."""
    if not isinstance(name, str) or not _SUBMISSION.fullmatch(name):
        raise ParameterError(f"submission name {name!r} must be letters, digits, '_' or '-' (it becomes "
                             "SMIR.<name>.<id>.nii), e.g. strokelens_run1")
    return name


def output_names(case_id: str, naming: str = "strokelens", save_probabilities: bool = False, *,
                 submission: str = DEFAULT_SUBMISSION, case_smir_id: str = "") -> dict[str, str]:
    """File names of a case's outputs, ``{"mask": …, "probability": …}`` (see the module docstring).

    ``submission`` and ``case_smir_id`` (:func:`smir_id`) are the ``<name>`` and ``<id>`` of the
    ``isles2017`` naming.
    """
    if naming == "isles2017":
        if not case_smir_id.isdigit():
            raise ParameterError(f"case {case_id}: the isles2017 naming needs the case's numeric SMIR id, "
                                 f"got {case_smir_id!r}")
        names = {"mask": f"SMIR.{check_submission(submission)}.{case_smir_id}.nii"}
        if save_probabilities:
            names["probability"] = f"{case_id}_probability.nii.gz"
        return names
    if naming == "nnunet":
        names = {"mask": f"{case_id}.nii.gz"}
        if save_probabilities:
            names["probability"] = f"{case_id}_probability.nii.gz"
        return names
    return {"mask": f"{case_id}_lesion.nii.gz", "probability": f"{case_id}_probability.nii.gz"}


def check_threshold(threshold: float) -> float:
    """Return ``threshold`` if it is a finite number in (0, 1), else raise :class:`ParameterError`."""
    try:
        value = float(threshold)
    except (TypeError, ValueError):
        value = math.nan
    if not (math.isfinite(value) and 0.0 < value < 1.0):
        raise ParameterError(f"threshold {threshold!r} must be a number strictly between 0 and 1 (a lesion "
                             "probability), e.g. 0.5")
    return value


def _make_output(output: Path) -> None:
    try:
        output.mkdir(parents=True, exist_ok=True)
        probe = output / f".{CSV_NAME}.probe"
        probe.touch()
        probe.unlink()
    except OSError as exc:
        raise ParameterError(f"cannot write into output folder '{output}' ({type(exc).__name__}: {exc.strerror}): "
                             "choose a writable place") from exc


def _natural(case: str) -> list:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", case)]


def _previous_rows(path: Path) -> dict[str, dict[str, str]]:
    try:
        with open(path, newline="") as fh:
            return {row["case"]: row for row in csv.DictReader(fh) if row.get("case")}
    except (OSError, UnicodeDecodeError, csv.Error, KeyError):
        return {}


def _write_csv(output: Path, outcomes: dict[str, CaseOutcome]) -> None:
    try:
        with atomic_file(output / CSV_NAME) as tmp, open(tmp, "w", newline="") as fh:
            writer = csv.DictWriter(fh, CSV_COLUMNS)
            writer.writeheader()
            for case in sorted(outcomes, key=_natural):
                writer.writerow(outcomes[case].row())
    except OSError as exc:
        raise ParameterError(f"cannot write '{output / CSV_NAME}' ({exc.strerror}): free space or choose "
                             "another output folder") from exc


def _skipped(ref: CaseRef, paths: dict[str, Path], previous: dict[str, dict[str, str]]) -> CaseOutcome | None:
    """The outcome of a case whose outputs exist (its volume read back from the mask), or None to redo it."""
    if not all(p.is_file() for p in paths.values()):
        return None
    try:
        image = nib.load(str(paths["mask"]))
        voxels = int(np.count_nonzero(np.asanyarray(image.dataobj)))
        voxel_ml = float(np.prod(image.header.get_zooms()[:3])) / 1000.0
    except Exception:  # an unreadable output is redone
        return None
    before = previous.get(ref.case_id, {})
    try:
        seconds = float(before["seconds"])
    except (KeyError, ValueError):
        seconds = None
    return CaseOutcome(ref.case_id, "skipped", voxels * voxel_ml, voxels, seconds, before.get("provider", ""))


def _cause(case_id: str, exc: Exception) -> str:
    text = " ".join(str(exc).split())
    prefix = f"case {case_id}: "
    return text[len(prefix):] if text.startswith(prefix) else text


def predict_cases(input: str | Path, output: str | Path, model: str = DEFAULT_MODEL, threshold: float = 0.5, *,
                  naming: str = "strokelens", save_probabilities: bool = False, overwrite: bool = False,
                  submission: str = DEFAULT_SUBMISSION,
                  on_case: Callable[[CaseOutcome], None] | None = None) -> PredictionResult:
    """Predict every case of ``input`` into ``output`` (see the module docstring).

    Args:
        input: a case folder, a folder of nnU-Net image files, or a data folder.
        output: the folder that receives the NIfTI outputs and ``predictions.csv``.
        model: a ``models:/`` or ``runs:/`` URI, or an ``.onnx`` path.
        threshold: lesion probability threshold of the mask, in (0, 1).
        naming: ``strokelens``, ``nnunet`` or ``isles2017`` output names.
        save_probabilities: with ``nnunet`` or ``isles2017`` naming, also write the probability map.
        overwrite: redo cases whose outputs already exist (default: skip them).
        submission: the ``<name>`` of the ``isles2017`` naming's ``SMIR.<name>.<id>.nii``.
        on_case: called with each case's outcome as soon as it is known (the CLI prints failures).

    Returns:
        One outcome per case; a failed case does not raise.

    Raises:
        ParameterError: a bad threshold or naming, or an output that cannot be written.
        TrackingError: the model URI does not resolve.
        ModelError, DataError: the model cannot be read, or the input is no known layout.
    """
    from tqdm import tqdm

    threshold = check_threshold(threshold)
    if naming not in NAMINGS:
        raise ParameterError(f"naming '{naming}' is unknown: choose {', '.join(NAMINGS)}")
    check_submission(submission)
    output = Path(output)
    check_writable(output, "output")
    if model.startswith(("models:/", "runs:/")):
        tracking.setup()
        onnx_path, sidecar = model_registry.download_onnx_model(model)
    else:
        onnx_path, sidecar = Path(model), None
    segmenter = Segmenter(onnx_path, sidecar)
    config = PreprocessConfig.from_dict(segmenter.meta["preprocess"])
    problems: list[CaseError] = []
    refs = prediction_inputs(input, config.modalities, problems)
    _make_output(output)
    result = PredictionResult(output, provider=segmenter.provider, removed_temporary=remove_temporary(output))
    previous = _previous_rows(output / CSV_NAME)
    outcomes: dict[str, CaseOutcome] = {}

    def record(outcome: CaseOutcome) -> None:
        outcomes[outcome.case] = outcome
        result.outcomes.append(outcome)
        if on_case is not None:
            on_case(outcome)

    for problem in problems:
        record(CaseOutcome(problem.case_id, "failed", cause=_cause(problem.case_id, problem)))
    for ref in tqdm(refs, desc="predicting", unit="case"):
        try:
            identity = smir_id(ref) if naming == "isles2017" else ""
        except CaseError as exc:
            record(CaseOutcome(ref.case_id, "failed", cause=_cause(ref.case_id, exc)))
            _write_csv(output, outcomes)
            continue
        names = output_names(ref.case_id, naming, save_probabilities, submission=submission, case_smir_id=identity)
        paths = {kind: output / name for kind, name in names.items()}
        skipped = None if overwrite else _skipped(ref, paths, previous)
        if skipped is not None:
            record(skipped)
            continue
        started = time.perf_counter()
        try:
            case = read_case(replace(ref, label=None, evidence=None))  # ground truth is never needed here
            image = prepare(case, config).image[None]
            probability = to_native(segmenter.probability(image, window=config.window()), case.shape)[0]
        except (DataError, ParameterError, ModelError) as exc:
            record(CaseOutcome(ref.case_id, "failed", provider=segmenter.provider, cause=_cause(ref.case_id, exc)))
            _write_csv(output, outcomes)
            continue
        mask = (probability > threshold).astype(np.uint8)
        try:
            if "probability" in paths:
                write_volume(paths["probability"], probability.astype(np.float32), case.affine, header=case.header,
                             dtype=np.float32)
            write_volume(paths["mask"], mask, case.affine, header=case.header, dtype=np.uint8)
        except OSError as exc:
            raise ParameterError(f"cannot write the outputs of case {case.case_id} into '{output}' "
                                 f"({exc.strerror}): free space or choose another output folder") from exc
        voxels = int(mask.sum())
        if voxels == 0:
            warnings.warn(f"case {case.case_id}: the predicted lesion mask is empty (no voxel above threshold "
                          f"{threshold:g}): check the case or lower --threshold", DataWarning, stacklevel=2)
        record(CaseOutcome(case.case_id, "ok", voxels * case.voxel_ml, voxels, time.perf_counter() - started,
                           segmenter.provider))
        _write_csv(output, outcomes)
    _write_csv(output, outcomes)
    return result
