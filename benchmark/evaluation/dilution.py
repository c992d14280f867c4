"""The study's dilution experiments: how a segmentation degrades as its input is diluted.

The study (``pipeline/evaluation_dilute_compare_diffgen.py`` and ``…_diffgen2.py``, 50 draws per
case) perturbs the normalised input ``x`` (C, D, H, W) and scores the prediction on the
perturbed input ``x'`` by its Dice against the prediction on the clean input; we add the Dice
against the ground truth. Kinds and their level ``ℓ``:

* ``noise``: ``x' = x + ε``, ``ε ~ N(0, ℓ²)`` per value (σ = ℓ in input units, the project's
  robustness convention, :mod:`benchmark.evaluation.robustness`);
* ``study_noise``: the study's "UGauss" (``get_gaussian_noised_output``): ``x' = x + ε``,
  ``ε ~ U(0, m)`` per value with ``m = |N(0, ℓ²)|`` drawn once per draw (always non-negative);
* ``zero``: every value (voxel and channel) is set to 0 with probability ``ℓ`` (the study's
  ``get_pixelwise_zeroing_output`` keeps a value with probability f ~ U(0.5, 1) per draw; here
  the zeroed share is the level itself, so the curve has a fixed x-axis);
* ``smooth``: ``ℓ`` repeated 3×3×3 mean filters per channel with zero padding (the study's
  ``FilterConv3D('average')`` in ``get_dilution_output``, applied up to 24 times); deterministic,
  so one draw per level.

Per draw the study's ``diff`` = mean ``|x' − x|`` over every value is kept beside the Dice
scores. Dice follows :func:`benchmark.evaluation.segmentation.dice` (1 when both masks are
empty) on each case's native grid, the masks thresholded at 0.5 lesion probability.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
from scipy import ndimage
from torch import nn

from benchmark.data.preprocessing import PreparedCase, to_native
from benchmark.errors import DataError, ParameterError
from benchmark.evaluation.inference import predict_probability
from benchmark.evaluation.segmentation import dice
from inferers import SlidingWindow

KINDS = ("noise", "study_noise", "zero", "smooth")
DEFAULT_LEVELS: dict[str, tuple[float, ...]] = {
    "noise": (0.0, 0.05, 0.1, 0.15, 0.2, 0.3),
    "zero": (0.0, 0.1, 0.25, 0.5, 0.75, 1.0),
    "smooth": (0, 1, 2, 4, 8, 16),
}
"""The default kinds and levels (σ; zeroed share; filter repeats). ``study_noise`` is opt-in."""
STUDY_DRAWS = 50
"""Draws per case and level in the study (``NUMBER_NOISE_TEST_PER_CASE``)."""
DETERMINISTIC = ("smooth",)


def check_levels(levels: Mapping[str, Sequence[float]]) -> dict[str, tuple[float, ...]]:
    """Validated kinds and levels, or a ParameterError naming the bad one and the fix."""
    out = {}
    for kind, values in levels.items():
        if kind not in KINDS:
            raise ParameterError(f"dilution kind '{kind}' is unknown: choose from {', '.join(KINDS)}")
        values = tuple(float(v) for v in values)
        if not values:
            raise ParameterError(f"dilution kind '{kind}' has no level: give e.g. {kind}=0,0.1,0.2")
        if any(v < 0 for v in values) or (kind == "zero" and any(v > 1 for v in values)):
            raise ParameterError(f"dilution levels of '{kind}' must be >= 0{' and <= 1' if kind == 'zero' else ''} "
                                 f"(got {', '.join(f'{v:g}' for v in values)})")
        if kind == "smooth" and any(v != int(v) for v in values):
            raise ParameterError(f"smooth levels count filter repeats and must be whole numbers (got {values})")
        out[kind] = values
    if not out:
        raise ParameterError("no dilution kind chosen: give at least one of " + ", ".join(KINDS))
    return out


def _mean_filter(image: np.ndarray) -> np.ndarray:
    """One 3×3×3 mean filter per channel, zero padding (values outside count as 0, divisor 27)."""
    return np.stack([ndimage.uniform_filter(c, size=3, mode="constant", cval=0.0) for c in image]).astype(image.dtype)


def dilute(image: np.ndarray, kind: str, level: float, rng: np.random.Generator) -> np.ndarray:
    """A diluted copy of a (C, D, H, W) input (see the module docstring); level 0 returns it unchanged."""
    if kind not in KINDS:
        raise ParameterError(f"dilution kind '{kind}' is unknown: choose from {', '.join(KINDS)}")
    if level == 0:
        return image.copy()
    if kind == "noise":
        return (image + rng.normal(0.0, level, size=image.shape)).astype(image.dtype)
    if kind == "study_noise":
        top = abs(rng.normal(0.0, level))
        return (image + rng.uniform(0.0, top, size=image.shape)).astype(image.dtype)
    if kind == "zero":
        return (image * (rng.uniform(size=image.shape) >= level)).astype(image.dtype)
    out = image
    for _ in range(int(level)):
        out = _mean_filter(out)
    return out


def _native_masks(model: nn.Module, images: np.ndarray, case: PreparedCase, threshold: float,
                  batch: int, window: SlidingWindow | None = None) -> list[np.ndarray]:
    """Native-grid lesion masks of a stack of inputs (N, C, D, H, W) of one case (sliding windows when given)."""
    device = next(model.parameters()).device
    masks = []
    with torch.no_grad():
        for start in range(0, len(images), batch):
            probability = predict_probability(model, torch.from_numpy(images[start:start + batch]), device,
                                              window=window)
            masks += [to_native(p[None], case.native_shape)[0] > threshold for p in probability]
    return masks


def dilution_rows(model: nn.Module, cases: Sequence[PreparedCase], levels: Mapping[str, Sequence[float]],
                  draws: int = 5, seed: int = 0, threshold: float = 0.5, batch: int = 8,
                  progress: bool = True, window: SlidingWindow | None = None) -> list[dict]:
    """Every draw of every kind, level and case: Dice against the clean prediction and the truth.

    Args:
        model: the segmentation model (kept on its device, eval mode).
        cases: prepared cases with native labels.
        levels: {kind: levels}, see :data:`DEFAULT_LEVELS`.
        draws: draws per case and level (the study: :data:`STUDY_DRAWS`); deterministic kinds draw once.
        seed: the draws are ``numpy.random.default_rng([seed, case, kind, level])``.
        threshold: lesion probability above which a voxel is lesion.
        batch: inputs per forward pass.
        progress: a progress bar over cases × kinds.
        window: a native-mode model's sliding window (None: whole volumes).

    Returns:
        Rows ``case, kind, level, draw, diff, dice_clean, dice_truth, volume_ml`` (volume of the
        diluted prediction, ml).

    Raises:
        ParameterError: a bad kind, level or ``draws``.
        DataError: a case without ground truth.
    """
    from tqdm import tqdm

    levels = check_levels(levels)
    if draws < 1:
        raise ParameterError(f"draws must be at least 1 (got {draws}); the study drew {STUDY_DRAWS}")
    model.eval()
    rows: list[dict] = []
    jobs = [(i, case, k, kind) for i, case in enumerate(cases) for k, kind in enumerate(levels)]
    for i, case, k, kind in tqdm(jobs, desc="dilution", unit="case·kind", disable=not progress):
        if case.native_label is None:
            raise DataError(f"case {case.case_id} has no ground truth: the dilution experiment needs labelled cases")
        truth = np.asarray(case.native_label) > 0
        voxel_ml = float(np.prod(case.spacing)) / 1000.0
        (clean,) = _native_masks(model, case.image[None], case, threshold, batch, window)
        n = 1 if kind in DETERMINISTIC else draws
        for j, level in enumerate(levels[kind]):
            rng = np.random.default_rng([seed, i, k, j])
            diluted = np.stack([dilute(case.image, kind, level, rng) for _ in range(n)])
            masks = _native_masks(model, diluted, case, threshold, batch, window)
            for draw, (x, mask) in enumerate(zip(diluted, masks, strict=True)):
                rows.append({"case": case.case_id, "kind": kind, "level": level, "draw": draw,
                             "diff": float(np.abs(x - case.image).mean()), "dice_clean": dice(mask, clean),
                             "dice_truth": dice(mask, truth), "volume_ml": float(mask.sum()) * voxel_ml})
    return rows


def summarize_levels(rows: Sequence[dict]) -> list[dict]:
    """Per kind and level over cases and draws: mean, sample sd and quartiles of each score.

    Returns:
        Rows ``kind, level, n, diff_mean`` and for ``dice_clean`` and ``dice_truth``: ``_mean``,
        ``_sd`` (0 for a single value), ``_q25``, ``_q75``.
    """
    import pandas as pd

    table = pd.DataFrame(list(rows))
    out = []
    for (kind, level), group in table.groupby(["kind", "level"], sort=False):
        row = {"kind": kind, "level": float(level), "n": len(group), "diff_mean": float(group["diff"].mean())}
        for key in ("dice_clean", "dice_truth"):
            values = group[key].to_numpy(dtype=np.float64)
            row[f"{key}_mean"] = float(values.mean())
            row[f"{key}_sd"] = float(values.std(ddof=1)) if len(values) > 1 else 0.0
            row[f"{key}_q25"], row[f"{key}_q75"] = (float(q) for q in np.percentile(values, [25, 75]))
        out.append(row)
    return out
