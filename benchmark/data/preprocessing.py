"""Case → model input: intensity normalisation, resampling to the training grid and back, cache.

Normalisations, per modality channel ``x`` of a case:

* ``minmax`` (the study's): ``(x − min x) / (max x − min x)`` over the whole volume, in [0, 1];
  a constant channel becomes 0.
* ``robust``: inside the brain mask ``M`` (voxels where any modality is non-zero; the maps are
  skull-stripped), clip ``x`` to its [0.5, 99.5] percentiles over ``M``, then
  ``(x − mean_M) / std_M``; 0 outside ``M``.

Two modes (``PreprocessConfig.mode``), recorded with every study and model:

* ``seed`` (the study's): every case is resampled to one training grid (48×48×19) whatever its
  spacing; the model sees whole volumes.
* ``native`` (nnU-Net's practice): every case is resampled to one target voxel spacing (mm, from the
  data set's plan); its grid is then ``round(n · s / t)`` voxels per axis (native size ``n``, spacing
  ``s``, target ``t``), the model trains on patches of ``grid`` voxels and predicts with Gaussian
  sliding windows (:meth:`PreprocessConfig.window`, :mod:`inferers`) over the whole volume.

Resampling (images and labels alike) averages over each target voxel's footprint where the grid
shrinks and interpolates linearly (trilinear, ``align_corners=False``: both grids span the same field
of view) where it grows; labels are resampled as fractions (linear) and thresholded at 0.5 where a
mask is needed. Grids and patches are written as in the study, X×Y×Z (``48x48x19``), spacings as
X×Y×Z in mm; arrays are (D, H, W) = (Z, Y, X).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from benchmark.data.cases import MODALITIES, Case, CaseRef, check_modalities, read_case
from benchmark.atomic import atomic_file
from benchmark.errors import ParameterError
from inferers import SlidingWindow

NORMALIZATIONS: tuple[str, ...] = ("minmax", "robust")
MODES: tuple[str, ...] = ("seed", "native")


@dataclass(frozen=True)
class PreprocessConfig:
    """Everything a model needs to turn a case into its input; saved beside every model.

    Attributes:
        modalities: input channels in order (default the six ISLES maps).
        normalization: ``minmax`` (seed) or ``robust``.
        grid: the network's input as (X, Y, Z) voxels: the whole training grid in ``seed`` mode
            (default 48×48×19), the patch in ``native`` mode.
        percentiles: clipping percentiles of ``robust``.
        mode: ``seed`` or ``native`` (module docstring).
        spacing: ``native`` only: the target voxel spacing (X, Y, Z) in mm.
        overlap: ``native`` only: least overlap of neighbouring sliding windows, share of the patch.
    """

    modalities: tuple[str, ...] = MODALITIES
    normalization: str = "minmax"
    grid: tuple[int, int, int] = (48, 48, 19)
    percentiles: tuple[float, float] = (0.5, 99.5)
    mode: str = "seed"
    spacing: tuple[float, float, float] | None = None
    overlap: float = 0.5

    def __post_init__(self):
        check_modalities(self.modalities, MODALITIES, "preprocessing")
        if self.normalization not in NORMALIZATIONS:
            raise ParameterError(f"normalization '{self.normalization}' is unknown: choose "
                                 f"{' or '.join(NORMALIZATIONS)}")
        if len(self.grid) != 3 or min(self.grid) < 4:
            raise ParameterError(f"grid {self.grid} must be three sizes X, Y, Z of at least 4 voxels")
        low, high = self.percentiles
        if not 0 <= low < high <= 100:
            raise ParameterError(f"percentiles {self.percentiles} must satisfy 0 <= low < high <= 100")
        if self.mode not in MODES:
            raise ParameterError(f"preprocessing mode '{self.mode}' is unknown: choose {' or '.join(MODES)}")
        if self.mode == "native" and (self.spacing is None or len(self.spacing) != 3 or min(self.spacing) <= 0):
            raise ParameterError(f"native preprocessing needs a target spacing of three positive sizes in mm "
                                 f"(got {self.spacing}): take it from the data set's plan (mlproject.plan)")
        if not 0.0 <= self.overlap < 1.0:
            raise ParameterError(f"overlap {self.overlap} must lie in [0, 1)")

    @property
    def grid_dhw(self) -> tuple[int, int, int]:
        """The training grid in array order (D, H, W) = (Z, Y, X)."""
        return self.grid[2], self.grid[1], self.grid[0]

    def shape_for(self, native_shape: Sequence[int], native_spacing: Sequence[float]) -> tuple[int, int, int]:
        """The (D, H, W) grid a case of ``native_shape`` voxels of ``native_spacing`` mm (D, H, W) is resampled to.

        ``seed``: the training grid. ``native``: ``max(1, round(n · s / t))`` per axis, target ``t`` in mm.
        """
        if self.mode == "seed":
            return self.grid_dhw
        target = (self.spacing[2], self.spacing[1], self.spacing[0])
        return tuple(max(1, int(round(n * s / t)))  # type: ignore[return-value]
                     for n, s, t in zip(native_shape, native_spacing, target, strict=True))

    def window(self) -> SlidingWindow | None:
        """The sliding window of ``native`` mode (patch = ``grid``), None in ``seed`` mode (whole volumes)."""
        return SlidingWindow(self.grid_dhw, overlap=self.overlap) if self.mode == "native" else None

    def to_dict(self) -> dict:
        """A JSON-serialisable dict (lists for tuples)."""
        return json.loads(json.dumps(asdict(self)))

    @classmethod
    def from_dict(cls, data: dict) -> PreprocessConfig:
        """Inverse of :meth:`to_dict`; a :class:`ParameterError` names missing keys."""
        missing = [k for k in ("modalities", "normalization", "grid") if not isinstance(data, dict) or k not in data]
        if missing:
            raise ParameterError(f"preprocessing settings lack {', '.join(map(repr, missing))}: use the JSON the "
                                 "export or training wrote beside the model")
        spacing = data.get("spacing")
        return cls(modalities=tuple(data["modalities"]), normalization=data["normalization"],
                   grid=tuple(data["grid"]), percentiles=tuple(data.get("percentiles", (0.5, 99.5))),
                   mode=data.get("mode", "seed"), spacing=None if spacing is None else tuple(spacing),
                   overlap=float(data.get("overlap", 0.5)))

    def key(self) -> str:
        """A short stable hash of the settings (cache keys)."""
        return hashlib.sha1(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:16]


def brain_mask(modalities: np.ndarray) -> np.ndarray:
    """(D, H, W) bool: voxels where any channel of a (C, D, H, W) array is non-zero."""
    return np.any(modalities != 0, axis=0)


def normalize_minmax(modalities: np.ndarray) -> np.ndarray:
    """Per channel ``(x − min) / (max − min)`` into [0, 1]; constant channels become 0."""
    out = np.zeros_like(modalities, dtype=np.float32)
    for c, x in enumerate(modalities):
        low, high = float(x.min()), float(x.max())
        if high > low:
            out[c] = (x - low) / (high - low)
    return out


def normalize_robust(modalities: np.ndarray, mask: np.ndarray,
                     percentiles: tuple[float, float] = (0.5, 99.5)) -> np.ndarray:
    """Per channel: clip to percentiles inside ``mask``, z-score inside ``mask``, 0 outside."""
    out = np.zeros_like(modalities, dtype=np.float32)
    if not mask.any():
        return out
    for c, x in enumerate(modalities):
        inside = x[mask]
        low, high = np.percentile(inside, percentiles)
        clipped = np.clip(inside, low, high)
        std = float(clipped.std())
        out[c][mask] = (clipped - clipped.mean()) / (std if std > 0 else 1.0)
    return out


def normalize(modalities: np.ndarray, config: PreprocessConfig) -> np.ndarray:
    """Apply ``config.normalization`` to a (C, D, H, W) array."""
    if config.normalization == "minmax":
        return normalize_minmax(modalities)
    return normalize_robust(modalities, brain_mask(modalities), config.percentiles)


def resample(volume: np.ndarray | torch.Tensor, shape_dhw: Sequence[int]) -> np.ndarray | torch.Tensor:
    """Resample a (C, D, H, W) or (N, C, D, H, W) volume to ``shape_dhw``.

    Along axes that shrink, each target voxel is the overlap-weighted mean over its footprint
    (no aliasing, lesion volume kept); along axes that grow, trilinear interpolation.

    Returns the same type (numpy or torch) it was given; float32.
    """
    is_numpy = isinstance(volume, np.ndarray)
    tensor = torch.from_numpy(np.ascontiguousarray(volume, dtype=np.float32)) if is_numpy else volume
    batched = tensor.dim() == 5
    tensor = tensor if batched else tensor.unsqueeze(0)
    target = tuple(int(n) for n in shape_dhw)
    tensor = tensor.float()
    for axis, (n, t) in enumerate(zip(tensor.shape[2:], target, strict=True), start=2):
        if t < n:
            weights = _area_weights(n, t).to(tensor.device)
            tensor = (tensor.movedim(axis, -1) @ weights.T).movedim(-1, axis)
    shrunk = tuple(min(n, t) for n, t in zip(tensor.shape[2:], target, strict=True))
    if shrunk != target:
        tensor = F.interpolate(tensor.float(), size=target, mode="trilinear", align_corners=False)
    tensor = tensor if batched else tensor[0]
    return tensor.numpy() if is_numpy else tensor


def _area_weights(n: int, t: int) -> torch.Tensor:
    """(t, n) matrix: share of source voxel j in target voxel i when n voxels shrink to t.

    Target voxel i spans [i·n/t, (i+1)·n/t) in source voxel units; its value is the
    overlap-weighted mean of the source voxels, so Σ values × voxel volume is preserved.
    """
    edges = torch.arange(t + 1, dtype=torch.float64) * (n / t)
    lo, hi = edges[:-1, None], edges[1:, None]
    j = torch.arange(n, dtype=torch.float64)[None, :]
    overlap = (torch.minimum(hi, j + 1) - torch.maximum(lo, j)).clamp(min=0)
    return (overlap / (n / t)).float()


@dataclass
class PreparedCase:
    """A case ready for a model, plus what metrics need on the native grid.

    Attributes:
        case_id: the case's id.
        image: (C, D, H, W) float32 normalised input at the training grid (``seed``) or at the target
            spacing (``native``).
        label: (D, H, W) float32 lesion fraction on the image's grid, or None.
        native_label: (D, H, W) uint8 label on the native grid, or None.
        native_shape: the native grid (D, H, W).
        spacing: native voxel size in mm, (D, H, W).
        affine: native voxel-to-world matrix.
        evidence: (C, D, H, W) bool ground-truth evidence at the training grid (a voxel counts when
            at least half of it is evidence), or None.
    """

    case_id: str
    image: np.ndarray
    label: np.ndarray | None
    native_label: np.ndarray | None
    native_shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    affine: np.ndarray = field(repr=False)
    evidence: np.ndarray | None = field(default=None, repr=False)


def prepare(case: Case, config: PreprocessConfig) -> PreparedCase:
    """Normalise one case, then resample it to ``config``'s grid (:meth:`PreprocessConfig.shape_for`)."""
    names = list(case.modality_names)
    missing = [m for m in config.modalities if m not in names]
    if missing:
        raise ParameterError(f"case {case.case_id} lacks {', '.join(missing)} needed by the "
                             "preprocessing: load the case with these modalities")
    shape = config.shape_for(case.shape, case.spacing)
    channels = case.modalities[[names.index(m) for m in config.modalities]]
    image = resample(normalize(channels, config), shape)
    label = None
    if case.label is not None:
        label = resample(case.label[None].astype(np.float32), shape)[0]
    evidence = None
    if case.evidence is not None:
        channels = case.evidence[[names.index(m) for m in config.modalities]].astype(np.float32)
        evidence = resample(channels, shape) >= 0.5
    return PreparedCase(case.case_id, image.astype(np.float32), label, case.label, case.shape,
                        case.spacing, case.affine, evidence)


def to_native(probability: np.ndarray | torch.Tensor, native_shape: Sequence[int]) -> np.ndarray:
    """Resample a (C, d, h, w) probability map from the training grid to the native grid."""
    out = resample(probability, native_shape)
    return out.detach().cpu().numpy() if isinstance(out, torch.Tensor) else out


class PreprocessCache:
    """Prepared cases in memory, optionally also on disk, keyed by files and settings.

    The disk key hashes each file's path, size and modification time with the preprocessing
    settings, so an edited file or a changed setting is prepared anew. Writes are atomic.

    Args:
        config: the preprocessing settings.
        folder: where ``.npz`` files go; None keeps the cache in memory only.
    """

    def __init__(self, config: PreprocessConfig, folder: str | Path | None = None):
        self.config = config
        self.folder = Path(folder) if folder is not None else None
        self._memory: dict[str, PreparedCase] = {}
        self.reads = 0

    def _key(self, ref: CaseRef) -> str:
        parts = [self.config.key(), ref.case_id]
        for path in ref.files:
            stat = path.stat()
            parts.append(f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}")
        return hashlib.sha1("|".join(parts).encode()).hexdigest()

    def get(self, ref: CaseRef) -> PreparedCase:
        """The prepared case, read from NIfTI only on the first request."""
        key = self._key(ref)
        if key in self._memory:
            return self._memory[key]
        prepared = self._load(key, ref.case_id)
        if prepared is None:
            self.reads += 1
            prepared = prepare(read_case(ref), self.config)
            self._save(key, prepared)
        self._memory[key] = prepared
        return prepared

    def _path(self, key: str) -> Path | None:
        return None if self.folder is None else self.folder / f"{key}.npz"

    def _load(self, key: str, case_id: str) -> PreparedCase | None:
        path = self._path(key)
        if path is None or not path.is_file():
            return None
        try:
            with np.load(path) as z:
                return PreparedCase(
                    case_id, z["image"], z["label"] if z["has_label"] else None,
                    z["native_label"] if z["has_label"] else None,
                    tuple(int(v) for v in z["native_shape"]), tuple(float(v) for v in z["spacing"]),
                    z["affine"])
        except (OSError, ValueError, KeyError):
            return None

    def _save(self, key: str, p: PreparedCase) -> None:
        path = self._path(key)
        if path is None:
            return
        has_label = p.label is not None
        empty = np.zeros(0, np.float32)
        with atomic_file(path) as tmp, open(tmp, "wb") as fh:
            np.savez(fh, image=p.image, label=p.label if has_label else empty,
                     native_label=p.native_label if has_label else empty.astype(np.uint8),
                     has_label=has_label, native_shape=np.array(p.native_shape),
                     spacing=np.array(p.spacing), affine=p.affine)
