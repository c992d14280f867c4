"""Tile a volume into overlapping patches, run a function on batches of them, stitch with Gaussian weights.

Conventions (after nnU-Net v2, ``compute_steps_for_sliding_window`` and ``compute_gaussian``;
Isensee et al., Nature Methods 18, 2021):

* Arrays are (N, C, D, H, W); a patch is (d, h, w) voxels.
* **Padding**: an axis shorter than the patch is padded with zeros (the background value of a
  normalised image) symmetrically (the extra voxel after), and the result is cropped back.
* **Steps**: along an axis of size ``s ≥ p`` the window starts are ``n = ⌈(s − p) / (p · (1 − overlap))⌉ + 1``
  positions spread evenly from 0 to ``s − p`` (rounded), so every voxel is covered and neighbours
  overlap by at least ``overlap`` of the patch (default 0.5).
* **Gaussian importance** ``g(v) = exp(−Σ_a (v_a − c_a)² / (2 σ_a²))`` with ``c`` the patch centre and
  ``σ_a = sigma_scale · p_a`` (default 1/8), scaled to a maximum of 1; zeros are raised to the
  smallest non-zero value so that no voxel gets weight 0.
* **Stitching**: ``out(v) = Σ_w g(v − o_w) f_w(v) / Σ_w g(v − o_w)``, the importance-weighted mean of
  the windows' outputs ``f_w`` covering ``v``. nnU-Net stitches logits this way; so does
  :func:`sliding_window` whatever the function returns (logits, relevance).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

Array = np.ndarray | torch.Tensor


def window_starts(size: int, patch: int, overlap: float) -> list[int]:
    """Window start indices along one axis of ``size`` voxels (``size ≥ patch``), first 0, last ``size − patch``."""
    if size <= patch:
        return [0]
    stride = patch * (1.0 - overlap)
    count = math.ceil((size - patch) / stride) + 1
    step = (size - patch) / (count - 1)
    return [int(round(step * i)) for i in range(count)]


def gaussian_importance(patch: Sequence[int], sigma_scale: float = 0.125) -> np.ndarray:
    """The (d, h, w) float32 Gaussian importance map of a patch: maximum 1 at the centre, no zeros."""
    axes = [np.arange(p, dtype=np.float64) - (p - 1) / 2.0 for p in patch]
    sigmas = [max(sigma_scale * p, 1e-6) for p in patch]
    grid = np.meshgrid(*axes, indexing="ij")
    g = np.exp(-sum(a ** 2 / (2.0 * s ** 2) for a, s in zip(grid, sigmas, strict=True)))
    g /= g.max()
    g[g == 0] = g[g > 0].min()
    return g.astype(np.float32)


@dataclass(frozen=True)
class SlidingWindow:
    """How a volume is tiled and stitched.

    Attributes:
        patch: window size (d, h, w) in voxels.
        overlap: least overlap of neighbouring windows as a share of the patch, in [0, 1).
        sigma_scale: Gaussian σ as a share of the patch size per axis.
        batch: windows per call of the function.
    """

    patch: tuple[int, int, int]
    overlap: float = 0.5
    sigma_scale: float = 0.125
    batch: int = 4

    def __post_init__(self):
        if len(self.patch) != 3 or min(self.patch) < 1:
            raise ValueError(f"patch {self.patch} must be three positive sizes (d, h, w)")
        if not 0.0 <= self.overlap < 1.0:
            raise ValueError(f"overlap {self.overlap} must lie in [0, 1)")
        if self.batch < 1:
            raise ValueError(f"batch {self.batch} must be at least 1")

    def padding(self, shape: Sequence[int]) -> list[tuple[int, int]]:
        """(before, after) zero padding per spatial axis that makes ``shape`` at least one patch."""
        pads = []
        for size, p in zip(shape, self.patch, strict=True):
            extra = max(p - size, 0)
            pads.append((extra // 2, extra - extra // 2))
        return pads

    def windows(self, shape: Sequence[int]) -> list[tuple[slice, slice, slice]]:
        """The windows of a (padded) spatial ``shape`` as slices, in C order of their starts."""
        starts = [window_starts(s, p, self.overlap) for s, p in zip(shape, self.patch, strict=True)]
        return [tuple(slice(o, o + p) for o, p in zip(origin, self.patch, strict=True))
                for origin in itertools.product(*starts)]

    def importance(self) -> np.ndarray:
        """The patch's Gaussian importance map (:func:`gaussian_importance`)."""
        return gaussian_importance(self.patch, self.sigma_scale)


def _pad(volume: Array, pads: list[tuple[int, int]]) -> Array:
    if not any(a or b for a, b in pads):
        return volume
    if isinstance(volume, torch.Tensor):
        flat = [n for a, b in reversed(pads) for n in (a, b)]
        return torch.nn.functional.pad(volume, flat)
    return np.pad(volume, [(0, 0), (0, 0), *pads])


def sliding_window(volume: Array, function: Callable[[Array], Array], window: SlidingWindow,
                   progress: Callable[[int], None] | None = None) -> Array:
    """``function`` applied window by window to ``volume`` (N, C, D, H, W) and stitched (module docstring).

    Args:
        volume: a numpy array or torch tensor; the result is of the same kind, on the volume's device.
        function: maps a (B, C, d, h, w) batch of windows to (B, K, d, h, w) outputs of the same kind.
        window: the tiling.
        progress: called with the number of windows done after each batch (for a progress bar).

    Returns:
        (N, K, D, H, W) float32 stitched output on the volume's grid.
    """
    spatial = tuple(volume.shape[2:])
    pads = window.padding(spatial)
    padded = _pad(volume, pads)
    shape = tuple(padded.shape[2:])
    boxes = window.windows(shape)
    torch_mode = isinstance(volume, torch.Tensor)
    g = window.importance()
    if torch_mode:
        g = torch.from_numpy(g).to(volume.device)
    results = []
    for n in range(volume.shape[0]):
        total = weight_sum = None
        for first in range(0, len(boxes), window.batch):
            chunk = boxes[first:first + window.batch]
            batch = [padded[n, :, box[0], box[1], box[2]] for box in chunk]
            batch = torch.stack(batch) if torch_mode else np.stack(batch)
            out = function(batch)
            if total is None:
                k = out.shape[1]
                if torch_mode:
                    total = torch.zeros((k, *shape), dtype=torch.float32, device=volume.device)
                    weight_sum = torch.zeros(shape, dtype=torch.float32, device=volume.device)
                else:
                    total = np.zeros((k, *shape), dtype=np.float32)
                    weight_sum = np.zeros(shape, dtype=np.float32)
            for box, o in zip(chunk, out, strict=True):
                total[(slice(None), *box)] += o * g
                weight_sum[box] += g
            if progress is not None:
                progress(len(chunk))
        results.append(total / weight_sum)
    stitched = torch.stack(results) if torch_mode else np.stack(results)
    crop = tuple(slice(a, s + a) for (a, _), s in zip(pads, spatial, strict=True))
    return stitched[(slice(None), slice(None), *crop)]
