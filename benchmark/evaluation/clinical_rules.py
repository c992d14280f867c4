"""Threshold rules on the raw maps: how far single modalities and simple combinations get.

All scores are the pooled Dice over the brain voxels of many cases,
``2 Σ|R ∩ G| / (Σ|R| + Σ|G|)``, where R is the rule's mask and G the label. The brain is every
voxel where any map is non-zero (the maps are skull-stripped).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from benchmark.data.cases import Case


@dataclass(frozen=True)
class RuleScore:
    """A rule, its thresholds (in the maps' units) and its pooled Dice."""

    rule: str
    dice: float


def voxel_table(cases: Sequence[Case]) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Brain voxels of labelled cases as flat arrays: ({modality: values}, label as bool)."""
    values: dict[str, list[np.ndarray]] = {}
    labels = []
    for case in cases:
        if case.label is None:
            continue
        brain = np.any(case.modalities != 0, axis=0)
        for name, channel in zip(case.modality_names, case.modalities, strict=True):
            values.setdefault(name, []).append(channel[brain])
        labels.append(case.label[brain] > 0)
    return {k: np.concatenate(v) for k, v in values.items()}, np.concatenate(labels)


def pooled_dice(mask: np.ndarray, label: np.ndarray) -> float:
    """2|R ∩ G| / (|R| + |G|) over flat boolean arrays (1 when both are empty)."""
    total = int(mask.sum()) + int(label.sum())
    return 1.0 if total == 0 else 2.0 * int((mask & label).sum()) / total


def _quantiles(values: np.ndarray, low: float, high: float, n: int) -> np.ndarray:
    return np.unique(np.percentile(values, np.linspace(low, high, n)))


def best_single_threshold(values: np.ndarray, label: np.ndarray, name: str,
                          steps: int = 100) -> RuleScore:
    """The best ``x > t`` or ``x < t`` over ``steps`` percentile thresholds of one modality."""
    best = RuleScore(f"{name}: no threshold", 0.0)
    for t in _quantiles(values, 0.5, 99.5, steps):
        for op, mask in ((">", values > t), ("<", values < t)):
            score = pooled_dice(mask, label)
            if score > best.dice:
                best = RuleScore(f"{name} {op} {t:.4g}", score)
    return best


def best_combined_rule(table: dict[str, np.ndarray], label: np.ndarray, steps: int = 12) -> RuleScore:
    """The best ``(Tmax > a ∧ rCBF < b) ∪ ADC < c`` over a grid of percentile thresholds."""
    tmax, rcbf, adc = table["Tmax"], table["rCBF"], table["ADC"]
    best = RuleScore("no rule", 0.0)
    for a in _quantiles(tmax, 70, 99.5, steps):
        above = tmax > a
        for b in _quantiles(rcbf, 1, 60, steps):
            joint = above & (rcbf < b)
            for c in [0.0, *_quantiles(adc, 0.5, 10, 4)]:
                score = pooled_dice(joint | (adc < c), label)
                if score > best.dice:
                    best = RuleScore(f"(Tmax > {a:.3g} s and rCBF < {b:.3g}) or ADC < {c:.3g} mm²/s",
                                     score)
    return best


CLINICAL_RULES: tuple[str, ...] = ("core_rcbf30", "hypoperfusion_tmax6", "core_or_hypoperfusion")
"""The clinical threshold rules, in the order the leaderboard lists them."""


def lateral_axis(affine: np.ndarray) -> int:
    """The array axis, in (D, H, W) order, that runs left–right (world x) under ``affine``.

    Array axes are the NIfTI voxel axes reversed: (D, H, W) = (k, j, i).
    """
    voxel_axis = int(np.argmax(np.abs(np.asarray(affine)[0, :3])))
    return 2 - voxel_axis


def hemispheres(brain: np.ndarray, axis: int) -> tuple[np.ndarray, np.ndarray]:
    """The brain split at its centre of mass along ``axis``: (low side, high side) boolean masks."""
    index = np.nonzero(brain)[axis]
    middle = float(index.mean()) if index.size else brain.shape[axis] / 2
    shape = [1, 1, 1]
    shape[axis] = brain.shape[axis]
    coordinate = np.arange(brain.shape[axis]).reshape(shape)
    return brain & (coordinate < middle), brain & (coordinate >= middle)


def clinical_masks(maps: dict[str, np.ndarray], affine: np.ndarray, rcbf_fraction: float = 0.3,
                   tmax_seconds: float = 6.0) -> dict[str, np.ndarray]:
    """The clinical rules on one case's raw maps, as (D, H, W) boolean masks.

    * ``hypoperfusion_tmax6``: Tmax > 6 s inside the brain;
    * ``core_rcbf30``: rCBF < 30 % of the mean rCBF of the contralateral (unaffected) hemisphere.
      The hemispheres are split at the brain's centre of mass along the left–right axis of the
      affine; the affected one is the one with the larger hypoperfused volume, so the reference
      needs no ground truth;
    * ``core_or_hypoperfusion``: their union.

    Args:
        maps: at least ``rCBF`` (relative units) and ``Tmax`` (s), (D, H, W) each.
        affine: the case's voxel-to-world matrix.
        rcbf_fraction: the core threshold as a fraction of the contralateral mean.
        tmax_seconds: the hypoperfusion threshold in s.
    """
    rcbf, tmax = maps["rCBF"], maps["Tmax"]
    brain = np.any(np.stack(list(maps.values())) != 0, axis=0)
    hypoperfused = brain & (tmax > tmax_seconds)
    low, high = hemispheres(brain, lateral_axis(affine))
    healthy = high if (hypoperfused & low).sum() >= (hypoperfused & high).sum() else low
    reference = float(rcbf[healthy].mean()) if healthy.any() else float(rcbf[brain].mean()) if brain.any() else 0.0
    core = brain & (rcbf < rcbf_fraction * reference)
    return {"core_rcbf30": core, "hypoperfusion_tmax6": hypoperfused, "core_or_hypoperfusion": core | hypoperfused}
