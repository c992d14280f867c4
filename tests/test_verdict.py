"""The report's verdict: intervals, paired tests against the best row, and what it can conclude."""

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from benchmark.reporting.conclusions import conclusions, smallest_p
from benchmark.reporting.leaderboard import StudyRuns, compare_with_best


def _cases(values):
    return pd.DataFrame({"case": [f"c{i}" for i in range(len(values))], "dice": values})


def test_rows_are_tested_against_the_best_with_holm():
    rng = np.random.default_rng(0)
    best = rng.uniform(0.7, 0.9, 12)
    close = best - rng.normal(0.0, 0.01, 12)
    far = best - 0.3 - rng.uniform(0, 0.05, 12)
    table = pd.DataFrame({"name": ["a", "b", "c", "d"], "run_id": ["ra", "rb", "rc", "rd"],
                          "dice_mean": [best.mean(), close.mean(), far.mean(), math.nan]})
    out = compare_with_best(table, {"ra": _cases(best), "rb": _cases(close), "rc": _cases(far)})
    p_close, p_far = stats.wilcoxon(best, close).pvalue, stats.wilcoxon(best, far).pvalue
    m = 2
    expected_far = min(1, m * p_far) if p_far <= p_close else max(min(1, m * p_close), min(1, p_far))
    assert out.loc[2, "p_vs_best"] == pytest.approx(expected_far)
    assert out.loc[2, "tied_with_best"] == 0.0 and out.loc[1, "tied_with_best"] == 1.0
    assert math.isnan(out.loc[0, "p_vs_best"]) and math.isnan(out.loc[3, "p_vs_best"])  # best; no per-case table
    assert out.loc[0, "dice_ci_low"] < best.mean() < out.loc[0, "dice_ci_high"] and out.loc[0, "n_cases"] == 12


def test_rows_are_paired_on_the_cases_both_scored():
    best = _cases([0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3])
    other = _cases([0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2]).iloc[::-1]  # other order, same cases
    out = compare_with_best(pd.DataFrame({"name": ["a", "b"], "run_id": ["ra", "rb"]}), {"ra": best, "rb": other})
    assert out.loc[1, "p_vs_best"] == pytest.approx(2 / 2**7)  # every case lower by 0.1: the exact minimum


def test_few_cases_are_said_to_allow_no_verdict():
    assert smallest_p(6, 4) == pytest.approx(4 * 2 / 64)
    rows = [0.9, 0.5, 0.4, 0.3, 0.2, 0.1]
    table = pd.DataFrame({"name": ["unet3d", "segresnet3d"], "run_id": ["ra", "rb"], "dice_mean": [0.6, 0.3]})
    table = compare_with_best(table, {"ra": _cases(rows), "rb": _cases([r - 0.3 for r in rows])})
    runs = StudyRuns("e", "s")
    lines = conclusions(runs, table, pd.DataFrame())
    text = " ".join(lines)
    assert "6 cases" in text and "1 fold, 1 repeat" in text and "unet3d" in text
    assert smallest_p(6, 1) < 0.05 and "no difference can be significant" not in text
    many = compare_with_best(pd.concat([table] * 3, ignore_index=True).assign(run_id=["ra", "rb"] * 3),
                             {"ra": _cases(rows[:4]), "rb": _cases([r - 0.3 for r in rows[:4]])})
    assert "no difference can be significant" in " ".join(conclusions(runs, many, pd.DataFrame()))


def test_synthetic_data_is_named_as_such():
    explanations = pd.DataFrame({"method": ["lrp_epsilon"], "filter": ["raw"], "mode": ["raw"],
                                 "evidence_mass_accuracy": [0.8], "relevance_mass_accuracy": [0.7]})
    text = " ".join(conclusions(StudyRuns("e", "s"), pd.DataFrame(), explanations))
    assert "synthetic data" in text and "clinical accuracy" in text and "lrp_epsilon" in text


def test_folds_and_repeats_are_stated():
    from tracking.records import RunRecord

    rows = [0.9, 0.5, 0.4, 0.3, 0.2, 0.1]
    table = compare_with_best(pd.DataFrame({"name": ["unet3d"], "run_id": ["ra"], "dice_mean": [0.4]}),
                              {"ra": _cases(rows)})
    evaluation = RunRecord("ra", "ra", "FINISHED", 0, "", {}, {"folds": "5", "repeats": "2"})
    runs = StudyRuns("e", "s", evaluations=[evaluation])
    text = " ".join(conclusions(runs, table, pd.DataFrame()))
    assert "out-of-fold over **5 folds**" in text and "2 seed repeats" in text
