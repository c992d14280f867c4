"""Lesion-like defects on prepared cases: the study's defect experiment, on the synthetic cases.

The study (``dataio/data_diffgen.py``, ``DGen``/``DG3D``) draws a defect as a bundle of random
walks: each of 6–24 seeds starts near a common centre, takes 10–20 steps (each step moves
along one random axis by 0..d voxels, d a random integer in [−2, 2] per axis) and every visited
voxel is thickened forward and backward along each axis with a decaying probability
``p_j = 1 / (q + j·b)`` for the j-th voxel (``q`` = 0.01, ``b`` = 1; voxels with ``p_j`` < 0.1 are
never added). Inside the defect the input changes by ``± a · r`` with a sign drawn per channel,
``r ~ U(0.2, 0.8)`` per voxel and the strength ``a ~ U(0.5, 2.4)``
(``pipeline/evaluation_dilute_compare_diffgen.py``, ``get_defect_output``), in the study's
min–max normalised input units. A model trained on defect data sees the defect as lesion
(``pipeline/training_UNet3D_diff.py``: label = lesion ∪ defect).

What differs, on purpose: the walks run in 3-D on the case's own grid (the study draws them in
2-D and interpolates three slices to 19); the defect is confined to the brain and kept away
from the true lesion, and grown to an exact requested number of voxels (so its effect can be
attributed to it); one mask serves every channel (the study draws one per channel but labels
only channel 0's); the study's random background texture, which it adds to the whole volume
together with the defect, is left out (its own effect is what the dilution experiment measures).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from benchmark.errors import ParameterError

STRENGTH = (0.5, 2.4)
"""Range of the defect strength ``a`` (the study's ``defect_fraction``), input units."""
EFFECT = (0.2, 0.8)
"""Range of the per-voxel effect factor ``r`` (the study's ``random_effect_factor``)."""
SEEDS = (6, 24)
"""How many random walks make one defect, at most (the study's ``n_seed`` in random mode)."""
STEPS = (10, 20)
"""Steps per walk (the study's ``get_sample_lesion``)."""


@dataclass(frozen=True)
class Defect:
    """One lesion-like defect on a (C, D, H, W) input.

    Attributes:
        mask: (D, H, W) bool, the defect's voxels.
        signs: (C,) ±1, the direction of the change per channel.
        strength: ``a``, input units.
        effect: (C, D, H, W) float32 ``r``, 0 outside the mask.
    """

    mask: np.ndarray
    signs: np.ndarray
    strength: float
    effect: np.ndarray

    @property
    def voxels(self) -> int:
        """The defect's size in voxels."""
        return int(self.mask.sum())

    def change(self) -> np.ndarray:
        """The added (C, D, H, W) change ``sign_c · a · r_c(v)`` (0 outside the mask)."""
        return (self.signs[:, None, None, None] * self.strength * self.effect).astype(np.float32)

    def apply(self, image: np.ndarray) -> np.ndarray:
        """``image`` with the defect added (not clipped, as in the study's evaluation)."""
        if image.shape != self.effect.shape:
            raise ParameterError(f"the defect was drawn for inputs of shape {self.effect.shape}, not {image.shape}")
        return (image + self.change()).astype(image.dtype)

    def label(self, lesion: np.ndarray) -> np.ndarray:
        """The label of a case carrying the defect: lesion ∪ defect (the study's defect training)."""
        return ((np.asarray(lesion) > 0.5) | self.mask).astype(np.float32)


def _thickening(rng: np.random.Generator, reach: int, q: float = 0.01, floor: float = 0.1,
                block: float = 1.0) -> int:
    """How many voxels a walked voxel grows along one direction (the study's growth indicator).

    For j = 1..reach with ``p_j = 1/(q + j·block) ≥ floor``: with probability ``p_j`` every voxel
    up to j is added, else voxel j is not (a later success still adds it).
    """
    grown = 0
    for j in range(1, reach + 1):
        p = 1.0 / (q + j * block)
        if p < floor:
            continue
        if rng.uniform() < p:
            grown = j
    return grown


def _walk(rng: np.random.Generator, start: np.ndarray, steps: int) -> list[np.ndarray]:
    """A random walk: each step moves along one random axis by 0..d_axis voxels (d in [−2, 2])."""
    directions = rng.integers(-2, 3, size=3)
    points = [start.copy()]
    for _ in range(steps):
        axis = int(rng.integers(0, 3))
        d = int(directions[axis])
        move = np.zeros(3, dtype=int)
        move[axis] = rng.integers(0, d + 1) if d >= 0 else rng.integers(d, 0)
        points.append(points[-1] + move)
    return points


def grow_defect(brain: np.ndarray, voxels: int, rng: np.random.Generator, avoid: np.ndarray | None = None,
                reach: tuple[int, int, int] = (1, 2, 2), centre_spread: int = 3) -> np.ndarray:
    """A lesion-like mask of exactly ``voxels`` voxels inside ``brain`` and outside ``avoid``.

    Random walks (see the module docstring) from points within ``centre_spread`` voxels of a
    centre drawn among the allowed voxels are added until the mask holds at least ``voxels``
    voxels; the voxels added last are then dropped so exactly ``voxels`` remain (the mask stays
    a bundle of walks around the centre).

    Args:
        brain: (D, H, W) bool, where the defect may lie.
        voxels: the requested size, at least 1.
        rng: the random draws.
        avoid: (D, H, W) bool voxels the defect must not touch (the true lesion), or None.
        reach: thickening range per axis (D, H, W), voxels forward and backward.
        centre_spread: how far the walks' starts lie from the centre, voxels.

    Raises:
        ParameterError: ``voxels`` < 1, or fewer allowed voxels than requested.
    """
    allowed = np.asarray(brain, bool) & ~(np.zeros_like(brain, bool) if avoid is None else np.asarray(avoid, bool))
    if voxels < 1:
        raise ParameterError(f"defect size must be at least 1 voxel (got {voxels})")
    if allowed.sum() < voxels:
        raise ParameterError(f"a defect of {voxels} voxels does not fit in the {int(allowed.sum())} brain voxels "
                             "outside the lesion: ask for a smaller defect_ml")
    shape = np.array(allowed.shape)
    candidates = np.argwhere(allowed)
    order: list[tuple[int, int, int]] = []
    seen = np.zeros_like(allowed)
    centre = candidates[0]
    for _ in range(100 * SEEDS[1]):
        if len(order) >= voxels:
            break
        if not order:  # the first centre, or one whose first walk left the allowed region
            centre = candidates[rng.integers(len(candidates))]
        start = np.clip(centre + rng.integers(-centre_spread, centre_spread + 1, size=3), 0, shape - 1)
        for point in _walk(rng, start, int(rng.integers(*STEPS))):
            grown = [point]
            for axis in range(3):
                for sign in (1, -1):
                    for k in range(1, _thickening(rng, reach[axis]) + 1):
                        step = np.zeros(3, dtype=int)
                        step[axis] = sign * k
                        grown.append(point + step)
            for p in grown:
                if np.all(p >= 0) and np.all(p < shape):
                    key = (int(p[0]), int(p[1]), int(p[2]))
                    if allowed[key] and not seen[key]:
                        seen[key] = True
                        order.append(key)
    if len(order) < voxels:  # a cramped region: fill from the nearest allowed voxels of the centre
        rest = np.argwhere(allowed & ~seen)
        nearest = rest[np.argsort(((rest - centre) ** 2).sum(axis=1), kind="stable")]
        order += [tuple(int(v) for v in p) for p in nearest[:voxels - len(order)]]
    mask = np.zeros(allowed.shape, bool)
    mask[tuple(np.array(order[:voxels]).T)] = True
    return mask


def draw_defect(image: np.ndarray, brain: np.ndarray, voxels: int, rng: np.random.Generator,
                avoid: np.ndarray | None = None, strength: float | None = None) -> Defect:
    """A defect of ``voxels`` voxels for a (C, D, H, W) input (see the module docstring).

    Args:
        image: the input it is meant for (its shape).
        brain: (D, H, W) bool, where it may lie.
        voxels: its size.
        rng: the random draws.
        avoid: voxels it must not touch (the true lesion), or None.
        strength: ``a`` (default: drawn from :data:`STRENGTH`).
    """
    mask = grow_defect(brain, voxels, rng, avoid)
    signs = np.where(rng.uniform(size=len(image)) > 0.5, -1.0, 1.0)
    effect = rng.uniform(*EFFECT, size=image.shape).astype(np.float32) * mask[None]
    a = float(rng.uniform(*STRENGTH)) if strength is None else float(strength)
    return Defect(mask, signs, a, effect)
