"""What the leaderboard can and cannot conclude, in sentences built from its own tables.

The report states the evidence behind its verdict (cases, folds, repeats, intervals), which
differences to the best row are significant after Holm's correction, when the number of cases makes
significance impossible (the exact two-sided Wilcoxon signed-rank test on n non-zero paired
differences cannot give p below 2 / 2ⁿ; Holm multiplies the smallest p by the number of rows
tested), and that scores on synthetic data say nothing about clinical accuracy.
"""

from __future__ import annotations

import math

import pandas as pd

from benchmark.evaluation.statistics import ALPHA, CONFIDENCE
from benchmark.reporting.leaderboard import StudyRuns, floor_value, key_metrics


def smallest_p(n: int, tests: int) -> float:
    """The smallest Holm-corrected p ``tests`` exact Wilcoxon tests on ``n`` paired cases can give."""
    return min(1.0, tests * 2.0 / 2.0**n) if n > 0 else 1.0


def is_synthetic(runs: StudyRuns, explanations: pd.DataFrame) -> bool:
    """True when the study's data is strokelens' synthetic set (its path, or ground-truth evidence maps)."""
    data = runs.searches[0].params.get("data", "") if runs.searches else ""
    evidence = "evidence_mass_accuracy" in explanations and explanations["evidence_mass_accuracy"].notna().any()
    return "synthetic" in data.lower() or bool(evidence)


def _design(runs: StudyRuns) -> tuple[int, int]:
    """(folds, seed repeats) of the newest evaluation, (1, 1) when it logged none."""
    params = runs.evaluations[0].params if runs.evaluations else {}
    try:
        return int(params.get("folds", 1)), int(params.get("repeats", 1))
    except ValueError:
        return 1, 1


def conclusions(runs: StudyRuns, architectures: pd.DataFrame, explanations: pd.DataFrame) -> list[str]:
    """The report's conclusions, one sentence or short paragraph each (Markdown ``**bold**`` marks)."""
    lines = []
    evaluated = architectures[architectures["n_cases"].notna()] if "n_cases" in architectures else architectures[:0]
    if evaluated.empty:
        lines.append("No row has per-case results (run the evaluate stage), so no interval or test is shown and "
                     "the ranking rests on one validation mean per trial.")
    else:
        n = int(evaluated["n_cases"].max())
        best = evaluated.iloc[0]
        folds, repeats = _design(runs)
        if folds > 1 or repeats > 1:
            design = (f"out-of-fold over **{folds} folds** of the saved split (each case scored by the model that "
                      f"did not train on it), {repeats} seed repeat{'s' if repeats > 1 else ''} per fold averaged "
                      "per case")
        else:
            design = ("one saved split (1 fold, 1 repeat: no spread across splits or seeds is included; "
                      "`--folds K --repeats R` adds it)")
        lines.append(f"Rows were evaluated on **{n} cases**, {design}. Intervals are {CONFIDENCE:.0%} percentile "
                     "bootstrap intervals of the mean over cases.")
        lines.append(f"Best: **{best['name']}**, Dice {best['dice_mean']:.3f} "
                     f"[{best['dice_ci_low']:.3f}, {best['dice_ci_high']:.3f}].")
        tested = evaluated[evaluated["p_vs_best"].notna()]
        if not tested.empty:
            tied = tested[tested["tied_with_best"] == 1.0]["name"].tolist()
            differ = tested[tested["tied_with_best"] == 0.0]["name"].tolist()
            if differ:
                lines.append(f"Significantly below the best (Wilcoxon signed-rank over cases, Holm-corrected, "
                             f"α = {ALPHA}): {', '.join(differ)}.")
            if tied:
                lines.append(f"**Not distinguishable from the best** on these cases: {', '.join(tied)}.")
            floor = smallest_p(n, len(tested))
            if floor >= ALPHA:
                lines.append(f"With {n} cases and {len(tested)} comparisons the smallest Holm-corrected p the test "
                             f"can give is {floor:.3f} ≥ {ALPHA}: no difference can be significant, whatever the "
                             "scores. More validation cases (or cross-validation folds) are needed for a verdict.")
    if not explanations.empty:
        keys = key_metrics(explanations.columns)
        if keys:
            top = explanations.iloc[0]
            floor = floor_value(explanations)
            floor_text = f"; the random floor is {floor:.3f}" if math.isfinite(floor) else ""
            lines.append(f"Explanations: **{top['method']}** ({top['filter']}) ranks first, "
                         f"{keys[0].replace('_', ' ')} {top[keys[0]]:.3f}{floor_text}. Explanation metrics are "
                         "means over the explained cases of one model; they carry no test of significance.")
    if is_synthetic(runs, explanations):
        lines.append("**These scores come from synthetic data** whose lesions and evidence the generator controls: "
                     "they rank methods on that generator and say nothing about clinical accuracy.")
    return lines
