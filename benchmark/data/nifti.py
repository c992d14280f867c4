"""Reading and writing NIfTI volumes in the project's axis order, with validation.

Axis order: NIfTI stores voxels as (X, Y, Z) = (i, j, k). strokelens arrays use
(D, H, W) = (Z, Y, X), i.e. slices first as PyTorch's ``Conv3d`` expects, so a volume read
from disk is ``data.transpose(2, 1, 0)`` and spacing is reported in the same (D, H, W)
order in mm. Writing reverses both.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from benchmark.atomic import atomic_file
from benchmark.errors import DataError


@dataclass(frozen=True)
class Volume:
    """One 3-D volume read from disk.

    Attributes:
        data: voxel values, shape (D, H, W) = (Z, Y, X), float32.
        affine: the 4×4 voxel-to-world matrix of the file (NIfTI (i, j, k) convention).
        spacing: voxel size in mm, in (D, H, W) order.
        header: the NIfTI header, kept so outputs can reuse it.
    """

    data: np.ndarray
    affine: np.ndarray
    spacing: tuple[float, float, float]
    header: nib.Nifti1Header


def to_dhw(xyz: np.ndarray) -> np.ndarray:
    """Return a (X, Y, Z, ...) array as (D, H, W, ...) = (Z, Y, X, ...)."""
    return np.ascontiguousarray(np.swapaxes(xyz, 0, 2))


def to_xyz(dhw: np.ndarray) -> np.ndarray:
    """Return a (D, H, W, ...) array in NIfTI (X, Y, Z, ...) order."""
    return np.ascontiguousarray(np.swapaxes(dhw, 0, 2))


def read_volume(path: str | Path, *, what: str = "image") -> Volume:
    """Read a 3-D NIfTI volume (trailing singleton dimensions are dropped).

    Args:
        path: a ``.nii`` or ``.nii.gz`` file.
        what: a word for error messages (``"image"``, ``"label"``).

    Returns:
        The volume in (D, H, W) order as float32.

    Raises:
        DataError: the file is missing, not NIfTI, corrupt, not 3-D, or holds NaN/Inf.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{what} file '{path}' does not exist: check the data folder")
    try:
        image = nib.load(str(path), mmap=False)
        if not isinstance(image, nib.Nifti1Image | nib.Nifti2Image):
            raise DataError(
                f"'{path}' is not a NIfTI file ({type(image).__name__}): convert it to .nii/.nii.gz"
            )
        raw = np.asanyarray(image.dataobj)
    except DataError:
        raise
    except Exception as exc:  # nibabel raises many types for corrupt files
        raise DataError(
            f"cannot read '{path}' as NIfTI ({type(exc).__name__}: {exc}): "
            "replace the file with a valid .nii/.nii.gz"
        ) from exc
    shape = raw.shape
    while raw.ndim > 3 and raw.shape[-1] == 1:
        raw = raw[..., 0]
    if raw.ndim != 3:
        raise DataError(
            f"{what} '{path}' has shape {shape} but a 3-D volume is expected: "
            "pass one 3-D volume per file (4DPWI and other time series are not model inputs)"
        )
    data = np.array(raw, dtype=np.float32)
    if not np.isfinite(data).all():
        bad = int((~np.isfinite(data)).sum())
        raise DataError(
            f"{what} '{path}' holds {bad} NaN/Inf voxels: replace them "
            "(e.g. numpy.nan_to_num) before using the file"
        )
    zooms = image.header.get_zooms()[:3]
    spacing = (float(zooms[2]), float(zooms[1]), float(zooms[0]))
    return Volume(to_dhw(data), np.asarray(image.affine, dtype=np.float64), spacing, image.header)


def spacing_of(affine: np.ndarray) -> tuple[float, float, float]:
    """Voxel size in mm in (D, H, W) order, from the column norms of a NIfTI affine."""
    norms = np.linalg.norm(np.asarray(affine)[:3, :3], axis=0)
    return float(norms[2]), float(norms[1]), float(norms[0])


def write_volume(
    path: str | Path,
    data_dhw: np.ndarray,
    affine: np.ndarray,
    *,
    header: nib.Nifti1Header | None = None,
    dtype: np.dtype | type | None = None,
) -> Path:
    """Write a (D, H, W[, C]) array as NIfTI (X, Y, Z[, C]) atomically.

    Args:
        path: target ``.nii`` or ``.nii.gz``; it appears only once fully written.
        data_dhw: the array in the project's (D, H, W) order; a trailing axis is kept as the
            4th NIfTI dimension (e.g. one volume per modality).
        affine: the voxel-to-world matrix to store.
        header: a header to copy (e.g. the case's original one); its data type is replaced.
        dtype: on-disk data type; defaults to the array's.

    Returns:
        The written path.
    """
    array = to_xyz(np.asarray(data_dhw))
    if dtype is not None:
        array = array.astype(dtype)
    hdr = header.copy() if header is not None else None
    image = nib.Nifti1Image(array, np.asarray(affine, dtype=np.float64), header=hdr)
    image.set_data_dtype(array.dtype)
    image.header.set_xyzt_units("mm", "sec")
    with atomic_file(path) as tmp:
        nib.save(image, str(tmp))
    return Path(path)
