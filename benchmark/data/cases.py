"""Data sets on disk → :class:`Case`: ISLES 2017 and nnU-Net v2 raw layouts.

Both loaders first *discover* cases (cheap: paths only, as :class:`CaseRef`) and read a case
only when asked (:func:`read_case`), so a data set of any size opens instantly and the
preprocessing cache decides what is read again.

ISLES 2017: ``training_N/`` and ``test_N/`` folders; per file one folder named like the file,
``<prefix>.Brain.XX.O.MR_<MOD>.<id>/<same>.nii`` and ``<prefix>.Brain.XX.O.OT.<id>/…`` for the
label. The prefix varies (``SMIR``, ``VSD``), so files are matched by ``*.MR_<MOD>.*``. 4DPWI is
never a model input. Optional ``ISLES2017_Training``/``ISLES2017_Testing`` tables (CSV) beside the
case folders become ``Case.clinical``. A synthetic ``evidence.nii.gz`` sidecar is read only when
asked.

nnU-Net raw: ``dataset.json`` (``channel_names``, ``file_ending``), ``imagesTr/{case}_{XXXX}``,
``labelsTr/{case}``, ``imagesTs/{case}_{XXXX}``; channels are matched to modality names through
``channel_names``.

The module is over 400 lines because both layouts share :class:`Case`, :class:`CaseRef`, the
per-case error collection and the prediction-input rules; split per layout, each half would
re-import the other's half.
"""

from __future__ import annotations

import csv
import json
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np

from benchmark.data.nifti import read_volume, to_dhw
from benchmark.errors import CaseError, DataError, DataWarning, ParameterError

MODALITIES: tuple[str, ...] = ("ADC", "MTT", "rCBF", "rCBV", "Tmax", "TTP")
"""The six ISLES 2017 maps used as model inputs, in the project's default channel order."""

ISLES_MODALITIES: tuple[str, ...] = ("ADC", "MTT", "rCBF", "rCBV", "Tmax", "TTP", "4DPWI")
"""Every map an ISLES 2017 case may hold; the model inputs default to :data:`MODALITIES`."""


@dataclass
class Case:
    """One case in memory.

    Attributes:
        case_id: e.g. ``training_3``.
        modalities: (C, D, H, W) float32, D = slices (NIfTI Z), H = NIfTI Y, W = NIfTI X.
        modality_names: channel names in the order of ``modalities``.
        label: (D, H, W) uint8 in {0, 1}, or None for cases without ground truth.
        affine: 4×4 voxel-to-world matrix of the case's files (NIfTI (i, j, k) convention).
        spacing: voxel size in mm in (D, H, W) order.
        evidence: (C, D, H, W) bool ground-truth evidence per modality (synthetic data), or None.
        clinical: the clinical-table row, or None.
        header: the NIfTI header of the first modality, reused when writing outputs.
    """

    case_id: str
    modalities: np.ndarray
    modality_names: tuple[str, ...]
    label: np.ndarray | None
    affine: np.ndarray
    spacing: tuple[float, float, float]
    evidence: np.ndarray | None = None
    clinical: dict[str, str] | None = None
    header: object | None = None

    @property
    def shape(self) -> tuple[int, int, int]:
        """Native grid (D, H, W)."""
        return tuple(self.modalities.shape[1:])  # type: ignore[return-value]

    @property
    def voxel_ml(self) -> float:
        """Volume of one voxel in ml (mm³ / 1000)."""
        return float(np.prod(self.spacing)) / 1000.0


@dataclass(frozen=True)
class CaseRef:
    """Where a case's files are; :func:`read_case` turns it into a :class:`Case`."""

    case_id: str
    images: dict[str, Path]
    label: Path | None
    evidence: Path | None = None
    evidence_modalities: tuple[str, ...] = ()
    clinical: dict[str, str] | None = field(default=None, compare=False)

    @property
    def files(self) -> tuple[Path, ...]:
        """Every file this case reads (for cache keys)."""
        extra = [p for p in (self.label, self.evidence) if p is not None]
        return tuple(self.images.values()) + tuple(extra)


def check_modalities(modalities: Sequence[str], available: Sequence[str], where: str) -> tuple[str, ...]:
    """Return ``modalities`` as a tuple, or raise naming the unknown ones and the valid names."""
    unknown = [m for m in modalities if m not in available]
    if unknown or not modalities:
        raise ParameterError(
            f"unknown modality {', '.join(unknown) or '(none given)'} for {where}: "
            f"choose from {', '.join(available)}"
        )
    if "4DPWI" in modalities:
        raise ParameterError("4DPWI is a 4-D time series and not a model input: drop it from modalities")
    return tuple(modalities)


def detect_layout(root: str | Path) -> str:
    """Return ``'isles2017'`` or ``'nnunet'`` for a data folder, or raise :class:`DataError`."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"data folder '{root}' does not exist: generate one with "
                        "'python -m mlproject.synth --out DIR' or point to your data")
    if (root / "dataset.json").is_file():
        return "nnunet"
    if any(p.is_dir() and re.fullmatch(r"(training|test)_\d+", p.name) for p in root.iterdir()):
        return "isles2017"
    raise DataError(
        f"'{root}' holds neither ISLES 2017 case folders (training_N/, test_N/) nor an nnU-Net "
        "dataset.json: point to the folder that contains them"
    )


def discover(
    root: str | Path,
    modalities: Sequence[str] = MODALITIES,
    *,
    split: str = "all",
    with_evidence: bool = False,
    problems: list[CaseError] | None = None,
) -> list[CaseRef]:
    """Find the cases of a data folder in either layout.

    Args:
        root: an ISLES 2017 folder or an nnU-Net ``DatasetXXX_Name`` folder.
        modalities: channels to load, in this order.
        split: ``train`` (cases with ground truth), ``test`` (without) or ``all``.
        with_evidence: attach the synthetic evidence sidecar when present.
        problems: when given, a case that cannot be used (a missing or duplicated file) is appended
            here as a :class:`CaseError` naming the case and the file, and the others are returned;
            when None the first such case raises. A broken case outside ``split`` never counts.

    Returns:
        Case references sorted by case number.

    Raises:
        DataError: the folder is missing, of no known layout, holds no case of ``split``, or (without
            ``problems``) a case of ``split`` lacks a modality.
        ParameterError: an unknown modality or split.
    """
    if split not in ("train", "test", "all"):
        raise ParameterError(f"split '{split}' is unknown: choose train, test or all")
    layout = detect_layout(root)
    finder = _discover_isles if layout == "isles2017" else _discover_nnunet
    found = finder(Path(root), tuple(modalities), with_evidence)

    def wanted(labelled: bool) -> bool:
        return split == "all" or (split == "train") == labelled

    broken = [f for f in found if isinstance(f, CaseError) and wanted(f.labelled)]
    if broken and problems is None:
        raise broken[0]
    if problems is not None:
        problems.extend(broken)
    refs = [f for f in found if isinstance(f, CaseRef) and wanted(f.label is not None)]
    if not refs and not broken:
        raise DataError(f"'{root}' holds no {'' if split == 'all' else split + ' '}case: "
                        "check the folder or generate synthetic data with mlproject.synth")
    return refs


def _natural_key(text: str):
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", text)]


def _read_table(root: Path, stem: str) -> dict[str, dict[str, str]]:
    path = root / f"{stem}.csv"
    if not path.is_file():
        return {}
    try:
        with open(path, newline="") as fh:
            rows = list(csv.DictReader(fh))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"cannot read clinical table '{path}' ({exc}): fix or remove it") from exc
    key = next((k for k in ("case", "Case", "ID", "id") if rows and k in rows[0]), None)
    if key is None:
        raise DataError(f"clinical table '{path}' has no 'case' column: add one naming the case folders")
    return {row[key]: row for row in rows}


def _nifti_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.name.endswith((".nii", ".nii.gz")))


def _discover_isles(root: Path, modalities: tuple[str, ...], with_evidence: bool) -> list[CaseRef | CaseError]:
    check_modalities(modalities, ISLES_MODALITIES, f"ISLES 2017 data in '{root}'")
    clinical = {**_read_table(root, "ISLES2017_Training"), **_read_table(root, "ISLES2017_Testing")}
    named = [p for p in root.iterdir() if re.fullmatch(r"(training|test)_\d+", p.name)]
    for stray in sorted(p for p in named if not p.is_dir()):
        warnings.warn(f"'{stray}' is a file where a case folder is expected: skipped (an ISLES 2017 case is "
                      "a folder of per-file folders)", DataWarning, stacklevel=3)
    folders = [p for p in named if p.is_dir()]
    found: list[CaseRef | CaseError] = []
    for folder in sorted(folders, key=lambda p: (p.name.startswith("test"), _natural_key(p.name))):
        try:
            found.append(isles_case(folder, modalities, with_evidence, clinical.get(folder.name)))
        except CaseError as exc:
            found.append(exc)
    return found


def isles_case(folder: Path, modalities: Sequence[str] = MODALITIES, with_evidence: bool = False,
               clinical: dict | None = None) -> CaseRef:
    """One ISLES 2017 case folder (``*.MR_<MOD>.*`` files, optional ``*.OT.*`` label).

    Raises:
        CaseError: a modality's file is missing or duplicated, or the label is duplicated; the
            message names the case and the file.
    """
    folder = Path(folder)
    files = _nifti_files(folder)
    labels = [p for p in files if re.search(r"\.OT\.", p.name)]
    if len(labels) > 1:
        raise CaseError(folder.name, f"case {folder.name}: several OT label files in '{folder}' "
                        f"({', '.join(p.name for p in labels)}): keep one")
    images = {}
    for name in modalities:
        pattern = re.compile(rf"\.MR_{re.escape(name)}\.", re.IGNORECASE)
        hits = [p for p in files if pattern.search(p.name)]
        if not hits:
            raise CaseError(folder.name, f"case {folder.name}: no {name} file (*.MR_{name}.*.nii) in '{folder}': "
                            f"add it or leave {name} out of modalities", labelled=bool(labels))
        if len(hits) > 1:
            raise CaseError(folder.name, f"case {folder.name}: several {name} files in '{folder}' "
                            f"({', '.join(p.name for p in hits)}): keep one", labelled=bool(labels))
        images[name] = hits[0]
    evidence, ev_modalities = None, ()
    sidecar = folder / "evidence.json"
    if with_evidence and sidecar.is_file():
        meta = json.loads(sidecar.read_text())
        evidence, ev_modalities = folder / meta["file"], tuple(meta["modalities"])
    return CaseRef(folder.name, images, labels[0] if labels else None, evidence, ev_modalities, clinical)


def _channel_files(folder: Path, ending: str) -> dict[str, dict[int, Path]]:
    """``{case}_{XXXX}<ending>`` files of a folder as {case: {channel: path}} (``ending`` a regex)."""
    pattern = re.compile(rf"(.+)_(\d{{4}}){ending}$")
    cases: dict[str, dict[int, Path]] = {}
    for p in folder.iterdir():
        match = pattern.match(p.name)
        if match:
            cases.setdefault(match.group(1), {})[int(match.group(2))] = p
    return cases


def _discover_nnunet(root: Path, modalities: tuple[str, ...], with_evidence: bool) -> list[CaseRef | CaseError]:
    meta_path = root / "dataset.json"
    try:
        meta = json.loads(meta_path.read_text())
        channels = {str(v): int(k) for k, v in meta["channel_names"].items()}
        ending = meta.get("file_ending", ".nii.gz")
    except (OSError, ValueError, KeyError, AttributeError) as exc:
        raise DataError(f"'{meta_path}' is not a valid nnU-Net dataset.json ({exc}): "
                        "it needs channel_names and file_ending") from exc
    check_modalities(modalities, tuple(channels), f"nnU-Net data set '{root}' (channel_names)")
    clinical = {**_read_table(root, "ISLES2017_Training"), **_read_table(root, "ISLES2017_Testing")}
    ev_meta = meta.get("evidence") if with_evidence else None
    refs: list[CaseRef | CaseError] = []
    for images_dir, labelled in (("imagesTr", True), ("imagesTs", False)):
        folder = root / images_dir
        if not folder.is_dir():
            continue
        cases = _channel_files(folder, re.escape(ending))
        for case_id in sorted(cases, key=_natural_key):
            missing = [name for name in modalities if channels[name] not in cases[case_id]]
            if missing:
                refs.append(CaseError(case_id, f"case {case_id}: "
                                      f"'{folder / f'{case_id}_{channels[missing[0]]:04d}{ending}'}' "
                                      f"({missing[0]}) is missing: add it or leave {missing[0]} out of "
                                      "modalities", labelled))
                continue
            images = {name: cases[case_id][channels[name]] for name in modalities}
            label = root / "labelsTr" / f"{case_id}{ending}" if labelled else None
            if label is not None and not label.is_file():
                refs.append(CaseError(case_id, f"label '{label}' is missing for training case {case_id}: add it "
                                      "or move the case's images to imagesTs"))
                continue
            evidence, ev_modalities = None, ()
            if ev_meta and labelled:
                candidate = root / ev_meta["folder"] / f"{case_id}.nii.gz"
                if candidate.is_file():
                    evidence, ev_modalities = candidate, tuple(ev_meta["modalities"])
            refs.append(CaseRef(case_id, images, label, evidence, ev_modalities, clinical.get(case_id)))
    return refs


def read_case(ref: CaseRef) -> Case:
    """Read and validate the files of one case.

    Raises:
        DataError: a file is corrupt, not 3-D, holds NaN/Inf, grids or affines differ between the
            case's files, or the label is not binary.
    """
    arrays, first = [], None
    for name, path in ref.images.items():
        volume = read_volume(path, what=f"{name} image")
        if first is None:
            first = (path, volume)
        else:
            _check_same_grid(first[0], first[1], path, volume)
        if not np.any(volume.data):
            warnings.warn(f"case {ref.case_id}: the {name} image '{path}' is all zero: check the file (a failed "
                          "export or an empty map)", DataWarning, stacklevel=2)
        arrays.append(volume.data)
    assert first is not None
    ref_path, ref_volume = first
    label = None
    if ref.label is not None:
        volume = read_volume(ref.label, what="label")
        _check_same_grid(ref_path, ref_volume, ref.label, volume)
        values = np.unique(volume.data)
        if not np.isin(values, (0.0, 1.0)).all():
            shown = ", ".join(f"{v:g}" for v in values[:6])
            raise DataError(f"label '{ref.label}' is not binary (values {shown}): store the lesion "
                            "as 1 and background as 0")
        label = volume.data.astype(np.uint8)
    evidence = None
    if ref.evidence is not None:
        evidence = _read_evidence(ref, ref_volume.data.shape)
    return Case(ref.case_id, np.stack(arrays).astype(np.float32), tuple(ref.images), label,
                ref_volume.affine, ref_volume.spacing, evidence, ref.clinical, ref_volume.header)


def _read_evidence(ref: CaseRef, shape: tuple[int, ...]) -> np.ndarray:
    try:
        stack = np.asanyarray(nib.load(str(ref.evidence), mmap=False).dataobj)
    except Exception as exc:
        raise DataError(f"cannot read evidence sidecar '{ref.evidence}' ({exc}): regenerate the "
                        "synthetic data") from exc
    stack = to_dhw(stack)
    if stack.shape[:3] != tuple(shape):
        raise DataError(f"evidence sidecar '{ref.evidence}' has grid {stack.shape[:3]}, the case "
                        f"{tuple(shape)}: regenerate the synthetic data")
    index = {m: k for k, m in enumerate(ref.evidence_modalities)}
    channels = [stack[..., index[m]] if m in index else np.zeros(shape, bool) for m in ref.images]
    return np.stack(channels).astype(bool)


def _check_same_grid(path_a: Path, a, path_b: Path, b) -> None:
    if a.data.shape != b.data.shape:
        raise DataError(
            f"'{path_b}' has grid {b.data.shape[::-1]} (X, Y, Z) but '{path_a}' has "
            f"{a.data.shape[::-1]}: resample the case's files to one grid"
        )
    if not np.allclose(a.affine, b.affine, atol=1e-3):
        raise DataError(f"'{path_b}' and '{path_a}' have different affines (voxel-to-world): "
                        "resample the case's files to one grid")


def check_labels(cases: Sequence, what: str = "training cases") -> None:
    """Warn (:class:`DataWarning`) when no case has a lesion voxel: training would end at Dice 0 without a word.

    ``cases`` are anything with a ``label`` array (``Case``, prepared cases); unlabelled ones are ignored.
    """
    labels = [c.label for c in cases if c.label is not None]
    if labels and not any(np.any(label > 0.5) for label in labels):
        warnings.warn(f"none of the {len(labels)} {what} has a lesion voxel: every label is empty, so Dice "
                      "stays 0; check the label files (lesion = 1)", DataWarning, stacklevel=2)


def load_cases(
    root: str | Path,
    modalities: Sequence[str] = MODALITIES,
    *,
    split: str = "all",
    with_evidence: bool = False,
) -> list[Case]:
    """Discover and read every case of ``split`` (see :func:`discover`)."""
    return [read_case(r) for r in discover(root, modalities, split=split, with_evidence=with_evidence)]


def image_set(folder: str | Path, modalities: Sequence[str]) -> list[CaseRef]:
    """Cases of a folder of nnU-Net image files ``{case}_{XXXX}.nii[.gz]`` with channels in ``modalities`` order.

    Raises:
        DataError: a case misses a channel or has more channels than ``modalities``.
    """
    folder = Path(folder)
    cases = _channel_files(folder, r"\.nii(\.gz)?")
    refs = []
    for case_id in sorted(cases, key=_natural_key):
        channels = cases[case_id]
        extra = sorted(k for k in channels if k >= len(modalities))
        if extra:
            raise DataError(f"case {case_id} in '{folder}' has channel {extra[0]:04d} but the model takes "
                            f"{len(modalities)} ({', '.join(modalities)}): remove the extra file")
        missing = [k for k in range(len(modalities)) if k not in channels]
        if missing:
            raise DataError(f"case {case_id} in '{folder}' lacks channel {missing[0]:04d} "
                            f"({modalities[missing[0]]}): add it")
        refs.append(CaseRef(case_id, {m: channels[k] for k, m in enumerate(modalities)}, None))
    return refs


def prediction_inputs(path: str | Path, modalities: Sequence[str], problems: list[CaseError] | None = None
                      ) -> list[CaseRef]:
    """What ``predict`` accepts: a data folder (either layout), one ISLES case folder, or an image set.

    ``problems`` collects the cases of a data folder that cannot be used (see :func:`discover`).
    """
    path = Path(path)
    if not path.is_dir():
        raise DataError(f"input '{path}' is not a folder: give a case folder, an image set or a data folder")
    try:
        detect_layout(path)
    except DataError:
        pass
    else:  # a data folder: its broken cases are reported one by one, never blamed on the folder
        return discover(path, modalities, problems=problems)
    names = [p.name for p in _nifti_files(path)]
    if any(".MR_" in n for n in names):
        return [isles_case(path, modalities)]
    if any(re.search(r"_\d{4}\.nii(\.gz)?$", n) for n in names):
        return image_set(path, modalities)
    raise DataError(f"'{path}' holds no ISLES 2017 case, nnU-Net image set or data set: point to one")
