"""The study's experiments stage: dilution, defects, relevance amplitude, filter box plots, overlays.

On a trained model (by default the best trial of the study's latest search, resolved as the
explanation stage does) and cases of its saved split (validation cases first), each experiment
of the study lands in one nested MLflow run (``experiment-<name>``, kind ``experiment``, tags
study, architecture and trial run) under an ``experiments-<study>`` run, with its parameters,
finite summary metrics (a value that is not finite is left out, never logged as NaN), CSV
tables and PNG figures. The report reads them from there (:mod:`benchmark.reporting.experiments`).

* ``dilution`` (:mod:`benchmark.evaluation.dilution`): Gaussian noise, zeroing and repeated
  smoothing at several levels, ``draws`` draws each (the study: 50; default 5 on CPU), Dice
  against the clean prediction and the ground truth, mean and spread per level.
* ``defects`` (:mod:`benchmark.data.defects`, :mod:`benchmark.evaluation.defect_effects`):
  lesion-like defects of the requested sizes on the cases, their effect on the prediction and
  on the relevance, for the model and, unless ``defect_epochs`` is 0, for a copy fine-tuned on
  defect data (training cases of the split carrying defects labelled as lesion; the study trains
  such a model from scratch, ``pipeline/training_UNet3D_diff.py``; a short fine-tune of the same
  weights is what fits a CPU run).
* ``amplitude``: the study's normalised-mean relevance amplitude by channel
  (:func:`benchmark.evaluation.relevance.normalized_mean_by_channel`) for each LRP method (raw
  relevance) and, for the ``sweep_methods``, each filter.
* ``filters``: per filter of the sweep, for the ``sweep_methods`` (by default the study's rules,
  ``study_published``), box plots over cases of the key explanation metrics and the amplitude
  (the study's ``result_filters_comparison.py``; one box per training grid: the study compared
  48×48×19 to 192×192×19, one model gives one grid, which the caption says).
* ``overlays``: raw and filtered relevance over the image slice of one case (the study's
  ``main_result.py`` / ``SlidingVisualizerMultiPanelLRP`` overlay), one row per filter, one
  column per modality.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from benchmark.data.cases import read_case
from benchmark.data.defaults import DEFAULT_DATA, ensure_default_data
from benchmark.data.defects import EFFECT, STRENGTH, Defect, draw_defect
from benchmark.data.preprocessing import PreparedCase, PreprocessConfig, brain_mask, prepare, to_native
from benchmark.data.splits import Split
from benchmark.errors import ParameterError
from benchmark.evaluation.defect_effects import defect_rows
from benchmark.evaluation.dilution import DEFAULT_LEVELS, STUDY_DRAWS, check_levels, dilution_rows, summarize_levels
from benchmark.evaluation.inference import predict_probability
from benchmark.evaluation.relevance import normalized_mean_by_channel
from benchmark.figures import lesion_slice, overlay_png, relevance_grid_png
from benchmark.reporting import experiment_charts as charts
from benchmark.stages.data import model_split
from benchmark.stages.explanations import _chosen_cases as chosen_cases
from benchmark.training.loop import TrainConfig, fit, load_model
from benchmark.training.profiles import experiment_of
from explain.assessment import explain_case
from explain.attribution import REFERENCE_LRP, is_lrp, unsupported
from explain.attribution import methods as all_methods
from explain.filters import parse_filters
from tracking import model_registry
from tracking import runs as tracking
from tracking.records import Store

EXPERIMENTS = ("dilution", "defects", "amplitude", "filters", "overlays")
"""The experiments, in the order they run and the report shows them."""
BOX_METRICS = ("amplitude", "blrp_to_ot", "blrp_to_bx", "relevance_mass_accuracy", "evidence_mass_accuracy")
"""What the filter box plots show (the study's amplitude and bLRP metrics, then the project's mass accuracies)."""
OVERLAY_FILTERS = ("raw", "pass_0_0.2", "pass_0.2_1", "clamp_0_0.2")
"""The overlay's rows: raw relevance, a low and a high pass filter and a clamp filter of the study's sweep."""


@dataclass
class ExperimentSettings:
    """What the experiments do (defaults sized for a CPU run; the study's values are named).

    Attributes:
        draws: dilution draws per case and level (the study: :data:`STUDY_DRAWS`).
        levels: dilution kinds and levels (:data:`benchmark.evaluation.dilution.DEFAULT_LEVELS`).
        defect_ml: requested defect sizes, ml at the model's input grid.
        defects_per_size: defects drawn per case and size.
        defect_epochs: epochs of the fine-tune on defect data (0: no defect-trained model).
        methods: LRP methods of the amplitude by channel, on raw relevance (None: every LRP method
            that can explain the model).
        sweep_methods: LRP methods run through the whole filter sweep (filter box plots, overlays,
            amplitude per filter); each costs one propagation per layer-wise filter, so few. None: the
            study's own propagation, ``reference_lrp``, on the study's network, else ``study_published``.
        defect_method: the method whose relevance the defect experiment reads.
        filters: filter or grid names of the sweep (raw is always added).
        overlay_filters: the overlay's rows (those of the sweep are drawn).
        overlay_method: the overlay's method (empty: the first of ``sweep_methods``).
        threshold: lesion probability above which a voxel is lesion.
    """

    draws: int = 5
    levels: Mapping[str, Sequence[float]] = field(default_factory=lambda: dict(DEFAULT_LEVELS))
    defect_ml: Sequence[float] = (2.0, 8.0)
    defects_per_size: int = 2
    defect_epochs: int = 2
    methods: Sequence[str] | None = None
    sweep_methods: Sequence[str] | None = None
    defect_method: str = "lrp_epsilon"
    filters: Sequence[str] = ("study_sweep",)
    overlay_filters: Sequence[str] = OVERLAY_FILTERS
    overlay_method: str = ""
    threshold: float = 0.5

    def check(self) -> None:
        """Refuse bad settings before any work, naming the parameter and the fix."""
        check_levels(self.levels)
        if self.draws < 1:
            raise ParameterError(f"draws must be at least 1 (got {self.draws}); the study drew {STUDY_DRAWS}")
        if not self.defect_ml or any(not v > 0 for v in self.defect_ml):
            raise ParameterError(f"defect sizes must be positive ml (got {list(self.defect_ml)})")
        if self.defects_per_size < 1:
            raise ParameterError(f"defects_per_size must be at least 1 (got {self.defects_per_size})")
        if self.defect_epochs < 0:
            raise ParameterError(f"defect_epochs must be 0 (no defect-trained model) or more "
                                 f"(got {self.defect_epochs})")
        if self.sweep_methods is not None and not list(self.sweep_methods):
            raise ParameterError("sweep_methods is empty: name at least one LRP method for the filter sweep")
        lrp = [m for m in all_methods() if is_lrp(m)]
        for name in [*(self.methods or []), *(self.sweep_methods or []), self.defect_method]:
            if not is_lrp(name):
                raise ParameterError(f"method '{name}' is not an LRP method: choose from {', '.join(lrp)}")
        if self.overlay_method and self.sweep_methods and self.overlay_method not in self.sweep_methods:
            raise ParameterError(f"overlay_method '{self.overlay_method}' is not among the sweep methods "
                                 f"{', '.join(self.sweep_methods)}")
        parse_filters(["raw", *self.filters])

    def resolved(self, model) -> ExperimentSettings:
        """These settings with the methods chosen for ``model``: a named method that cannot explain it is refused.

        Raises:
            ParameterError: a named method cannot explain the model (``reference_lrp`` off the study's network).
        """
        for name in [*(self.methods or []), *(self.sweep_methods or []), self.defect_method, self.overlay_method]:
            if name and (why := unsupported(model, name)):
                raise ParameterError(f"method '{name}' cannot explain this model: {why}")
        usable = [m for m in all_methods() if is_lrp(m) and not unsupported(model, m)]
        sweep = list(self.sweep_methods or [REFERENCE_LRP if REFERENCE_LRP in usable else "study_published"])
        chosen = list(self.methods) if self.methods else usable
        return dataclasses.replace(self, methods=list(dict.fromkeys([*chosen, *sweep])), sweep_methods=sweep)


@dataclass
class ExperimentsResult:
    """What the experiments stage logged.

    Attributes:
        run_id: the parent ``experiments-<study>`` run.
        study: the study tag of the runs.
        model_run: the trial run experimented on (None for a checkpoint file).
        cases: the case ids.
        runs: {experiment: its nested run id}.
        summaries: one summary sentence per experiment.
    """

    run_id: str
    study: str
    model_run: str | None
    cases: list[str]
    runs: dict[str, str] = field(default_factory=dict)
    summaries: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        """The summary lines the command line prints."""
        return [f"ran {len(self.runs)} study experiments ({', '.join(self.runs)}) on {len(self.cases)} cases under "
                f"MLflow run {self.run_id}", *self.summaries]


def finite(metrics: Mapping[str, float]) -> dict[str, float]:
    """The metrics whose value is a finite number (MLflow never receives a NaN)."""
    return {k: float(v) for k, v in metrics.items() if v is not None and math.isfinite(float(v))}


def _best_trial(study: str, experiment: str) -> str:
    """The best trial run of the study's latest search, or a ParameterError saying what to run."""
    for search in Store(experiment).runs("search", study):
        best = search.tags.get(tracking.TAG_BEST_RUN)
        if best:
            return best
    raise ParameterError(f"study '{study}' has no search with a best trial in MLflow experiment '{experiment}': "
                         f"run mlflow run . -e train -P study={study} first, or pass model=<run id | .pt>")


def run_experiments(model: str = "", data: str | Path = "", cases: int | Sequence[str] = 3, experiment: str = "",
                    study: str = "", which: Sequence[str] = EXPERIMENTS,
                    settings: ExperimentSettings | None = None, seed: int = 0, split: Split | None = None,
                    progress: bool = True) -> ExperimentsResult:
    """Run the study's experiments on one model and log each to MLflow.

    Args:
        model: a run id, ``runs:/…``, ``models:/name@alias`` or a ``.pt`` checkpoint; empty: the
            best trial of ``study``'s latest search (of the latest search when ``study`` is empty).
        data: the data folder (default: the one the model's split was made from, else the synthetic default).
        cases: how many cases (the split's validation cases first), or a list of case ids.
        experiment: the MLflow experiment (empty: the project run's under ``mlflow run``, else ``strokelens``).
        study: the study whose best trial is used when ``model`` is empty; the runs carry the model's
            study tag (this one for a model outside any study).
        which: the experiments to run, a subset of :data:`EXPERIMENTS`.
        settings: what each experiment does (default :class:`ExperimentSettings`).
        seed: seeds every random draw (dilution, defects, the fine-tune).
        split: the model's split, when the caller has it (else it is looked up).
        progress: progress bars.

    Raises:
        ParameterError: an unknown experiment, method, filter, level or case, or no model to use.
        TrackingError: the model does not resolve.
        DataError: the data changed since the model's split was saved, or a case has no ground truth.
    """
    settings = settings or ExperimentSettings()
    settings.check()
    unknown = [w for w in which if w not in EXPERIMENTS]
    if unknown or not which:
        raise ParameterError((f"experiment '{unknown[0]}' is unknown" if unknown else "no experiment chosen")
                             + f": choose from {', '.join(EXPERIMENTS)}")
    experiment = experiment or tracking.default_experiment(experiment_of(study))
    tracking.setup(experiment)
    if not model and study:
        model = _best_trial(study, experiment)
    checkpoint, preprocess, model_run = model_registry.resolve_model(model, experiment)
    study = tracking.study_of(model_run) or study
    config = PreprocessConfig.from_dict(preprocess) if preprocess else PreprocessConfig()
    split = split or model_split(model_run, checkpoint)
    folder = Path(data) if data else Path(split.data) if split is not None else ensure_default_data(DEFAULT_DATA)[0]
    refs = chosen_cases(folder, [cases] if isinstance(cases, str) else cases, config.modalities, split)
    network = load_model(checkpoint)
    settings = settings.resolved(network)
    architecture = str(getattr(network, "build_config", {}).get("name", ""))
    prepared = [prepare(read_case(r), config) for r in refs]
    grid = "x".join(str(n) for n in config.grid)
    params = {"model": model or (model_run or str(checkpoint)), "model_run": model_run or "", "data": str(folder),
              "cases": ",".join(r.case_id for r in refs), "experiments": ",".join(which), "seed": seed,
              "split": split.digest if split is not None else "", "grid": grid}
    result = ExperimentsResult("", study, model_run, [p.case_id for p in prepared])
    ordered = [w for w in EXPERIMENTS if w in which]
    with tempfile.TemporaryDirectory() as tmp, tracking.experiments_run(study, model_run, architecture,
                                                                         params) as parent:
        result.run_id = parent.info.run_id
        work = Path(tmp)
        context = _Context(network, prepared, config, settings, seed, progress, grid, work)
        explained = None
        for name in ordered:
            if name in ("amplitude", "filters", "overlays") and explained is None:
                explained = _explain_all(context)
            folder_out = work / name
            folder_out.mkdir()
            context.out = folder_out
            if name == "dilution":
                run_params, metrics, files, line = _dilution(context)
            elif name == "defects":
                run_params, metrics, files, line = _defects(context, split, folder)
            elif name == "amplitude":
                run_params, metrics, files, line = _amplitude(context, explained)
            elif name == "filters":
                run_params, metrics, files, line = _filters(context, explained)
            else:
                run_params, metrics, files, line = _overlays(context, explained)
            with tracking.experiment_run(name, study, model_run, architecture, run_params) as child:
                tracking.log_summary(finite(metrics))
                tracking.log_artifacts(files, "")
                result.runs[name] = child.info.run_id
            result.summaries.append(line)
    return result


@dataclass
class _Context:
    """What every experiment reads."""

    model: object
    cases: list[PreparedCase]
    config: PreprocessConfig
    settings: ExperimentSettings
    seed: int
    progress: bool
    grid: str
    work: Path
    out: Path = Path()


def _csv(table: pd.DataFrame, path: Path) -> Path:
    table.to_csv(path, index=False)
    return path


# --- dilution ----------------------------------------------------------------------------------

def _dilution(c: _Context):
    s = c.settings
    levels = check_levels(s.levels)
    rows = pd.DataFrame(dilution_rows(c.model, c.cases, levels, s.draws, c.seed, s.threshold, progress=c.progress,
                                      window=c.config.window()))
    summary = pd.DataFrame(summarize_levels(rows.to_dict("records")))
    files = [_csv(rows, c.out / "dilution_draws.csv"), _csv(summary, c.out / "dilution_levels.csv"),
             charts.dilution_curves(summary, c.out / "dilution_curves.png"),
             charts.dilution_scatter(rows, c.out / "dilution_dice_vs_diff.png")]
    metrics = {}
    for row in summary.itertuples(index=False):
        for key in ("dice_clean_mean", "dice_clean_sd", "dice_truth_mean", "dice_truth_sd"):
            metrics[f"{key}_{row.kind}_{row.level:g}"] = getattr(row, key)
    for kind, part in summary.groupby("kind", sort=False):  # the mean over the levels: one number per curve
        metrics[f"dice_clean_area_{kind}"] = float(part["dice_clean_mean"].mean())
        metrics[f"dice_truth_area_{kind}"] = float(part["dice_truth_mean"].mean())
    params = {"kinds": ",".join(levels), "draws": s.draws, "study_draws": STUDY_DRAWS, "threshold": s.threshold,
              **{f"levels_{k}": ",".join(f"{v:g}" for v in vs) for k, vs in levels.items()}}
    worst = summary.loc[summary["dice_clean_mean"].idxmin()]
    line = (f"dilution: {len(rows)} draws; lowest mean Dice vs the clean prediction {worst['dice_clean_mean']:.3f} "
            f"({worst['kind']} at {worst['level']:g})")
    return params, metrics, files, line


# --- defects -----------------------------------------------------------------------------------

def _voxels(case: PreparedCase, ml: float) -> int:
    """``ml`` in voxels of the model's input grid (at least 1)."""
    grid_ml = float(np.prod(case.spacing)) * float(np.prod(case.native_shape)) / float(np.prod(case.image.shape[1:]))
    return max(1, int(round(ml * 1000.0 / grid_ml)))


def _draw_defects(case: PreparedCase, sizes: Sequence[float], per_size: int, rng: np.random.Generator) -> list[Defect]:
    brain = brain_mask(case.image)
    lesion = case.label > 0.5 if case.label is not None else None
    return [draw_defect(case.image, brain, _voxels(case, ml), rng, avoid=lesion) for ml in sizes
            for _ in range(per_size)]


def _with_defect(case: PreparedCase, defect: Defect) -> PreparedCase:
    """The case carrying the defect, labelled lesion ∪ defect (at the training grid and the native grid)."""
    native_defect = to_native(defect.mask[None].astype(np.float32), case.native_shape)[0] > 0.5
    native = None if case.native_label is None else ((case.native_label > 0) | native_defect).astype(np.uint8)
    label = defect.label(case.label if case.label is not None else np.zeros(defect.mask.shape))
    return PreparedCase(case.case_id, defect.apply(case.image), label, native, case.native_shape, case.spacing,
                        case.affine, case.evidence)


def _defects(c: _Context, split: Split | None, folder: Path):
    s = c.settings
    rng = np.random.default_rng([c.seed, 7])
    defects = {case.case_id: _draw_defects(case, s.defect_ml, s.defects_per_size, rng) for case in c.cases}
    models = {"normal": c.model}
    metrics: dict[str, float] = {}
    if s.defect_epochs:
        models["defect-trained"] = _defect_model(c, split, folder, rng, metrics)
    rows = pd.DataFrame(defect_rows(models, c.cases, defects, s.defect_method, s.threshold, c.progress,
                                    window=c.config.window()))
    numeric = [k for k in rows.columns if k not in ("model", "case", "defect")]
    summary = rows.groupby("model", sort=False)[numeric].agg(["mean", "std"])
    summary.columns = [f"{a}_{b}" for a, b in summary.columns]
    summary = summary.reset_index()
    for row in summary.to_dict("records"):
        for key in ("dice_clean", "dice_truth", "dice_truth_clean", "volume_change_ml", "defect_detected",
                    "defect_mass_share", "clean_mass_share", "defect_density_ratio", "clean_density_ratio"):
            metrics[f"{row['model']}_{key}_mean"] = row[f"{key}_mean"]
            metrics[f"{row['model']}_{key}_sd"] = row[f"{key}_std"]
    example = c.cases[0]
    first = defects[example.case_id][0]
    z = lesion_slice(first.mask)
    channel = list(c.config.modalities).index("Tmax") if "Tmax" in c.config.modalities else 0
    probability = predict_probability(c.model, torch.from_numpy(first.apply(example.image)[None]), torch.device("cpu"),
                                      window=c.config.window())[0].numpy()
    files = [_csv(rows, c.out / "defects.csv"), _csv(summary, c.out / "defects_summary.csv"),
             charts.defect_figure(rows, c.out / "defect_effects.png"),
             overlay_png(c.out / "defect_example.png", first.apply(example.image)[channel, z], first.mask[z],
                         probability[z] > s.threshold,
                         f"{example.case_id} slice {z}, {c.config.modalities[channel]}: {first.voxels}-voxel "
                         "defect green,\nthe normal model's prediction red")]
    params = {"defect_ml": ",".join(f"{v:g}" for v in s.defect_ml), "defects_per_size": s.defects_per_size,
              "strength_range": f"{STRENGTH[0]:g}-{STRENGTH[1]:g}", "effect_range": f"{EFFECT[0]:g}-{EFFECT[1]:g}",
              "method": s.defect_method, "defect_epochs": s.defect_epochs, "models": ",".join(models),
              "threshold": s.threshold}
    normal = summary[summary["model"] == "normal"].iloc[0]
    line = (f"defects: {len(rows)} defect draws; normal model Dice vs clean prediction "
            f"{normal['dice_clean_mean']:.3f}, "
            f"defect marked lesion {normal['defect_detected_mean']:.2f}, relevance density in the defect "
            f"{normal['defect_density_ratio_mean']:.2f}× elsewhere")
    if "defect-trained" in models:
        trained = summary[summary["model"] == "defect-trained"].iloc[0]
        line += f"; defect-trained model marks {trained['defect_detected_mean']:.2f} of the defect"
    return params, metrics, files, line


def _defect_model(c: _Context, split: Split | None, folder: Path, rng: np.random.Generator, metrics: dict):
    """A copy of the model fine-tuned for ``defect_epochs`` on training cases carrying defects (lesion ∪ defect)."""
    s = c.settings
    if split is not None:
        train_refs, _ = split.resolve(folder)
        train = [prepare(read_case(r), c.config) for r in train_refs]
    else:
        train = list(c.cases)
    train = [_with_defect(case, d) for case in train for d in _draw_defects(case, s.defect_ml, 1, rng)]
    val = [_with_defect(case, defects[0]) for case in c.cases
           for defects in [_draw_defects(case, s.defect_ml[:1], 1, rng)]]
    model = copy.deepcopy(c.model)
    config = TrainConfig(epochs=s.defect_epochs, batch_size=2, loss="dice_ce", augment=0.0, patience=0,
                         seed=c.seed, device="auto", amp=False)
    fitted = fit(model, train, val, config, progress=c.progress, preprocess=c.config)
    metrics["defect_training_cases"] = len(train)
    metrics["defect_training_val_dice"] = fitted.history[-1]["val_dice"]
    return model.cpu().eval()


# --- relevance: amplitude, filters, overlays ---------------------------------------------------

@dataclass
class _Explained:
    """Per method: long tables of the amplitude and metrics per case × filter, and the overlay's slices."""

    amplitude: pd.DataFrame
    metrics: pd.DataFrame
    overlay: dict[str, np.ndarray]
    overlay_case: str
    overlay_method: str
    overlay_slice: int
    overlay_image: np.ndarray
    overlay_lesion: np.ndarray | None


def _explain_all(c: _Context) -> _Explained:
    """Every LRP method on every case (the sweep methods for every filter, the others raw), reduced at once."""
    from tqdm import tqdm

    s = c.settings
    sweep = parse_filters(["raw", *s.filters])
    methods = list(s.methods)
    overlay_method = s.overlay_method or s.sweep_methods[0]
    first = c.cases[0]
    z = lesion_slice(first.label > 0.5) if first.label is not None else first.image.shape[1] // 2
    amplitude, metric_rows, overlay = [], [], {}
    for method, case in tqdm([(m, p) for m in methods for p in c.cases], desc="relevance", unit="case",
                             disable=not c.progress):
        lesion = case.label > 0.5 if case.label is not None else np.zeros(case.image.shape[1:], bool)
        filters = sweep if method in s.sweep_methods else sweep[:1]
        for e in explain_case(c.model, case.image, lesion, case.evidence, c.config.modalities, method, filters,
                              case_id=case.case_id, heavy="none", window=c.config.window()):
            values, peak = normalized_mean_by_channel(e.relevance)
            for modality, value in zip(c.config.modalities, values):
                amplitude.append({"method": method, "filter": e.filter.name, "case": case.case_id, "grid": c.grid,
                                  "modality": modality, "amplitude": float(value), "peak": peak})
            metric_rows.append({"method": method, "filter": e.filter.name, "case": case.case_id, "grid": c.grid,
                                **e.metrics})
            if method == overlay_method and case is first and e.filter.name in s.overlay_filters:
                overlay[e.filter.name] = e.relevance[:, z].copy()
    overlay = {name: overlay[name] for name in s.overlay_filters if name in overlay}
    return _Explained(pd.DataFrame(amplitude), pd.DataFrame(metric_rows), overlay, first.case_id, overlay_method, z,
                      first.image[:, z].copy(), None if first.label is None else first.label[z] > 0.5)


def _amplitude(c: _Context, e: _Explained):
    raw = e.amplitude[e.amplitude["filter"] == "raw"]
    table = (raw.groupby(["method", "modality"], sort=False)["amplitude"]
             .agg(amplitude_mean="mean", amplitude_sd="std").reset_index().fillna({"amplitude_sd": 0.0}))
    by_filter = (e.amplitude.groupby(["method", "filter", "modality"], sort=False)["amplitude"]
                 .agg(amplitude_mean="mean", amplitude_sd="std").reset_index())
    files = [_csv(e.amplitude, c.out / "amplitude_cases.csv"), _csv(table, c.out / "amplitude.csv"),
             _csv(by_filter, c.out / "amplitude_by_filter.csv"),
             charts.amplitude_bars(table, c.config.modalities, c.out / "amplitude_by_channel.png")]
    metrics = {f"amplitude_{r.method}_{r.modality}": r.amplitude_mean for r in table.itertuples(index=False)}
    top = table.loc[table["amplitude_mean"].abs().idxmax()]
    params = {"methods": ",".join(dict.fromkeys(table["method"])), "formula": "mean_v(R_c/max|R|)",
              "source": "utils/evalobj.py:283-292", "cases": len(c.cases)}
    line = (f"amplitude: largest normalised-mean relevance {top['amplitude_mean']:+.2e} on {top['modality']} "
            f"({top['method']})")
    return params, metrics, files, line


def _filters(c: _Context, e: _Explained):
    amplitude = e.amplitude.rename(columns={"amplitude": "value"}).assign(metric="amplitude")
    shown = [m for m in BOX_METRICS if m == "amplitude" or m in e.metrics.columns]
    long = [amplitude[["method", "filter", "case", "grid", "metric", "value"]]]
    for metric in shown[1:]:
        long.append(e.metrics[["method", "filter", "case", "grid", metric]].rename(columns={metric: "value"})
                    .assign(metric=metric))
    values = pd.concat(long, ignore_index=True)
    values = values[values["method"].isin(c.settings.sweep_methods)]
    files = [_csv(e.metrics[e.metrics["method"].isin(c.settings.sweep_methods)], c.out / "filter_cases.csv"),
             _csv(values, c.out / "filter_values.csv")]
    for method in dict.fromkeys(values["method"]):
        files.append(charts.filter_boxplots(values[values["method"] == method], shown, method,
                                            c.out / f"filter_boxplots_{method}.png"))
    medians = values.groupby(["method", "filter", "metric"])["value"].median()
    metrics = {f"median_{m}_{f}_{k}": v for (m, f, k), v in medians.items() if k != "amplitude"}
    grids = sorted(set(values["grid"]))
    params = {"methods": ",".join(dict.fromkeys(values["method"])),
              "filters": ",".join(dict.fromkeys(values["filter"])),
              "metrics": ",".join(shown), "grids": ",".join(grids), "cases": len(c.cases)}
    line = (f"filters: box plots of {len(shown)} metrics over {len(c.cases)} cases for "
            f"{values['filter'].nunique()} filters × {values['method'].nunique()} methods on "
            f"{len(grids)} grid{'s' if len(grids) > 1 else ''} ({', '.join(grids)})")
    return params, metrics, files, line


def _overlays(c: _Context, e: _Explained):
    raw = e.overlay.get("raw")
    files = [relevance_grid_png(c.out / "overlay_raw_vs_filtered.png", e.overlay_image, e.overlay,
                                e.overlay_lesion, c.config.modalities,
                                f"{e.overlay_case} · {e.overlay_method} · slice {e.overlay_slice}: raw and filtered "
                                "relevance over each modality (red +, blue −; lesion green)")]
    rows = [{"filter": name, "modality": modality, "abs_sum": float(np.abs(r).sum()), "sum": float(r.sum()),
             "peak": float(np.abs(r).max())} for name, relevance in e.overlay.items()
            for modality, r in zip(c.config.modalities, relevance)]
    files.append(_csv(pd.DataFrame(rows), c.out / "overlay_slice.csv"))
    metrics = {}
    if raw is not None and np.abs(raw).sum() > 0:
        for name, relevance in e.overlay.items():
            metrics[f"kept_mass_{name}"] = float(np.abs(relevance).sum() / np.abs(raw).sum())
    params = {"case": e.overlay_case, "method": e.overlay_method, "slice": e.overlay_slice,
              "filters": ",".join(e.overlay)}
    line = f"overlays: {e.overlay_case}, {e.overlay_method}, {len(e.overlay)} rows ({', '.join(e.overlay)})"
    return params, metrics, files, line
