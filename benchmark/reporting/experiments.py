"""The report's section on the study's experiments, read back from the runs the experiments stage logged.

The newest finished ``experiments`` run of the study (:mod:`benchmark.stages.experiments`) and its
nested ``experiment`` runs, in the order they ran: each gives a heading, what was done (from its
parameters), a table (from its CSV artifact) and its PNG figures, copied into the report's
``figures/`` as ``experiment_<name>_<file>.png``. Nothing is recomputed here.
"""

from __future__ import annotations

import math
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from benchmark.reporting.charts import Figure
from benchmark.reporting.tables import DisplayTable, number
from tracking import runs as tracking
from tracking.records import RunRecord, Store

TITLES = {"dilution": "Dilution: noise, zeroing and smoothing of the input",
          "defects": "Defects: lesion-like defects added to the cases",
          "amplitude": "Normalised-mean relevance amplitude by channel",
          "filters": "Filter comparison: box plots over cases",
          "overlays": "Raw versus filtered relevance"}

CAPTIONS = {
    "dilution_curves": "Dice of the prediction on the diluted input against the prediction on the clean input (blue) "
                       "and against the ground truth (red), mean ± sd over cases and draws (band) and quartiles (bar), "
                       "per dilution kind and level.",
    "dilution_dice_vs_diff": "The study's view: every draw's Dice against the clean prediction over its mean input "
                             "change |x' − x|.",
    "defect_effects": "Per model: Dice against its own clean prediction, the share of the defect it marks as lesion, "
                      "and the relevance per voxel in the defect over that elsewhere in the brain, on the clean "
                      "input and with the defect (dashed: no difference).",
    "defect_example": "One defect (green contour) on the case's Tmax slice, with the normal model's prediction (red).",
    "amplitude_by_channel": "The study's normalised-mean amplitude mean_v(R_c / max|R|) per input channel, raw "
                            "relevance, mean ± sd over cases, one bar per LRP method.",
    "overlay_raw_vs_filtered": "Raw (first row) and filtered relevance over each modality's slice; every row shares "
                               "one symmetric scale (red positive, blue negative), lesion contour green.",
}


@dataclass
class ExperimentSection:
    """One experiment as the report shows it.

    Attributes:
        name: the experiment (dilution, defects, amplitude, filters, overlays).
        title: its heading.
        text: sentences saying what was done (Markdown ``**bold**`` and ```code``` marks).
        tables: its tables.
        figures: its PNGs (already copied into the report's ``figures/``).
        run_id: the nested MLflow run the numbers come from.
    """

    name: str
    title: str
    text: list[str]
    tables: list[DisplayTable] = field(default_factory=list)
    figures: list[Figure] = field(default_factory=list)
    run_id: str = ""


def latest_experiments(store: Store, study: str) -> tuple[RunRecord | None, list[RunRecord]]:
    """The newest finished ``experiments`` run of the study and its nested runs in the order they ran."""
    parents = [r for r in store.runs("experiments", study) if r.status == "FINISHED"]
    if not parents:
        return None, []
    children = [r for r in store.children(parents[0], "experiment") if r.status == "FINISHED"]
    return parents[0], sorted(children, key=lambda r: r.start_time)


def experiment_sections(store: Store, study: str, figures: Path, work: Path) -> tuple[list[ExperimentSection], str]:
    """The sections of the newest experiments run, and a sentence about where they come from (or why none)."""
    parent, children = latest_experiments(store, study)
    if parent is None:
        return [], (f"The study's experiments have not been run for study '{study}': run "
                    f"`mlflow run . -e experiments -P study={study}`.")
    sections = []
    for child in children:
        name = child.tags.get(tracking.TAG_EXPERIMENT, child.name)
        section = ExperimentSection(name, TITLES.get(name, name), _text(name, child.params, parent.params),
                                    run_id=child.run_id)
        folder = work / child.run_id
        for artifact in store.artifacts(child.run_id):
            if artifact.endswith(".png"):
                local = store.download(child.run_id, artifact, folder)
                if local is not None:
                    target = figures / f"experiment_{name}_{Path(artifact).name}"
                    shutil.copyfile(local, target)
                    stem = Path(artifact).stem
                    caption = CAPTIONS.get(stem) or _box_caption(stem, child.params)
                    section.figures.append(Figure(target, caption))
        section.tables = _tables(name, store, child.run_id, folder)
        sections.append(section)
    source = (f"From MLflow run {parent.run_id} (model run {parent.model_run or parent.params.get('model', '–')}, "
              f"cases {parent.params.get('cases', '–')}, training grid {parent.params.get('grid', '–')}).")
    return sections, source


def _box_caption(stem: str, params: dict) -> str:
    method = stem.removeprefix("filter_boxplots_")
    grids = params.get("grids", "")
    one = "," not in grids
    return (f"{method}: for each filter of the study's sweep, the distribution over cases of the amplitude (one value "
            f"per case and channel) and of the key explanation metrics (one per case); "
            + (f"one training grid ({grids}) exists, so each filter has one box (the study layered several input "
               "sizes)." if one else f"one box per training grid ({grids})."))


def _text(name: str, params: dict, parent: dict) -> list[str]:
    cases = parent.get("cases", "")
    n = len([c for c in cases.split(",") if c])
    if name == "dilution":
        levels = "; ".join(f"`{k}` at {params.get(f'levels_{k}', '')}" for k in params.get("kinds", "").split(",") if k)
        return [f"The input of {n} cases was diluted by {levels}: `noise` adds N(0, σ²) per value, `study_noise` the "
                "study's U(0, |N(0, σ²)|), `zero` sets that share of the input values to 0, `smooth` applies that many "
                f"3×3×3 mean filters. **{params.get('draws', '?')} draws** per case and level (the study drew "
                f"{params.get('study_draws', 50)}; smoothing is deterministic and drawn once). Dice is computed on "
                "each case's native grid against the prediction on the clean input (the study's score) and against "
                "the ground truth."]
    if name == "defects":
        models = params.get("models", "normal")
        trained = ("; `defect-trained` is the same model fine-tuned for "
                   f"{params.get('defect_epochs')} epochs on training cases carrying defects labelled as lesion "
                   "(the study trained such a model from scratch)") if "defect-trained" in models else \
            "; no defect-trained model was made (defect_epochs = 0)"
        return [f"Lesion-like defects (the study's random-walk bundles, grown in 3-D inside the brain and away from "
                f"the lesion) of {params.get('defect_ml')} ml, {params.get('defects_per_size')} per case and size, "
                f"change the input by ± a·r with a in [{params.get('strength_range', '').replace('-', ', ')}] and "
                f"r in [{params.get('effect_range', '').replace('-', ', ')}] (the study's ranges). Models: `normal` is "
                f"the model experimented on{trained}. Relevance is `{params.get('method')}`; its mass share and "
                "density ratio in the defect are shown with the defect and, for reference, on the clean input."]
    if name == "amplitude":
        return [f"For each LRP method ({params.get('methods', '').replace(',', ', ')}) and case, "
                "a_c = mean_v(R_c / max|R|) per input channel c, the maximum taken over every channel and voxel "
                f"(the study's `compute_normalized_mean_by_channel`, {params.get('source')}); mean over "
                f"{params.get('cases')} cases of the raw relevance. Every filter's values are in the run's "
                "`amplitude_by_filter.csv`."]
    if name == "filters":
        filters, metrics = params.get("filters", "").replace(",", ", "), params.get("metrics", "").replace(",", ", ")
        methods = params.get("methods", "").replace(",", ", ")
        return [f"LRP by {methods} on {params.get('cases')} cases for every filter of the sweep ({filters}); the box "
                f"plots show {metrics}. Training grids: {params.get('grids')}."]
    if name == "overlays":
        return [f"Case {params.get('case')}, method `{params.get('method')}`, slice {params.get('slice')}: "
                f"rows {params.get('filters', '').replace(',', ', ')}."]
    return []


def _read(store: Store, run_id: str, name: str, folder: Path) -> pd.DataFrame | None:
    path = store.download(run_id, name, folder)
    return pd.read_csv(path) if path is not None and path.is_file() else None


def _pm(mean: float, sd: float) -> str:
    return number(mean) + ("" if not math.isfinite(sd) else f" ± {number(sd)}")


def _tables(name: str, store: Store, run_id: str, folder: Path) -> list[DisplayTable]:
    if name == "dilution":
        t = _read(store, run_id, "dilution_levels.csv", folder)
        if t is None:
            return []
        rows = [("", [str(r.kind), f"{r.level:g}", str(int(r.n)), number(r.diff_mean, 4),
                      _pm(r.dice_clean_mean, r.dice_clean_sd), _pm(r.dice_truth_mean, r.dice_truth_sd)])
                for r in t.itertuples(index=False)]
        return [DisplayTable("Dice per kind and level (mean ± sd over cases and draws)",
                             ["kind", "level", "draws × cases", "mean |x' − x|", "Dice vs clean prediction",
                              "Dice vs ground truth"], rows)]
    if name == "defects":
        t = _read(store, run_id, "defects_summary.csv", folder)
        if t is None:
            return []
        keys = [("dice_clean", "Dice vs clean prediction"), ("dice_truth", "Dice vs truth"),
                ("dice_truth_clean", "Dice vs truth, clean input"), ("volume_change_ml", "volume change (ml)"),
                ("defect_detected", "defect marked lesion"), ("defect_mass_share", "|R| share in defect"),
                ("clean_mass_share", "|R| share there, clean input"), ("defect_density_ratio", "|R| density ratio"),
                ("defect_volume_share", "defect share of brain")]
        rows = [("", [str(r["model"]), *(_pm(r[f"{k}_mean"], r[f"{k}_std"]) for k, _ in keys)])
                for r in t.to_dict("records")]
        return [DisplayTable("Effect of the defects per model (mean ± sd over cases and defects)",
                             ["model", *(h for _, h in keys)], rows)]
    if name == "amplitude":
        t = _read(store, run_id, "amplitude.csv", folder)
        if t is None:
            return []
        modalities = list(dict.fromkeys(t["modality"]))
        grid = t.pivot_table(index="method", columns="modality", values="amplitude_mean", aggfunc="first", sort=False)
        rows = [("", [str(method), *(f"{grid.loc[method, m]:+.3e}" for m in modalities)]) for method in grid.index]
        return [DisplayTable("Normalised-mean amplitude per method and input channel (raw relevance, mean over cases)",
                             ["method", *modalities], rows)]
    return []
