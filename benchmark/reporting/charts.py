"""The report's figures (PNG, matplotlib and seaborn), each with its caption.

* ``dice_by_volume.png``: Dice of each validation case against its true lesion volume;
* ``heatmap_<metric>.png``: each key explanation metric (and the mass accuracies and retained
  relevance beside them) over method × filter, for the first (best) architecture;
* ``architectures_methods.png``: the key metrics of the unfiltered methods over method ×
  architecture (each architecture's best trial), mean ± sd over cases with n;
* ``filter_sweep_<metric>.png``: the study's view, a metric against the filter interval;
* ``modalities_<metric>.png``: per-modality bLRPtoOT and evidence mass accuracy of the unfiltered methods;
* ``overlay_{best,worst}_<method>_<case>.png``: relevance over a slice, copied from the explain run.

"The study" is :data:`benchmark.REFERENCE_STUDY`; its filter intervals are
:data:`explain.filters.STUDY_PASS` and :data:`explain.filters.STUDY_CLAMP`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from benchmark.atomic import atomic_file  # noqa: E402
from benchmark.reporting.leaderboard import (  # noqa: E402
    FLOOR_METHOD,
    StudyRuns,
    best_explained,
    case_extremes,
    first_architecture,
    floor_value,
    key_metrics,
    modality_table,
)
from benchmark.reporting.tables import HEADERS  # noqa: E402
from explain.filters import STUDY_CLAMP, STUDY_PASS  # noqa: E402
from tracking.records import Store  # noqa: E402


@dataclass
class Figure:
    """A PNG of the report with its caption."""

    path: Path
    caption: str


def _save(fig, path: Path, rect: tuple | None = None) -> Path:
    """Lay out (inside ``rect`` when given), write the PNG atomically, close the figure."""
    fig.tight_layout(rect=rect)
    with atomic_file(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    return path


def architecture_figures(runs: StudyRuns, table: pd.DataFrame, folder: Path) -> list[Figure]:
    """Dice against true lesion volume, one point per validation case and model or rule."""
    import seaborn as sns

    frames = [runs.cases[r.run_id].assign(name=r.architecture, kind="network" if r.kind == "evaluation" else
                                          "clinical rule")
              for r in runs.evaluations + runs.clinical_rules if r.run_id in runs.cases]
    if not frames:
        return []
    cases = pd.concat(frames, ignore_index=True)
    order = [n for n in table["name"] if n in set(cases["name"])]
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    sns.scatterplot(data=cases, x="lesion_ml", y="dice", hue="name", hue_order=order, style="kind",
                    markers={"network": "o", "clinical rule": "X"}, s=55, alpha=0.85, ax=ax)
    ax.set_xscale("log")
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_xlabel("true lesion volume (ml, log scale)")
    ax.set_ylabel("Dice")
    ax.set_ylim(-0.03, 1.03)
    ax.set_title(f"Dice by lesion volume: {cases['case'].nunique()} validation cases")
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))
    path = _save(fig, folder / "dice_by_volume.png")
    return [Figure(path, "Dice of each validation case against its true lesion volume (the study's dice-by-size "
                         "view): small lesions are where models and rules fail first.")]


def filter_order(filters) -> list[str]:
    """Raw first, then layer-wise pass and clamp, then post-hoc, each in the study's interval order."""
    study_filters = [f"pass_{a:g}_{b:g}" for a, b in STUDY_PASS] + [f"clamp_{a:g}_{b:g}" for a, b in STUDY_CLAMP]
    known = ["raw", *study_filters, *(f"post_{s}" for s in study_filters)]
    present = list(dict.fromkeys(filters))
    return [f for f in known if f in present] + sorted(f for f in present if f not in known)


def explanation_figures(runs: StudyRuns, table: pd.DataFrame, folder: Path, store: Store,
                        work: Path) -> list[Figure]:
    """Heatmaps over method × filter, the filter sweeps, per-modality heatmaps and the best/worst overlays.

    Args:
        runs: the study's runs (an overlay that cannot be downloaded is added to ``runs.missing``).
        table: the explanation leaderboard.
        folder: where the PNGs are written.
        store: where the overlays are downloaded from.
        work: a scratch folder for the downloads.
    """
    import seaborn as sns

    if table.empty:
        return []
    figures = []
    architecture_figure = _architecture_figure(runs, table, folder)
    if architecture_figure is not None:
        figures.append(architecture_figure)
    table = first_architecture(table)
    methods = list(dict.fromkeys(table["method"]))
    columns = filter_order(table["filter"])
    shown = [*key_metrics(table.columns), *[k for k in HEATMAP_EXTRA if k in table.columns]]
    for metric in shown:
        grid = table.pivot_table(index="method", columns="filter", values=metric, aggfunc="first")
        grid = grid.reindex(index=methods, columns=[c for c in columns if c in grid.columns])
        fig, ax = plt.subplots(figsize=(max(6.0, 0.42 * grid.shape[1] + 3), max(3.0, 0.38 * grid.shape[0] + 1.5)))
        sns.heatmap(grid, annot=grid.shape[1] <= 40, fmt=".2f", annot_kws={"fontsize": 6}, cmap="viridis",
                    cbar_kws={"label": HEADERS.get(metric, metric)}, linewidths=0.3, ax=ax)
        ax.set_xlabel("filter (raw | layer-wise | post-hoc)")
        ax.set_ylabel("method (ranked)")
        ax.tick_params(labelsize=7)
        ax.set_title(f"{HEADERS.get(metric, metric)} over method × filter, {table['architecture'].iloc[0]} "
                     "(mean over cases)" if "architecture" in table else
                     f"{HEADERS.get(metric, metric)} over method × filter (mean over cases)")
        ranks = "" if metric in key_metrics(table.columns) else " (shown, does not rank)"
        figures.append(Figure(_save(fig, folder / f"heatmap_{metric}.png"),
                              f"{HEADERS.get(metric, metric)}{ranks} of every method (rows, ranked) and filter "
                              "(columns); blank cells: the filter does not apply (baselines take post-hoc filters "
                              "only)."))
    for metric in key_metrics(table.columns):
        sweep = _sweep_figure(table, folder, metric)
        if sweep is not None:
            figures.append(sweep)
    figures += _modality_figures(runs, table, folder)
    figures += _overlay_figures(runs, table, folder, store, work)
    return figures


HEATMAP_EXTRA = ("retained_relevance", "evidence_mass_accuracy", "relevance_mass_accuracy", "blrp_to_ot")
"""Metrics shown as method × filter heatmaps beside the key metrics, though they do not rank."""


def architecture_grid(runs: StudyRuns, table: pd.DataFrame, metric: str) -> tuple[pd.DataFrame, pd.DataFrame,
                                                                                   pd.DataFrame]:
    """(mean, sd, n) of a metric over unfiltered method (rows) × architecture (columns), over cases.

    From the per-case table where there is one (sd over cases, n cases), else the means with n = 1 row.
    """
    raw = table[table["mode"] == "raw"]
    methods = list(dict.fromkeys(raw["method"]))
    architectures = list(dict.fromkeys(raw["architecture"]))
    per_case = runs.explanation_cases()
    if per_case is not None and metric in per_case and "filter" in per_case:
        cases = per_case[(per_case["filter"] == "raw") & per_case["run_id"].isin(set(raw["run_id"]))]
        cases = cases.merge(raw[["run_id", "architecture"]].drop_duplicates(), on="run_id")
        grouped = cases.groupby(["method", "architecture"])[metric]
        mean, sd, n = (grouped.mean().unstack(), grouped.std(ddof=1).unstack(), grouped.count().unstack())
    else:
        mean = raw.pivot_table(index="method", columns="architecture", values=metric, aggfunc="first")
        sd, n = mean * np.nan, mean.notna().astype(float)
    return tuple(frame.reindex(index=methods, columns=architectures) for frame in (mean, sd, n))


def _architecture_figure(runs: StudyRuns, table: pd.DataFrame, folder: Path) -> Figure | None:
    """The key metrics of the unfiltered methods over method × architecture, mean ± sd (n) in each cell."""
    import seaborn as sns

    if "architecture" not in table or table["architecture"].nunique() < 1 or (table["mode"] == "raw").sum() == 0:
        return None
    keys = key_metrics(table.columns)
    grids = [(metric, *architecture_grid(runs, table, metric)) for metric in keys]
    rows, columns = grids[0][1].shape
    fig, axes = plt.subplots(1, len(grids), figsize=(max(4.0, 1.5 * columns + 2.5) * len(grids),
                                                     max(3.0, 0.45 * rows + 1.8)), squeeze=False)
    for ax, (metric, mean, sd, n) in zip(axes[0], grids):
        labels = mean.copy().astype(object)
        for i in range(rows):
            for j in range(columns):
                m, s, k = mean.iat[i, j], sd.iat[i, j], n.iat[i, j]
                labels.iat[i, j] = "" if not np.isfinite(m) else (
                    f"{m:.2f}" + (f"\n±{s:.2f}" if np.isfinite(s) else "") + f"\nn={int(k)}")
        sns.heatmap(mean.astype(float), annot=labels.to_numpy(), fmt="", annot_kws={"fontsize": 6}, cmap="viridis",
                    cbar_kws={"label": HEADERS.get(metric, metric)}, linewidths=0.3, ax=ax)
        ax.set_title(HEADERS.get(metric, metric), fontsize=9)
        ax.set_xlabel("architecture (its best trial)")
        ax.set_ylabel("method (unfiltered)")
        ax.tick_params(labelsize=7)
    fig.suptitle("Explanation methods across architectures: mean ± sd over the explained cases (n)", fontsize=10)
    path = _save(fig, folder / "architectures_methods.png", rect=(0, 0, 1, 0.95))
    return Figure(path, "The ranking's key metrics of each unfiltered method (rows) on the best trial of each "
                        "architecture (columns): mean over the explained validation cases ± their sd, n cases. "
                        "Blank: the method was not explained on that architecture (the default explains the "
                        "champion with every method, the others with three LRP variants and the two references).")


def _modality_figures(runs: StudyRuns, table: pd.DataFrame, folder: Path) -> list[Figure]:
    """Per unfiltered method and modality: the study's bLRPtoOT and, on synthetic data, evidence mass accuracy."""
    import seaborn as sns

    methods = list(dict.fromkeys(table["method"]))
    figures = []
    for metric in ("blrp_to_ot", "evidence_mass_accuracy"):
        grid = modality_table(runs, metric)
        if grid.empty:
            continue
        grid = grid.reindex(index=[m for m in methods if m in grid.index])
        fig, ax = plt.subplots(figsize=(0.9 * grid.shape[1] + 3, 0.38 * grid.shape[0] + 1.6))
        sns.heatmap(grid, annot=True, fmt=".2f", annot_kws={"fontsize": 7}, cmap="magma", vmin=0, vmax=1,
                    cbar_kws={"label": HEADERS.get(metric, metric)}, linewidths=0.3, ax=ax)
        ax.set_xlabel("modality")
        ax.set_ylabel("method (unfiltered, ranked)")
        ax.tick_params(labelsize=8)
        ax.set_title(f"{HEADERS.get(metric, metric)} per modality")
        what = ("the share of the lesion that each modality's strong relevance (|R|/max|R| > 0.5) covers"
                if metric == "blrp_to_ot" else "the share of each modality's positive relevance on the voxels "
                "the lesion changed in that modality (the generator's ground truth)")
        figures.append(Figure(_save(fig, folder / f"modalities_{metric}.png"),
                              f"Per modality, {what}: which maps the network's decision rests on."))
    return figures


def _sweep_figure(table: pd.DataFrame, folder: Path, metric: str) -> Figure | None:
    """The study's view: a metric against the filter interval, one line per method."""
    panels = [(kind, mode) for mode in ("layer", "post") for kind in ("pass", "clamp")]
    intervals = {"pass": [f"{a:g}_{b:g}" for a, b in STUDY_PASS], "clamp": [f"{a:g}_{b:g}" for a, b in STUDY_CLAMP]}
    names = set(table["filter"])
    present = [(k, m) for k, m in panels
               if any(("" if m == "layer" else "post_") + f"{k}_{i}" in names for i in intervals[k])]
    if not present:
        return None
    floor = floor_value(table, metric)
    fig, axes = plt.subplots(1, len(present), figsize=(4.2 * len(present), 3.8), sharey=True, squeeze=False)
    palette = plt.get_cmap("tab20")
    methods = list(dict.fromkeys(table["method"]))
    for ax, (kind, mode) in zip(axes[0], present):
        labels = ["raw", *intervals[kind]]
        names = ["raw", *[("" if mode == "layer" else "post_") + f"{kind}_{i}" for i in labels[1:]]]
        for k, method in enumerate(methods):
            own = table[table["method"] == method].set_index("filter")[metric]
            values = [own.get(n, np.nan) for n in names]
            if np.isfinite(values[1:]).any():
                ax.plot(range(len(names)), values, marker="o", ms=3, lw=1.2, color=palette(k % 20), label=method)
        if math.isfinite(floor):
            ax.axhline(floor, color="grey", ls="--", lw=1, label=f"{FLOOR_METHOD} floor")
        ax.set_xticks(range(len(labels)), ["raw", *[f"[{i.replace('_', ', ')}]" for i in labels[1:]]],
                      rotation=60, fontsize=7)
        ax.set_title(f"{kind}, {'after every layer' if mode == 'layer' else 'post-hoc at the input'}", fontsize=9)
        ax.set_xlabel("filter interval of |R| / max|R|", fontsize=8)
    axes[0][0].set_ylabel(HEADERS.get(metric, metric))
    handles, names = axes[0][0].get_legend_handles_labels()
    for ax in axes[0][1:]:
        for h, n in zip(*ax.get_legend_handles_labels()):
            if n not in names:
                handles.append(h)
                names.append(n)
    fig.legend(handles, names, fontsize=7, loc="center right")
    path = _save(fig, folder / f"filter_sweep_{metric}.png", rect=(0, 0, 0.84, 1))
    return Figure(path, f"The study's filter sweep: {HEADERS.get(metric, metric)} against the filter interval, one "
                        "line per method; the dashed line is the random floor.")


def _overlay_figures(runs: StudyRuns, table: pd.DataFrame, folder: Path, store: Store, work: Path) -> list[Figure]:
    """Relevance over a modality slice with the lesion contour, for the best and worst case of the best method."""
    top = best_explained(table)
    if top is None:
        return []
    raw_runs = {r.params.get("method"): r.run_id for r in runs.explanations if r.params.get("filter") == "raw"}
    run_id = top["run_id"] if "filter" not in next((r.params for r in runs.explanations
                                                    if r.run_id == top["run_id"]), {}) else None
    primary = key_metrics(table.columns)[0]
    figures = []
    for label, method, case, value in case_extremes(runs, table):
        source_run = run_id or raw_runs.get(method)
        source = store.download(source_run, f"relevance/{case}_{method}.png", work) if source_run else None
        if source is None:
            runs.missing.append(f"the relevance overlay of {method} on {case} is not in run {source_run}")
            continue
        target = folder / f"overlay_{label}_{method}_{case}.png"
        target.write_bytes(source.read_bytes())
        figures.append(Figure(target, f"{label.capitalize()} case of the best-ranked method {method}: {case}, "
                                      f"{HEADERS.get(primary, primary)} {value:.3f} (MLflow run {source_run})."))
    return figures
