"""A data set's fingerprint and its plan for ``native`` preprocessing (after nnU-Net's experiment planning).

:func:`fingerprint` reads every labelled case once: native grid and spacing, brain and lesion volume
(ml), and per modality a sample of the intensities inside the brain mask. :func:`make_plan` turns it
into a :class:`Plan`, written as ``plan.json`` (atomically) and turned into the ``native``
:class:`~benchmark.data.preprocessing.PreprocessConfig` in one place, :meth:`Plan.preprocess`.
Sizes and spacings are written X×Y×Z (the study's convention); arrays are (D, H, W) = (Z, Y, X).

The rules (nnU-Net v2: Isensee et al., Nature Methods 18, 2021; ``ExperimentPlanner`` in
``nnunetv2/experiment_planning/experiment_planners/default_experiment_planner.py``):

* **Target spacing** (:func:`target_spacing`, nnU-Net's ``determine_fullres_target_spacing``): the median
  spacing per axis. When the axis of the largest median spacing is more than ``ANISOTROPY`` = 3 times the
  largest other median spacing *and* its median size times 3 is below the smallest other median size
  (nnU-Net's ``ANISO_THRESHOLD``; both conditions, as nnU-Net), that axis takes the 10th percentile of its
  spacings instead, but never less than the largest other target spacing (nnU-Net adds 1e-5 there).
* **Median resampled shape**: per case ``round(n · s / t)`` (native size ``n``, spacing ``s``, target
  ``t``, :meth:`PreprocessConfig.shape_for`), median per axis, rounded.
* **Patch and batch** (:func:`plan_patch`): training memory is estimated as
  ``M(p, b) = 2 · b · V(p) · a · e + 4 · P · 4`` bytes: ``V(p)`` voxels of the patch, ``a`` the
  network's activation elements per input voxel (every module output counted once by forward hooks on
  a probe input, :func:`activations_per_voxel`; the stored activations and, at the backward pass's peak,
  their gradients: factor 2), ``e`` = 4 bytes (float32; mixed precision only lowers it), ``P`` the
  parameters (weights, gradients and Adam's two moments, float32). The patch starts at the median
  resampled shape rounded down to a multiple of the network's down-sampling factor ``2^depth``
  (:func:`downsampling_factor`: 8 for every registered family, three stride-2 steps), at least one
  factor; while ``M(p, 2) > budget`` the axis largest relative to the median shape shrinks by one factor
  (nnU-Net's loop, with nnU-Net's least batch of 2). The batch is then
  ``max(2, min(⌊(budget − 16 P) / (2 · V · a · e)⌋, round(0.05 · N · V_median / V)))``: what fits, capped
  so a batch covers at most 5 % of the data set's voxels (nnU-Net's over-fitting cap).
* **Budget** (:func:`memory_budget`): on CUDA 80 % of the device's memory; on a CPU
  ``min(¼ of the physical memory, 2 GiB)``: the same product of voxels and features sets a CPU's time per
  step, so a CPU plan keeps patches small.
* **Normalisation**: per modality ``robust`` (z-score inside the brain mask, nnU-Net's choice for MRI,
  the default) or the study's ``minmax``; one scheme for every modality (the maps are all MRI).
* **Resampling orders** (:func:`benchmark.data.preprocessing.resample`): images are normalised on the
  native grid, then resampled linearly (first order: trilinear where the grid grows, the
  overlap-weighted mean over each target voxel's footprint where it shrinks); labels are resampled the
  same way as fractions and thresholded at 0.5 where a mask is needed. nnU-Net resamples images with
  third-order splines (and the low-resolution axis with order 0 when anisotropic); first order cannot
  overshoot the intensity range and keeps lesion volume where the grid shrinks.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from benchmark.atomic import atomic_file
from benchmark.data.cases import MODALITIES, check_modalities, detect_layout, discover, read_case
from benchmark.data.preprocessing import NORMALIZATIONS, PreprocessConfig, brain_mask
from benchmark.errors import DataError, ParameterError

PLAN_FILE = "plan.json"
PLAN_VERSION = 1
ANISOTROPY = 3.0
"""nnU-Net's ``ANISO_THRESHOLD`` (``nnunetv2/configuration.py``)."""
LOW_RESOLUTION_PERCENTILE = 10.0
MIN_BATCH = 2
DATASET_SHARE = 0.05
BYTES_PER_ELEMENT = 4
CPU_BUDGET_CAP = 2 * 1024**3
GPU_BUDGET_SHARE = 0.8
INTENSITY_SAMPLES = 10_000
"""Brain voxels sampled per case and modality for the intensity statistics (uniformly, seed 0)."""
PROBE_DHW = (16, 32, 32)
RESAMPLING = {
    "image": "normalise on the native grid, then first order: trilinear (align_corners=False) where the grid "
             "grows, overlap-weighted mean over each target voxel's footprint where it shrinks",
    "label": "the same first-order resampling of the lesion fraction, thresholded at 0.5 where a mask is needed",
    "prediction": "lesion probability resampled back to the native grid the same way, thresholded there",
}


def _xyz(dhw: Sequence) -> list:
    return [dhw[2], dhw[1], dhw[0]]


@dataclass(frozen=True)
class CaseFingerprint:
    """What planning needs of one case: grid (X, Y, Z) voxels, spacing (X, Y, Z) mm, brain and lesion ml."""

    case_id: str
    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    brain_ml: float
    lesion_ml: float


@dataclass
class Fingerprint:
    """A data set's fingerprint: its labelled cases and per-modality intensity statistics inside the brain.

    ``intensity[m]`` holds ``mean``, ``std``, ``median``, ``p00_5``, ``p99_5``, ``min``, ``max`` of the pooled
    samples (:data:`INTENSITY_SAMPLES` brain voxels per case) of modality ``m``, in the map's unit.
    """

    data: str
    layout: str
    modalities: tuple[str, ...]
    cases: list[CaseFingerprint]
    intensity: dict[str, dict[str, float]]

    @property
    def spacings(self) -> np.ndarray:
        """(cases, 3) spacings X, Y, Z in mm."""
        return np.array([c.spacing for c in self.cases], dtype=np.float64)

    @property
    def shapes(self) -> np.ndarray:
        """(cases, 3) sizes X, Y, Z in voxels."""
        return np.array([c.shape for c in self.cases], dtype=np.float64)

    def to_dict(self) -> dict:
        """JSON-ready, with the medians and the lesion-volume range."""
        lesions = [c.lesion_ml for c in self.cases]
        return json.loads(json.dumps({"data": self.data, "layout": self.layout, "modalities": list(self.modalities),
                "cases": [asdict(c) for c in self.cases],
                "median_spacing": np.median(self.spacings, 0).tolist(),
                "median_shape": np.median(self.shapes, 0).tolist(),
                "lesion_ml": {"median": float(np.median(lesions)), "min": float(np.min(lesions)),
                              "max": float(np.max(lesions))},
                "intensity": self.intensity}))


def fingerprint(data: str | Path, modalities: Sequence[str] = MODALITIES, progress: bool = True) -> Fingerprint:
    """Read every labelled case of ``data`` once (module docstring).

    Raises:
        DataError: the folder holds no labelled case (or a case cannot be read).
    """
    from tqdm import tqdm

    modalities = check_modalities(tuple(modalities), MODALITIES, "the plan")
    refs = discover(data, modalities, split="train")
    rng = np.random.default_rng(0)
    cases, samples = [], {m: [] for m in modalities}
    for ref in tqdm(refs, desc="fingerprint", unit="case", disable=not progress, leave=False):
        case = read_case(ref)
        mask = brain_mask(case.modalities)
        channels = [list(case.modality_names).index(m) for m in modalities]
        inside = np.flatnonzero(mask)
        pick = rng.choice(inside, min(INTENSITY_SAMPLES, inside.size), replace=False) if inside.size else inside
        for m, c in zip(modalities, channels, strict=True):
            samples[m].append(case.modalities[c].reshape(-1)[pick].astype(np.float64))
        cases.append(CaseFingerprint(case.case_id, tuple(int(n) for n in _xyz(case.shape)),
                                     tuple(float(s) for s in _xyz(case.spacing)),
                                     float(mask.sum()) * case.voxel_ml, float(case.label.sum()) * case.voxel_ml))
    intensity = {}
    for m, parts in samples.items():
        x = np.concatenate(parts) if parts else np.zeros(0)
        if x.size == 0:
            raise DataError(f"'{data}': no brain voxel (every modality is 0 everywhere): check the images")
        low, median, high = np.percentile(x, [0.5, 50, 99.5])
        intensity[m] = {"mean": float(x.mean()), "std": float(x.std()), "median": float(median),
                        "p00_5": float(low), "p99_5": float(high), "min": float(x.min()), "max": float(x.max())}
    return Fingerprint(str(data), detect_layout(data), modalities, cases, intensity)


def target_spacing(spacings: np.ndarray, shapes: np.ndarray) -> tuple[tuple[float, float, float], dict]:
    """The target spacing (X, Y, Z) mm of (cases, 3) spacings and sizes, and what the anisotropy rule did.

    Returns:
        (spacing, ``{"ratio", "axis", "applied", "median"}``): the largest over the largest other median
        spacing, the low-resolution axis (``X``, ``Y`` or ``Z``), whether its 10th percentile was taken.
    """
    spacings, shapes = np.asarray(spacings, np.float64), np.asarray(shapes, np.float64)
    target = np.median(spacings, 0)
    median_shape = np.median(shapes, 0)
    worst = int(np.argmax(target))
    others = [i for i in range(3) if i != worst]
    largest_other = max(target[i] for i in others)
    ratio = float(target[worst] / largest_other)
    applied = bool(ratio > ANISOTROPY and median_shape[worst] * ANISOTROPY < min(median_shape[i] for i in others))
    median = target.copy()
    if applied:
        low = float(np.percentile(spacings[:, worst], LOW_RESOLUTION_PERCENTILE))
        target[worst] = low if low >= largest_other else largest_other + 1e-5
    return (tuple(float(t) for t in target),  # type: ignore[return-value]
            {"ratio": ratio, "axis": "XYZ"[worst], "applied": applied, "median": median.tolist()})


def resampled_shape(shape: Sequence[int], spacing: Sequence[float], target: Sequence[float]) -> tuple[int, ...]:
    """``max(1, round(n · s / t))`` per axis, any axis order (that of the arguments)."""
    return tuple(max(1, int(round(n * s / t))) for n, s, t in zip(shape, spacing, target, strict=True))


def downsampling_factor(model: nn.Module) -> int:
    """``2^depth``: the product of the strides of the model's down-sampling modules along one path.

    Every registered family down-samples three times by 2 (max pooling, or stride-2 convolutions in
    SegResNet), each at a different depth, so ``depth`` is the number of stride-2 ``MaxPool3d``/``Conv3d``
    modules; a patch divisible by it keeps every level's grid exact.
    """
    depth = 0
    for module in model.modules():
        if isinstance(module, (nn.MaxPool3d, nn.Conv3d)):
            stride = module.stride if isinstance(module.stride, tuple) else (module.stride,) * 3
            depth += max(stride) > 1
    return 2 ** depth


@torch.no_grad()
def activations_per_voxel(model: nn.Module, channels: int) -> float:
    """Elements of every module output per input voxel, from one forward pass on a (1, C, 16, 32, 32) probe.

    Only leaf modules (no children) count, so nothing is counted twice; the input is not counted.
    """
    counted = [0]

    def hook(module, inputs, output):
        if isinstance(output, torch.Tensor):
            counted[0] += output.numel()

    handles = [m.register_forward_hook(hook) for m in model.modules() if not list(m.children())]
    try:
        model.eval()(torch.zeros(1, channels, *PROBE_DHW))
    finally:
        for h in handles:
            h.remove()
    return counted[0] / math.prod(PROBE_DHW)


def memory_bytes(voxels: int, batch: int, per_voxel: float, parameters: int) -> float:
    """The memory rule ``2 · b · V · a · e + 16 · P`` in bytes (module docstring)."""
    return 2.0 * batch * voxels * per_voxel * BYTES_PER_ELEMENT + 16.0 * parameters


def memory_budget(device: str) -> int:
    """Bytes a training step may use: 80 % of the CUDA device's memory, else min(¼ RAM, 2 GiB) on a CPU."""
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ParameterError(f"device '{device}' asked for but no CUDA GPU is visible: plan for cpu")
        return int(GPU_BUDGET_SHARE * torch.cuda.get_device_properties(0).total_memory)
    if device != "cpu":
        raise ParameterError(f"device '{device}' is unknown: plan for cpu or cuda")
    import os

    try:
        physical = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        physical = 8 * 1024**3
    return int(min(physical // 4, CPU_BUDGET_CAP))


def plan_patch(median_shape: Sequence[int], budget: float, per_voxel: float, parameters: int, factor: int,
               dataset_voxels: float) -> tuple[tuple[int, int, int], int]:
    """The patch (same axis order as ``median_shape``) and batch size of the memory rule (module docstring).

    Raises:
        ParameterError: not even the smallest patch (one ``factor`` per axis) fits two to a batch.
    """
    median = np.asarray(median_shape, np.float64)
    patch = [max(factor, int(n) // factor * factor) for n in median_shape]
    while memory_bytes(math.prod(patch), MIN_BATCH, per_voxel, parameters) > budget:
        shrinkable = [i for i in range(3) if patch[i] > factor]
        if not shrinkable:
            raise ParameterError(f"a patch of {factor} voxels per axis needs "
                                 f"{memory_bytes(factor**3, MIN_BATCH, per_voxel, parameters) / 2**20:.0f} MiB, over "
                                 f"the budget of {budget / 2**20:.0f} MiB: plan with a smaller width or on a GPU")
        axis = max(shrinkable, key=lambda i: patch[i] / median[i])
        patch[axis] -= factor
    voxels = math.prod(patch)
    fits = int((budget - 16.0 * parameters) // (2.0 * voxels * per_voxel * BYTES_PER_ELEMENT))
    cap = int(round(DATASET_SHARE * dataset_voxels / voxels))
    return tuple(patch), max(MIN_BATCH, min(fits, cap))  # type: ignore[return-value]


@dataclass
class Plan:
    """A data set's plan (module docstring); ``plan.json`` is :meth:`to_dict`.

    Attributes:
        spacing: target spacing (X, Y, Z) in mm.
        patch: training patch (X, Y, Z) voxels, the ``grid`` of the native :class:`PreprocessConfig`.
        batch_size: patches per step.
        median_shape: median resampled grid (X, Y, Z).
        normalization: per modality ``robust`` or ``minmax``.
        overlap: least overlap of neighbouring sliding windows.
        anisotropy: what :func:`target_spacing` found.
        memory: the memory rule's inputs and result.
        fingerprint: :meth:`Fingerprint.to_dict`.
        resampling: the resampling orders, in words.
    """

    spacing: tuple[float, float, float]
    patch: tuple[int, int, int]
    batch_size: int
    median_shape: tuple[int, int, int]
    normalization: dict[str, str]
    overlap: float = 0.5
    anisotropy: dict = field(default_factory=dict)
    memory: dict = field(default_factory=dict)
    fingerprint: dict = field(default_factory=dict)
    resampling: dict = field(default_factory=lambda: dict(RESAMPLING))
    version: int = PLAN_VERSION

    def preprocess(self) -> PreprocessConfig:
        """The ``native`` preprocessing of this plan (the one place a plan becomes settings)."""
        schemes = set(self.normalization.values())
        if len(schemes) != 1:
            raise ParameterError(f"the plan normalises modalities differently ({self.normalization}): strokelens "
                                 "applies one scheme to every modality; make the plan again with --normalization")
        return PreprocessConfig(modalities=tuple(self.normalization), normalization=schemes.pop(),
                                grid=tuple(self.patch), mode="native", spacing=tuple(self.spacing),
                                overlap=self.overlap)

    def to_dict(self) -> dict:
        """JSON-ready; includes the resulting preprocessing settings under ``preprocess``."""
        data = json.loads(json.dumps(asdict(self)))
        data["preprocess"] = self.preprocess().to_dict()
        return data

    def digest(self) -> str:
        """A short hash of what training depends on (spacing, patch, batch, normalisation, overlap)."""
        key = {"preprocess": self.preprocess().to_dict(), "batch_size": self.batch_size}
        return hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]

    @classmethod
    def from_dict(cls, data: dict, source: str = "the plan") -> Plan:
        """Inverse of :meth:`to_dict`; a :class:`DataError` names what is missing."""
        needed = ("spacing", "patch", "batch_size", "median_shape", "normalization")
        missing = [k for k in needed if not isinstance(data, dict) or k not in data]
        if missing:
            raise DataError(f"{source} lacks {', '.join(missing)}: write it with python -m mlproject.plan")
        try:
            plan = cls(spacing=tuple(float(s) for s in data["spacing"]), patch=tuple(int(p) for p in data["patch"]),
                       batch_size=int(data["batch_size"]), median_shape=tuple(int(n) for n in data["median_shape"]),
                       normalization=dict(data["normalization"]), overlap=float(data.get("overlap", 0.5)),
                       anisotropy=data.get("anisotropy", {}), memory=data.get("memory", {}),
                       fingerprint=data.get("fingerprint", {}), resampling=data.get("resampling", dict(RESAMPLING)),
                       version=int(data.get("version", PLAN_VERSION)))
            plan.preprocess()
        except (TypeError, ValueError, ParameterError) as exc:
            raise DataError(f"{source} is not a valid plan ({exc}): write it again with python -m mlproject.plan") \
                from exc
        return plan

    @classmethod
    def load(cls, path: str | Path) -> Plan:
        """Read a ``plan.json``; a :class:`DataError` names the file and the fix."""
        path = Path(path)
        if not path.is_file():
            raise DataError(f"plan '{path}' does not exist: write one with python -m mlproject.plan --data DIR "
                            f"--out {path}")
        try:
            data = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise DataError(f"plan '{path}' cannot be read ({exc}): write it again with python -m mlproject.plan") \
                from exc
        return cls.from_dict(data, f"plan '{path}'")

    def save(self, path: str | Path) -> Path:
        """Write ``plan.json`` atomically."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_file(path) as tmp:
            Path(tmp).write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        return path

    def lines(self) -> list[str]:
        """A short summary for the terminal."""
        x = "x".join
        aniso = self.anisotropy
        rule = (f"{aniso['axis']} is {aniso['ratio']:.1f}× coarser: its 10th-percentile spacing"
                if aniso.get("applied") else "median spacing on every axis")
        memory = self.memory
        lesions = self.fingerprint.get("lesion_ml", {})
        out = [f"plan for {self.fingerprint.get('data', '?')} ({len(self.fingerprint.get('cases', []))} labelled "
               f"cases): target spacing {x(f'{s:.2f}' for s in self.spacing)} mm ({rule})",
               f"median resampled grid {x(map(str, self.median_shape))}; patch {x(map(str, self.patch))}, batch "
               f"{self.batch_size} (estimated {memory.get('estimate_bytes', 0) / 2**20:.0f} MiB of a "
               f"{memory.get('budget_bytes', 0) / 2**20:.0f} MiB {memory.get('device', '?')} budget, "
               f"{memory.get('architecture', '?')} width {memory.get('width', '?')})",
               f"normalisation {', '.join(sorted(set(self.normalization.values())))}; sliding-window overlap "
               f"{self.overlap}"]
        if lesions:
            out.append(f"lesion volume: median {lesions['median']:.1f} ml, range {lesions['min']:.1f}–"
                       f"{lesions['max']:.1f} ml")
        return out


def make_plan(data: str | Path, device: str = "cpu", architecture: str = "unet3d", width: float = 0.25,
              normalization: str = "robust", overlap: float = 0.5, modalities: Sequence[str] = MODALITIES,
              budget: int | None = None, progress: bool = True) -> Plan:
    """Fingerprint ``data`` and plan native training for ``architecture`` at ``width`` on ``device``.

    Args:
        data: a data folder (ISLES 2017 or nnU-Net layout).
        device: ``cpu`` or ``cuda`` (sets the memory budget, :func:`memory_budget`).
        architecture: the network the memory rule is computed for (a registry name).
        width: its width (plan for the widest a search tries).
        normalization: ``robust`` or ``minmax`` for every modality.
        overlap: least overlap of neighbouring sliding windows.
        modalities: input channels.
        budget: bytes, instead of :func:`memory_budget`'s.
        progress: a progress bar over cases.

    Raises:
        DataError: no labelled case.
        ParameterError: an unknown device or normalisation (``ModelError``: an unknown architecture).
    """
    from models.registry import build, parameter_count

    if normalization not in NORMALIZATIONS:
        raise ParameterError(f"normalization '{normalization}' is unknown: choose {' or '.join(NORMALIZATIONS)}")
    if not 0.0 <= overlap < 1.0:
        raise ParameterError(f"overlap {overlap} must lie in [0, 1)")
    budget = memory_budget(device) if budget is None else int(budget)
    model = build(architecture, len(tuple(modalities)), width=width)
    found = fingerprint(data, modalities, progress)
    spacing, anisotropy = target_spacing(found.spacings, found.shapes)
    shapes = [resampled_shape(c.shape, c.spacing, spacing) for c in found.cases]
    median_shape = tuple(int(round(v)) for v in np.median(np.array(shapes, np.float64), 0))
    per_voxel, parameters, factor = activations_per_voxel(model, len(found.modalities)), parameter_count(model), \
        downsampling_factor(model)
    dataset_voxels = float(len(shapes)) * math.prod(median_shape)
    patch, batch = plan_patch(median_shape, budget, per_voxel, parameters, factor, dataset_voxels)
    memory = {"device": device, "budget_bytes": budget, "architecture": architecture, "width": width,
              "activations_per_voxel": per_voxel, "parameters": parameters, "bytes_per_element": BYTES_PER_ELEMENT,
              "divisor": factor, "estimate_bytes": memory_bytes(math.prod(patch), batch, per_voxel, parameters),
              "rule": "2 * batch * patch voxels * activations per voxel * 4 B + 16 B * parameters <= budget"}
    return Plan(spacing=spacing, patch=patch, batch_size=batch, median_shape=median_shape,  # type: ignore[arg-type]
                normalization={m: normalization for m in found.modalities}, overlap=overlap, anisotropy=anisotropy,
                memory=memory, fingerprint=found.to_dict())
