"""The resolution study as the report and MLflow show it: its figure, its table and its report section.

The stage (:mod:`benchmark.stages.resolution`) logs ``resolution.csv`` (one row per setting: means with
95 % bootstrap intervals overall and over the small-lesion cases, paired p-values against the reference
setting, lesion-wise small-lesion recall) and ``resolution.png`` to its parent run; the report reads the
newest finished one of the study back (:func:`resolution_section`). Nothing is recomputed here.
"""

from __future__ import annotations

import math
import shutil
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from benchmark.atomic import atomic_file  # noqa: E402
from benchmark.evaluation.resolution import METRICS, SMALL_LESION_ML  # noqa: E402
from benchmark.reporting.charts import Figure  # noqa: E402
from benchmark.reporting.experiments import ExperimentSection  # noqa: E402
from benchmark.reporting.tables import DisplayTable  # noqa: E402
from tracking.records import Store  # noqa: E402

TABLE = "resolution.csv"
FIGURE = "resolution.png"
LABELS = {"dice": "Dice", "hd95": "HD95 (mm)", "lesion_f1": "lesion F1"}


def table_rows(summaries: Sequence[dict]) -> list[dict]:
    """Flat rows of :func:`benchmark.evaluation.resolution.summarize`'s summaries (intervals as mean/low/high)."""
    rows = []
    for s in summaries:
        row = {"setting": s["setting"], "cases": s["cases"], "small_cases": s["small_cases"],
               "small_lesions": s["small_lesions"], "small_lesion_recall": s["small_lesion_recall"]}
        for metric in METRICS:
            for prefix in ("", "small_"):
                interval = s[f"{prefix}{metric}"]
                row.update({f"{prefix}{metric}": interval.mean, f"{prefix}{metric}_low": interval.low,
                            f"{prefix}{metric}_high": interval.high, f"p_{prefix}{metric}": s[f"p_{prefix}{metric}"]})
        rows.append(row)
    return rows


def resolution_figure(rows: Sequence[dict], path: Path) -> Path:
    """Dice, HD95 and lesion F1 per setting, all cases and small-lesion cases side by side, with 95 % intervals."""
    frame = pd.DataFrame(rows)
    fig, axes = plt.subplots(1, len(METRICS), figsize=(4.2 * len(METRICS), 3.6))
    x = np.arange(len(frame))
    for ax, metric in zip(np.atleast_1d(axes), METRICS, strict=True):
        for offset, prefix, label, colour in ((-0.18, "", "all cases", "#1f77b4"),
                                              (0.18, "small_", f"lesion < {SMALL_LESION_ML:g} ml", "#d62728")):
            mean = frame[f"{prefix}{metric}"].to_numpy(float)
            low = mean - frame[f"{prefix}{metric}_low"].to_numpy(float)
            high = frame[f"{prefix}{metric}_high"].to_numpy(float) - mean
            ax.bar(x + offset, np.nan_to_num(mean), width=0.34, color=colour, alpha=0.8, label=label)
            ax.errorbar(x + offset, mean, yerr=[np.nan_to_num(low), np.nan_to_num(high)], fmt="none",
                        ecolor="black", capsize=3, lw=1)
        ax.set_xticks(x, frame["setting"], rotation=20)
        ax.set_title(LABELS[metric])
    np.atleast_1d(axes)[0].legend(fontsize=8)
    fig.suptitle("Input resolution: mean and 95 % bootstrap interval over cases", fontsize=10)
    fig.tight_layout()
    with atomic_file(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    return path


def _cell(mean: float, low: float, high: float, digits: int = 3) -> str:
    if not math.isfinite(mean):
        return "–"
    return f"{mean:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"


def display_table(frame: pd.DataFrame) -> DisplayTable:
    """The report's table: one row per setting."""
    columns = ["setting", "cases", "dice", "small_dice", "p_small_dice", "hd95", "lesion_f1", "small_lesion_f1",
               "small_lesion_recall"]
    rows = []
    for _, r in frame.iterrows():
        cells = [str(r["setting"]), f"{int(r['cases'])} ({int(r['small_cases'])} small)"]
        for metric in ("dice", "small_dice"):
            cells.append(_cell(r[metric], r[f"{metric}_low"], r[f"{metric}_high"]))
        cells.append(f"{r['p_small_dice']:.3g}")
        cells.append(_cell(r["hd95"], r["hd95_low"], r["hd95_high"], 1))
        for metric in ("lesion_f1", "small_lesion_f1"):
            cells.append(_cell(r[metric], r[f"{metric}_low"], r[f"{metric}_high"]))
        recall = r["small_lesion_recall"]
        cells.append("–" if not math.isfinite(recall) else f"{recall:.2f} of {int(r['small_lesions'])}")
        rows.append(("", cells))
    return DisplayTable("Per setting (95 % bootstrap intervals; p: paired Wilcoxon against the first row)",
                        columns, rows)


def verdict(frame: pd.DataFrame, goal: float = 0.1) -> str:
    """One sentence on the issue's goal: does ``native`` beat the reference on small-lesion cases by ``goal`` Dice?"""
    if "native" not in set(frame["setting"]) or len(frame) < 2:
        return "No native setting was trained, so native and seed grids cannot be compared."
    reference, native = frame.iloc[0], frame[frame["setting"] == "native"].iloc[0]
    if int(reference["small_cases"]) == 0:
        return (f"No scored case has a lesion under {SMALL_LESION_ML:g} ml, so the small-lesion comparison is empty; "
                "score more cases.")
    gain = float(native["small_dice"] - reference["small_dice"])
    met = "meets" if gain >= goal else "does not meet"
    n = int(reference["small_cases"])
    return (f"On the {n} case{'s' if n != 1 else ''} with lesions under {SMALL_LESION_ML:g} ml, native mode "
            f"scores Dice {native['small_dice']:.3f} against {reference['small_dice']:.3f} at {reference['setting']} "
            f"(difference {gain:+.3f}, paired Wilcoxon p = {native['p_small_dice']:.3g}): this {met} the goal of "
            f"+{goal:g}; with this few cases the interval, not the mean, is the finding.")


def resolution_section(store: Store, study: str, figures: Path, work: Path) -> ExperimentSection | None:
    """The report's section from the newest finished ``resolution`` run of ``study``, or None when there is none."""
    parents = [r for r in store.runs("resolution", study) if r.status == "FINISHED"]
    if not parents:
        return None
    parent = parents[0]
    folder = work / parent.run_id
    table = store.download(parent.run_id, TABLE, folder)
    if table is None:
        return None
    frame = pd.read_csv(table)
    p = parent.params
    text = [f"The same network (`{p.get('architecture')}`, width {p.get('width')}) trained with the same "
            f"hyper-parameters, seed, **{p.get('epochs')} epochs** and training cases at each input resolution: the "
            f"study's grids and `native` mode (target spacing {p.get('native_spacing', '–')} mm, patch "
            f"{p.get('native_patch', '–')}, Gaussian sliding windows). Every model is its **last** epoch (nothing is "
            f"selected on the scored cases) and is scored on the {p.get('val_cases')} validation cases of the split "
            "on their native grid.", verdict(frame)]
    section = ExperimentSection("resolution", "Resolution study: the seed grids against native resolution", text,
                                [display_table(frame)], run_id=parent.run_id)
    png = store.download(parent.run_id, FIGURE, folder)
    if png is not None:
        target = figures / f"experiment_resolution_{FIGURE}"
        shutil.copyfile(png, target)
        section.figures.append(Figure(target, "Dice, HD95 and lesion F1 per setting over all scored cases (blue) and "
                                      f"over the cases with lesions under {SMALL_LESION_ML:g} ml (red), with 95 % "
                                      "bootstrap intervals."))
    return section
