"""The figures of the study's experiments (PNG), drawn from their tables by the experiments stage.

* ``dilution_curves.png``: Dice against the dilution level per kind, mean ± sd band and quartile bars;
* ``dilution_dice_vs_diff.png``: the study's view, Dice against the mean input change per draw;
* ``defect_effects.png``: the defect experiment, prediction and relevance per model;
* ``amplitude_by_channel.png``: the normalised-mean relevance amplitude per modality and method;
* ``filter_boxplots_<method>.png``: per filter of the sweep, the distribution over cases of the key
  explanation metrics (one box per input grid where several exist).

Each function writes one PNG atomically and returns its path; the stage logs it to MLflow and
the report shows it from there.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from benchmark.atomic import atomic_file  # noqa: E402
from benchmark.reporting.charts import filter_order  # noqa: E402
from benchmark.reporting.tables import HEADERS  # noqa: E402

LEVEL_UNITS = {"noise": "σ of N(0, σ²), input units", "study_noise": "σ of the study's U(0, |N(0, σ²)|)",
               "zero": "share of input values set to 0", "smooth": "3×3×3 mean filters applied"}


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    with atomic_file(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    return path


def dilution_curves(summary: pd.DataFrame, path: Path) -> Path:
    """Per kind, Dice against the clean prediction and against the truth over the levels (mean ± sd)."""
    kinds = list(dict.fromkeys(summary["kind"]))
    fig, axes = plt.subplots(1, len(kinds), figsize=(4.0 * len(kinds), 3.6), squeeze=False, sharey=True)
    for ax, kind in zip(axes[0], kinds):
        part = summary[summary["kind"] == kind].sort_values("level")
        for key, colour, label in (("dice_clean", "tab:blue", "vs clean prediction"),
                                   ("dice_truth", "tab:red", "vs ground truth")):
            mean, sd = part[f"{key}_mean"].to_numpy(), part[f"{key}_sd"].to_numpy()
            ax.plot(part["level"], mean, marker="o", ms=4, color=colour, label=label)
            ax.fill_between(part["level"], mean - sd, mean + sd, color=colour, alpha=0.15)
            ax.vlines(part["level"], part[f"{key}_q25"], part[f"{key}_q75"], color=colour, lw=3, alpha=0.5)
        ax.set_title(kind, fontsize=9)
        ax.set_xlabel(LEVEL_UNITS.get(kind, "level"), fontsize=8)
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("Dice (mean ± sd; bar: quartiles)")
    axes[0][0].legend(fontsize=7, loc="lower left")
    return _save(fig, path)


def dilution_scatter(rows: pd.DataFrame, path: Path) -> Path:
    """The study's view: every draw's Dice against the clean prediction over its mean |x' − x|."""
    fig, ax = plt.subplots(figsize=(5.5, 4.0))
    for k, kind in enumerate(dict.fromkeys(rows["kind"])):
        part = rows[rows["kind"] == kind]
        ax.scatter(part["diff"], part["dice_clean"], s=6, alpha=0.6, color=plt.get_cmap("tab10")(k), label=kind)
    ax.set_xlabel("diff = mean |x' − x| (input units)")
    ax.set_ylabel("Dice vs clean prediction")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return _save(fig, path)


def defect_figure(rows: pd.DataFrame, path: Path) -> Path:
    """Per model: Dice vs the clean prediction, defect voxels marked as lesion, and relevance drawn by the defect."""
    models = list(dict.fromkeys(rows["model"]))
    panels = [("dice_clean", "Dice vs clean prediction"), ("defect_detected", "share of the defect marked lesion"),
              ("relevance", "relevance density in the defect / elsewhere")]
    fig, axes = plt.subplots(1, 3, figsize=(12.5, 3.8), squeeze=False)
    for ax, (key, title) in zip(axes[0], panels):
        if key == "relevance":
            data, labels = [], []
            for m in models:
                part = rows[rows["model"] == m]
                data += [part["clean_density_ratio"].to_numpy(), part["defect_density_ratio"].to_numpy()]
                labels += [f"{m}\nclean input", f"{m}\nwith defect"]
            ax.axhline(1.0, color="grey", ls="--", lw=1)
        else:
            data = [rows[rows["model"] == m][key].to_numpy() for m in models]
            labels = models
            ax.set_ylim(-0.02, 1.02)
        ax.boxplot(data, showmeans=True)
        ax.set_xticks(range(1, len(labels) + 1), labels, fontsize=7)
        ax.set_title(title, fontsize=9)
        ax.grid(alpha=0.3, axis="y")
    return _save(fig, path)


def amplitude_bars(table: pd.DataFrame, modalities: Sequence[str], path: Path) -> Path:
    """Grouped bars: per modality, each method's normalised-mean amplitude (mean over cases ± sd)."""
    methods = list(dict.fromkeys(table["method"]))
    width = 0.8 / max(1, len(methods))
    fig, ax = plt.subplots(figsize=(max(6.0, 1.3 * len(modalities) + 2), 4.0))
    x = np.arange(len(modalities))
    for k, method in enumerate(methods):
        part = table[table["method"] == method].set_index("modality").reindex(list(modalities))
        ax.bar(x + (k - (len(methods) - 1) / 2) * width, part["amplitude_mean"], width,
               yerr=part["amplitude_sd"], capsize=2, color=plt.get_cmap("tab10")(k % 10), label=method)
    ax.axhline(0, color="black", lw=0.6)
    ax.set_xticks(x, list(modalities))
    ax.set_ylabel("mean R_c / max|R| (signed)")
    ax.set_title("normalised-mean relevance amplitude by input channel (raw relevance)", fontsize=9)
    ax.legend(fontsize=7, ncol=2)
    ax.grid(alpha=0.3, axis="y")
    return _save(fig, path)


def filter_boxplots(values: pd.DataFrame, metrics: Sequence[str], method: str, path: Path) -> Path:
    """Per metric, one box per filter of the sweep over its values (one per case, or per case × channel).

    ``values`` is long: columns ``filter``, ``grid``, ``metric``, ``value``. With several grids the
    boxes of a filter stand side by side, one colour per grid (the study's layered box plots per
    input size).
    """
    filters = filter_order(values["filter"])
    grids = list(dict.fromkeys(values["grid"]))
    fig, axes = plt.subplots(len(metrics), 1, figsize=(max(7.0, 0.55 * len(filters) * len(grids) + 2),
                                                       2.4 * len(metrics) + 0.4), squeeze=False)
    width = 0.8 / len(grids)
    for ax, metric in zip(axes[:, 0], metrics):
        for g, grid in enumerate(grids):
            part = values[(values["grid"] == grid) & (values["metric"] == metric)]
            data = [part.loc[part["filter"] == f, "value"].dropna().to_numpy() for f in filters]
            positions = np.arange(len(filters)) + (g - (len(grids) - 1) / 2) * width
            kept = [(p, d) for p, d in zip(positions, data) if len(d)]
            if not kept:
                continue
            boxes = ax.boxplot([d for _, d in kept], positions=[p for p, _ in kept], widths=width * 0.9,
                               patch_artist=True, flierprops={"markersize": 2})
            for patch in boxes["boxes"]:
                patch.set_facecolor(plt.get_cmap("tab10")(g % 10))
                patch.set_alpha(0.5)
            ax.plot([], [], color=plt.get_cmap("tab10")(g % 10), lw=6, alpha=0.5, label=f"grid {grid}")
        ax.set_xticks(range(len(filters)), filters if ax is axes[-1, 0] else [], rotation=60, fontsize=7)
        label = "normalised-mean\namplitude" if metric == "amplitude" else metric
        ax.set_ylabel(HEADERS.get(metric, label), fontsize=8)
        ax.grid(alpha=0.3, axis="y")
    axes[0, 0].set_title(f"{method}: distribution over cases for each filter of the sweep", fontsize=9)
    axes[0, 0].legend(fontsize=7, loc="upper right")
    return _save(fig, path)
