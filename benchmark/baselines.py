"""Threshold rules on the raw maps: how far single modalities and simple combinations get.

All scores are the pooled Dice over the brain voxels of many cases,
``2 Σ|R ∩ G| / (Σ|R| + Σ|G|)``, where R is the rule's mask and G the label. The brain is every
voxel where any map is non-zero (the maps are skull-stripped).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from benchmark.datasets import Case


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
