"""The leaderboard report of a study: HTML (one self-contained file), Markdown, CSV tables and PNGs.

``reports/<study>/``:

* ``leaderboard.html``: every table and figure, images embedded as data URIs, no scripts, no
  network: readable offline and attachable to an e-mail;
* ``leaderboard.md``: the same text and tables, figures linked from ``figures/``;
* ``architectures.csv``, ``explanations.csv``, ``architecture_cases.csv``,
  ``explanation_cases.csv``: the tables with full precision and run ids;
* ``figures/*.png``: Dice by lesion volume, a heatmap per key explanation metric over method ×
  filter, the study's filter-sweep curves, per-modality heatmaps of the unfiltered methods, and
  relevance overlays of the best and worst case.

The ranking rules are those of :mod:`benchmark.reporting.leaderboard`; the report states them itself.
"""

from __future__ import annotations

import base64
import html
import math
import tempfile
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from benchmark.atomic import atomic_directory, atomic_file  # noqa: E402
from benchmark.errors import DataError  # noqa: E402
from benchmark.evaluation.robustness import NOISE_SIGMA, ZERO_FRACTION  # noqa: E402
from benchmark.reporting.leaderboard import (  # noqa: E402
    FLOOR_METHOD,
    StudyRuns,
    architecture_table,
    case_extremes,
    collect,
    explanation_table,
    floor_value,
    key_metrics,
    modality_table,
)
from explain.filters import STUDY_CLAMP, STUDY_PASS  # noqa: E402
from tracking.records import Store  # noqa: E402
from tracking.runs import tracking_uri  # noqa: E402

HEADERS = {
    "rank": "rank", "name": "model / rule", "kind": "kind", "dice": "Dice", "hd95": "HD95 (mm)",
    "assd": "ASSD (mm)", "lesion_f1": "lesion F1", "volume_diff_ml": "|ΔV| (ml)",
    "dice_noise": f"Dice, noise σ={NOISE_SIGMA}", "dice_zero_half": f"Dice, {ZERO_FRACTION:.0%} voxels zeroed",
    "params": "parameters", "train_s": "training (s)", "latency_torch_s": "PyTorch latency (s)",
    "latency_onnx_s": "onnxruntime latency (s)", "trials": "trials", "pruned": "pruned", "failed": "failed",
    "source": "numbers from", "run_id": "MLflow run", "method": "method", "filter": "filter", "mode": "filter at",
    "rank_score": "mean rank", "evidence_mass_accuracy": "evidence mass acc.",
    "relevance_mass_accuracy": "relevance mass acc.", "relevance_rank_accuracy": "relevance rank acc.",
    "blrp_to_ot": "bLRPtoOT", "blrp_to_bx": "bLRPtobx", "pointing_game": "pointing game",
    "modality_attribution_accuracy": "modality attribution acc.", "sparseness": "sparseness (Gini)",
    "faithfulness": "faithfulness (MoRF−LeRF)", "randomisation_spearman": "randomisation ρ (lower better)",
    "conservation_error": "conservation error", "seconds_per_volume": "s / volume", "above_floor": "above floor",
}


@dataclass
class Figure:
    """A PNG of the report with its caption."""

    path: Path
    caption: str


@dataclass
class Report:
    """What :func:`build_report` wrote."""

    folder: Path
    files: list[Path]
    architectures: pd.DataFrame
    explanations: pd.DataFrame
    missing: list[str] = field(default_factory=list)


def build_report(study: str, experiment: str, out: str | Path = "reports", store: Store | None = None) -> Report:
    """Read the study's runs from MLflow and write ``<out>/<study>/`` (replaced atomically).

    Args:
        study: the study tag of the runs.
        experiment: the MLflow experiment.
        out: the folder that receives ``<study>/``.
        store: where the runs are read (default: the experiment in the tracking store).

    Raises:
        DataError: there is nothing to report (no trial with a result and no explanation); the
            message lists what is missing.
    """
    store = store or Store(experiment)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        runs = collect(store, study, work / "tables")
        if runs.empty:
            raise DataError(f"nothing to report for study '{study}' in experiment '{experiment}': "
                            + "; ".join(runs.missing or ["no trial reported a validation Dice"]))
        architectures, explanations = architecture_table(runs), explanation_table(runs)
        with atomic_directory(Path(out) / study, overwrite=True) as folder:
            figures_dir = folder / "figures"
            figures_dir.mkdir()
            arch_figures = _architecture_figures(runs, architectures, figures_dir)
            expl_figures = _explanation_figures(runs, explanations, figures_dir, store, work / "relevance")
            tables = _write_tables(folder, runs, architectures, explanations)
            context = _Context(runs, architectures, explanations, arch_figures, expl_figures)
            _write_text(folder / "leaderboard.html", _html(context))
            _write_text(folder / "leaderboard.md", _markdown(context))
        final = Path(out) / study
        files = [final / "leaderboard.html", final / "leaderboard.md", *(final / t.name for t in tables),
                 *(final / "figures" / f.path.name for f in arch_figures + expl_figures)]
    return Report(final, files, architectures, explanations, runs.missing)


def _write_text(path: Path, text: str) -> None:
    with atomic_file(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def _write_tables(folder: Path, runs: StudyRuns, architectures: pd.DataFrame, explanations: pd.DataFrame) -> list[Path]:
    paths = []
    for name, table in (("architectures.csv", architectures), ("explanations.csv", explanations)):
        if not table.empty:
            table.to_csv(folder / name, index=False)
            paths.append(folder / name)
    case_tables = [runs.cases[r.run_id].assign(name=r.architecture, kind=r.kind, run_id=r.run_id)
                   for r in runs.evaluations + runs.clinical_rules if r.run_id in runs.cases]
    if case_tables:
        pd.concat(case_tables, ignore_index=True).to_csv(folder / "architecture_cases.csv", index=False)
        paths.append(folder / "architecture_cases.csv")
    per_case = runs.explanation_cases()
    if per_case is not None:
        per_case.to_csv(folder / "explanation_cases.csv", index=False)
        paths.append(folder / "explanation_cases.csv")
    return paths


def _save(fig, path: Path, rect: tuple | None = None) -> Path:
    """Lay out (inside ``rect`` when given), write the PNG atomically, close the figure."""
    fig.tight_layout(rect=rect)
    with atomic_file(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    return path


def _architecture_figures(runs: StudyRuns, table: pd.DataFrame, folder: Path) -> list[Figure]:
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


def _filter_order(filters) -> list[str]:
    """Raw first, then layer-wise pass and clamp, then post-hoc, each in the study's interval order."""
    seed = [f"pass_{a:g}_{b:g}" for a, b in STUDY_PASS] + [f"clamp_{a:g}_{b:g}" for a, b in STUDY_CLAMP]
    known = ["raw", *seed, *(f"post_{s}" for s in seed)]
    present = list(dict.fromkeys(filters))
    return [f for f in known if f in present] + sorted(f for f in present if f not in known)


def _explanation_figures(runs: StudyRuns, table: pd.DataFrame, folder: Path, store: Store,
                         work: Path) -> list[Figure]:
    import seaborn as sns

    if table.empty:
        return []
    figures = []
    methods = list(dict.fromkeys(table["method"]))
    columns = _filter_order(table["filter"])
    for metric in key_metrics(table.columns):
        grid = table.pivot_table(index="method", columns="filter", values=metric, aggfunc="first")
        grid = grid.reindex(index=methods, columns=[c for c in columns if c in grid.columns])
        fig, ax = plt.subplots(figsize=(max(6.0, 0.42 * grid.shape[1] + 3), max(3.0, 0.38 * grid.shape[0] + 1.5)))
        sns.heatmap(grid, annot=grid.shape[1] <= 40, fmt=".2f", annot_kws={"fontsize": 6}, cmap="viridis",
                    cbar_kws={"label": HEADERS.get(metric, metric)}, linewidths=0.3, ax=ax)
        ax.set_xlabel("filter (raw | layer-wise | post-hoc)")
        ax.set_ylabel("method (ranked)")
        ax.tick_params(labelsize=7)
        ax.set_title(f"{HEADERS.get(metric, metric)} over method × filter (mean over cases)")
        figures.append(Figure(_save(fig, folder / f"heatmap_{metric}.png"),
                              f"{HEADERS.get(metric, metric)} of every method (rows, ranked) and filter (columns); "
                              "blank cells: the filter does not apply (baselines take post-hoc filters only)."))
    for metric in key_metrics(table.columns):
        sweep = _sweep_figure(table, folder, metric)
        if sweep is not None:
            figures.append(sweep)
    figures += _modality_figures(runs, table, folder)
    figures += _overlay_figures(runs, table, folder, store, work)
    return figures


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
    raw_runs = {r.params.get("method"): r.run_id for r in runs.explanations if r.params.get("filter") == "raw"}
    primary = key_metrics(table.columns)[0]
    figures = []
    for label, method, case, value in case_extremes(runs, table):
        run_id = raw_runs.get(method)
        source = store.download(run_id, f"relevance/{case}_{method}.png", work) if run_id else None
        if source is None:
            runs.missing.append(f"the relevance overlay of {method} on {case} is not in run {run_id}")
            continue
        target = folder / f"overlay_{label}_{method}_{case}.png"
        target.write_bytes(source.read_bytes())
        figures.append(Figure(target, f"{label.capitalize()} case of the best-ranked method {method}: {case}, "
                                      f"{HEADERS.get(primary, primary)} {value:.3f} (MLflow run {run_id})."))
    return figures


@dataclass
class _Context:
    runs: StudyRuns
    architectures: pd.DataFrame
    explanations: pd.DataFrame
    arch_figures: list[Figure]
    expl_figures: list[Figure]


def _number(value, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    if isinstance(value, (bool, np.bool_)):
        return "yes" if value else "no"
    if isinstance(value, (int, np.integer)):
        return f"{int(value):,}"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    return f"{value:.{digits}f}"


def _mean_sd(means, sds, digits: int = 3) -> list[str]:
    """``mean ± sd`` per row (the mean alone where the sd is unknown)."""
    return [_number(m, digits) + ("" if not math.isfinite(s) else f" ± {_number(s, digits)}")
            for m, s in zip(means, sds)]


def _counts(values) -> list[str]:
    """Whole numbers with thousands separators, ``–`` where unknown."""
    return [_number(int(v)) if math.isfinite(v) else "–" for v in values]


def _architecture_display(table: pd.DataFrame) -> pd.DataFrame:
    out = pd.DataFrame({"rank": table["rank"], "name": table["name"], "kind": table["kind"]})
    for key in ("dice", "hd95", "assd", "lesion_f1", "volume_diff_ml", "dice_noise", "dice_zero_half"):
        digits = 1 if key in ("hd95", "assd", "volume_diff_ml") else 3
        out[key] = _mean_sd(table[f"{key}_mean"], table[f"{key}_sd"], digits)
    out["params"] = _counts(table["params"])
    out["train_s"] = [_number(v, 0) for v in table["train_s"]]
    for key in ("latency_torch_s", "latency_onnx_s"):
        out[key] = [_number(v, 3) for v in table[key]]
    for key in ("trials", "pruned", "failed"):
        out[key] = _counts(table[key])
    out["source"] = table["source"]
    out["run_id"] = table["run_id"]
    return out


def _explanation_display(table: pd.DataFrame) -> pd.DataFrame:
    leading = ("rank", "method", "filter", "mode", "kind", "rank_score")
    metrics = [c for c in HEADERS if c in table.columns and c not in (*leading, "run_id")]
    shown = [c for c in leading if c in table.columns] + metrics + ["run_id"]
    out = table[shown].copy()
    primary = key_metrics(table.columns)[0]
    for column in out.columns:
        if column in ("rank", "method", "filter", "mode", "kind", "run_id"):
            continue
        if column == primary and f"{primary}_sd" in table:
            out[column] = _mean_sd(table[primary], table[f"{primary}_sd"])
        elif column == "above_floor":
            out[column] = ["–" if isinstance(v, float) else ("yes" if v else "no") for v in table[column]]
        else:
            out[column] = [_number(v, 2 if column == "rank_score" else 3) for v in table[column]]
    return out


def _explanation_sections(table: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    """The methods without a filter (ranked among themselves), then every method × filter."""
    raw = table[table["mode"] == "raw"].reset_index(drop=True)
    sections = []
    if len(raw) and len(raw) < len(table):
        sections.append(("Methods, unfiltered (rank among all method × filter rows)", raw))
    sections.append((f"Every method × filter ({len(table)} rows)", table))
    return sections


def _rules(context: _Context) -> list[str]:
    expl = context.explanations
    lines = [
        "**Architectures** are ranked by validation Dice (mean over the search's validation cases, on each case's "
        "native grid; higher first); ties go to the lower HD95, then to fewer parameters. The clinical threshold "
        "rules are ranked in the same list: core = rCBF < 30 % of the contralateral hemisphere's mean rCBF, "
        "hypoperfusion = Tmax > 6 s, and their union, computed on the raw maps with no training.",
        f"Robustness is the Dice under Gaussian noise of σ = {NOISE_SIGMA} (in the model's normalised input units; "
        f"for the rules, {NOISE_SIGMA} of each map's range) and with {ZERO_FRACTION:.0%} of the input voxels set to "
        "0. Latency is the median of batch-1 forward passes at the training grid on this machine. ± is the sample "
        "standard deviation over cases.",
    ]
    if not expl.empty:
        keys = key_metrics(expl.columns)
        floor = floor_value(expl)
        lines += [
            "**Explanations** (method × filter) are ranked by their mean rank over the key metrics "
            f"{', '.join(HEADERS.get(k, k) for k in keys)} (rank 1 is best; tied values share their average rank); "
            f"ties go to the higher {HEADERS.get(keys[0], keys[0])}, then to the faster method. Faithfulness and the "
            "randomisation test run on unfiltered relevance only, so they are shown but do not rank.",
            f"The **random floor** is the unfiltered `{FLOOR_METHOD}` method's {HEADERS.get(keys[0], keys[0])} "
            f"({_number(floor)}): relevance drawn at random scores this much by chance. A row marked 'above floor: "
            "no' explains the lesion no better than chance.",
            "A pass filter that keeps only the strongest relevance raises mass accuracies by discarding the rest: "
            "compare filters with the heatmaps, and read the unfiltered (raw) rows for the method itself.",
        ]
    lines.append("Every row names the MLflow run its numbers come from (open it with `mlflow ui`).")
    return lines


def _header(context: _Context) -> list[tuple[str, str]]:
    runs = context.runs
    items = [("study", runs.study), ("MLflow experiment", runs.experiment), ("tracking store", tracking_uri()),
             ("generated", datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"))]
    if runs.searches:
        search = runs.searches[0]
        items.append(("latest search run", search.run_id))
        items.append(("data", search.params.get("data", "–")))
        best = search.tags.get("strokelens.best_trial_run")
        if best:
            items.append(("best trial run", best))
    states = pd.Series([t.state or "running" for t in runs.trials]).value_counts()
    if len(states):
        items.append(("trials", ", ".join(f"{v} {k}" for k, v in states.items())))
    if runs.explain:
        items.append(("explained model run", runs.explain[0].model_run))
        items.append(("explain runs", ", ".join(r.run_id for r in runs.explain)))
    return items


_CSS = """
body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;margin:2em auto;max-width:1400px;color:#222;
padding:0 1em;line-height:1.45}
h1{font-size:1.6em}h2{border-bottom:2px solid #ddd;padding-bottom:.2em;margin-top:2em}
table{border-collapse:collapse;font-size:.8em;margin:1em 0;display:block;overflow-x:auto}
th,td{border:1px solid #ccc;padding:.25em .5em;text-align:right;white-space:nowrap}
th{background:#f3f3f3;position:sticky;top:0}td.text,th.text{text-align:left}
tr.floor td{background:#fff4e5}tr.rule td{background:#eef6ff}
code{font-size:.85em;color:#555}.missing{background:#fff4e5;border-left:4px solid #f0a020;padding:.5em 1em}
figure{margin:1.5em 0}figure img{max-width:100%;border:1px solid #ddd}figcaption{font-size:.85em;color:#555}
dl{display:grid;grid-template-columns:max-content auto;gap:.2em 1em}dt{font-weight:600}dd{margin:0}
"""


def _html_table(display: pd.DataFrame, row_class) -> str:
    text_columns = {"name", "kind", "method", "filter", "mode", "source", "run_id"}
    head = "".join(f'<th class="{"text" if c in text_columns else ""}">{html.escape(HEADERS.get(c, c))}</th>'
                   for c in display.columns)
    body = []
    for i, row in display.iterrows():
        cells = []
        for column, value in row.items():
            text = html.escape(str(value))
            if column == "run_id":
                text = f"<code>{text}</code>"
            cells.append(f'<td class="{"text" if column in text_columns else ""}">{text}</td>')
        body.append(f'<tr class="{row_class(i)}">{"".join(cells)}</tr>')
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _html_figure(figure: Figure) -> str:
    data = base64.b64encode(figure.path.read_bytes()).decode("ascii")
    return (f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(figure.path.stem)}">'
            f"<figcaption>{html.escape(figure.caption)}</figcaption></figure>")


def _inline(text: str) -> str:
    """Markdown-style **bold** and `code` of the rule sentences as HTML."""
    out, parts = [], html.escape(text).split("**")
    for i, part in enumerate(parts):
        code = part.split("`")
        part = "".join(f"<code>{c}</code>" if j % 2 else c for j, c in enumerate(code))
        out.append(f"<strong>{part}</strong>" if i % 2 else part)
    return "".join(out)


def _html(context: _Context) -> str:
    runs, arch, expl = context.runs, context.architectures, context.explanations
    parts = [f"<h1>strokelens leaderboard: study {html.escape(runs.study)}</h1>", "<dl>"]
    parts += [f"<dt>{html.escape(k)}</dt><dd>{html.escape(str(v))}</dd>" for k, v in _header(context)]
    parts.append("</dl>")
    if runs.missing:
        parts.append('<section class="missing" id="missing"><h3>Missing</h3><ul>'
                     + "".join(f"<li>{html.escape(m)}</li>" for m in runs.missing) + "</ul></section>")
    parts.append('<section id="rules"><h2>How the tables rank</h2>'
                 + "".join(f"<p>{_inline(line)}</p>" for line in _rules(context)) + "</section>")
    parts.append('<section id="architectures"><h2>Architecture leaderboard</h2>')
    if arch.empty:
        parts.append("<p>No architecture has a result yet.</p>")
    else:
        kinds = list(arch["kind"])
        parts.append(_html_table(_architecture_display(arch), lambda i: "rule" if kinds[i] == "clinical rule" else ""))
    parts += [_html_figure(f) for f in context.arch_figures]
    parts.append('</section><section id="explanations"><h2>Explanation leaderboard</h2>')
    if expl.empty:
        parts.append("<p>No explanation has been computed for this study.</p>")
    else:
        for title, table in _explanation_sections(expl):
            kinds = list(table["kind"])
            parts.append(f"<h3>{html.escape(title)}</h3>")
            parts.append(_html_table(_explanation_display(table),
                                     lambda i, k=kinds: "floor" if k[i] == "floor" else ""))
    parts += [_html_figure(f) for f in context.expl_figures]
    parts.append("</section>")
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>strokelens leaderboard: {html.escape(runs.study)}</title><style>{_CSS}</style></head>"
            f"<body>{''.join(parts)}</body></html>\n")


def _markdown_table(display: pd.DataFrame) -> str:
    def cell(value) -> str:
        return str(value).replace("|", "\\|")

    lines = ["| " + " | ".join(cell(HEADERS.get(c, c)) for c in display.columns) + " |",
             "|" + "|".join("---" for _ in display.columns) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in display.itertuples(index=False)]
    return "\n".join(lines)


def _markdown(context: _Context) -> str:
    runs, arch, expl = context.runs, context.architectures, context.explanations
    lines = [f"# strokelens leaderboard: study {runs.study}", ""]
    lines += [f"- **{k}**: {v}" for k, v in _header(context)]
    if runs.missing:
        lines += ["", "## Missing", "", *[f"- {m}" for m in runs.missing]]
    lines += ["", "## How the tables rank", ""]
    for line in _rules(context):
        lines += [line, ""]
    lines += ["## Architecture leaderboard", ""]
    lines.append(_markdown_table(_architecture_display(arch)) if not arch.empty else
                 "No architecture has a result yet.")
    for figure in context.arch_figures:
        lines += ["", f"![{figure.path.stem}](figures/{figure.path.name})", "", f"*{figure.caption}*"]
    lines += ["", "## Explanation leaderboard", ""]
    if expl.empty:
        lines.append("No explanation has been computed for this study.")
    for title, table in _explanation_sections(expl) if not expl.empty else []:
        lines += [f"### {title}", "", _markdown_table(_explanation_display(table)), ""]
    for figure in context.expl_figures:
        lines += ["", f"![{figure.path.stem}](figures/{figure.path.name})", "", f"*{figure.caption}*"]
    return "\n".join(lines) + "\n"
