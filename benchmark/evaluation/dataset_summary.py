"""A short description of a data set: grids, spacing, lesion volumes, and label difficulty."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from benchmark.data.cases import discover, read_case
from benchmark.evaluation.clinical_rules import best_combined_rule, best_single_threshold, voxel_table


def summarize_dataset(root: str | Path, with_rules: bool = True) -> tuple[pd.DataFrame, list[str]]:
    """Per-case table and the text lines to print for a data folder.

    Returns:
        (table with case, grid X×Y×Z, spacing mm, lesion volume ml, has label; summary lines).
    """
    refs = discover(root)
    cases = [read_case(r) for r in refs]
    rows = []
    for case in cases:
        d, h, w = case.shape
        rows.append({
            "case": case.case_id,
            "grid": f"{w}x{h}x{d}",
            "spacing_mm": "x".join(f"{s:.2f}" for s in case.spacing[::-1]),
            "lesion_ml": None if case.label is None else round(float(case.label.sum()) * case.voxel_ml, 2),
        })
    table = pd.DataFrame(rows)
    labelled = table.dropna(subset=["lesion_ml"])
    lines = [
        f"data: {root}",
        f"cases: {len(table)} ({len(labelled)} with ground truth, {len(table) - len(labelled)} without)",
        f"grids (X×Y×Z): {', '.join(sorted(set(table['grid'])))}",
    ]
    if len(labelled):
        vol = labelled["lesion_ml"].to_numpy(float)
        lines.append(f"lesion volume: median {np.median(vol):.1f} ml, "
                     f"range {vol.min():.1f}–{vol.max():.1f} ml")
    if with_rules and len(labelled):
        values, label = voxel_table(cases)
        singles = [best_single_threshold(values[m], label, m) for m in values]
        best = max(singles, key=lambda s: s.dice)
        lines.append(f"best single-modality threshold: Dice {best.dice:.3f} ({best.rule})")
        if {"Tmax", "rCBF", "ADC"} <= set(values):
            combo = best_combined_rule(values, label)
            lines.append(f"best three-modality rule:       Dice {combo.dice:.3f} ({combo.rule})")
    return table, lines
