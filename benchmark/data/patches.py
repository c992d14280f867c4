"""Random training patches of prepared cases (``native`` preprocessing), with foreground oversampling.

A draw picks one patch of ``patch`` = (d, h, w) voxels from a prepared case (image at the target
spacing, label fraction on the same grid):

* with probability ``foreground`` (nnU-Net's ``oversample_foreground_percent``, 1/3) the patch is
  centred on a lesion voxel (label fraction ≥ 0.5) drawn uniformly among the case's lesion voxels; a case
  without lesion voxels gets a random patch instead. nnU-Net forces the last third of each batch to
  foreground; here each draw is independent, so the share is 1/3 in expectation for any batch size.
* otherwise the patch's start is drawn uniformly among all starts that keep it inside the volume.
* **Borders**: along an axis at least as long as the patch, the patch stays inside the volume: a
  lesion-centred start ``v − ⌊p/2⌋`` is clipped into ``[0, n − p]``, so the lesion voxel is always inside the
  patch and at its centre unless the volume's border is nearer than half a patch. Along an axis shorter
  than the patch the volume is zero-padded (0, the background of a normalised image, and no lesion) to the
  patch, symmetrically with the extra voxel after, as the sliding-window inference pads
  (:mod:`inferers.sliding`). nnU-Net instead lets patches reach half a patch beyond the border, padded.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from benchmark.errors import ParameterError

FOREGROUND_SHARE = 1.0 / 3.0
"""nnU-Net's share of patches centred on foreground (``oversample_foreground_percent = 0.33``)."""


class PatchSampler:
    """Draw training patches (module docstring) with its own seeded torch generator.

    Args:
        patch: (d, h, w) voxels.
        foreground: share of patches centred on a lesion voxel, in [0, 1].
        seed: seeds the generator (its state is ``generator.get_state()``, saved with checkpoints).
    """

    def __init__(self, patch: Sequence[int], foreground: float = FOREGROUND_SHARE, seed: int = 0):
        if len(patch) != 3 or min(patch) < 1:
            raise ParameterError(f"patch {tuple(patch)} must be three positive sizes (d, h, w)")
        if not 0.0 <= foreground <= 1.0:
            raise ParameterError(f"foreground share {foreground} must lie in [0, 1]")
        self.patch = tuple(int(p) for p in patch)
        self.foreground = float(foreground)
        self.generator = torch.Generator().manual_seed(seed)
        self._lesions: dict[str, np.ndarray] = {}

    def _lesion_voxels(self, case) -> np.ndarray:
        key = f"{case.case_id}:{case.label.shape}"
        if key not in self._lesions:
            self._lesions[key] = np.argwhere(case.label >= 0.5)
        return self._lesions[key]

    def _randint(self, high: int) -> int:
        """Uniform in [0, high]."""
        return int(torch.randint(high + 1, (1,), generator=self.generator))

    def start(self, case) -> tuple[tuple[int, int, int], bool]:
        """One draw's start in the padded volume's voxels, and whether it is lesion-centred."""
        shape = case.label.shape
        padded = [max(n, p) for n, p in zip(shape, self.patch, strict=True)]
        before = [(q - n) // 2 for q, n in zip(padded, shape, strict=True)]
        lesions = self._lesion_voxels(case)
        centred = float(torch.rand(1, generator=self.generator)) < self.foreground and len(lesions) > 0
        if centred:
            voxel = lesions[self._randint(len(lesions) - 1)]
            start = [min(max(int(v) + b - p // 2, 0), q - p)
                     for v, b, p, q in zip(voxel, before, self.patch, padded, strict=True)]
        else:
            start = [self._randint(q - p) for q, p in zip(padded, self.patch, strict=True)]
        return tuple(start), centred  # type: ignore[return-value]

    def crop(self, case, start: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        """(C, d, h, w) image and (d, h, w) label of the patch at ``start`` (padded voxels are 0)."""
        shape = case.label.shape
        image = np.zeros((case.image.shape[0], *self.patch), dtype=np.float32)
        label = np.zeros(self.patch, dtype=np.float32)
        source, target = [], []
        for n, p, s in zip(shape, self.patch, start, strict=True):
            before = (max(n, p) - n) // 2
            lo = s - before  # the patch's first voxel in the unpadded volume
            a, b = max(lo, 0), min(lo + p, n)
            source.append(slice(a, b))
            target.append(slice(a - lo, b - lo))
        image[(slice(None), *target)] = case.image[(slice(None), *source)]
        label[tuple(target)] = case.label[tuple(source)]
        return image, label

    def draw(self, case) -> tuple[np.ndarray, np.ndarray, bool]:
        """One patch of a prepared case: (image, label, lesion-centred)."""
        if case.label is None:
            raise ParameterError(f"case {case.case_id} has no label: patches are drawn from training cases")
        start, centred = self.start(case)
        image, label = self.crop(case, start)
        return image, label, centred

    def batch(self, cases: Sequence) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, C, d, h, w) images and (N, d, h, w) label fractions, one patch per case."""
        drawn = [self.draw(c) for c in cases]
        return (torch.from_numpy(np.stack([d[0] for d in drawn])), torch.from_numpy(np.stack([d[1] for d in drawn])))
