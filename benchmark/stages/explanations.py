"""The explanation stage: explain trained models by several methods and filters, tracked in MLflow.

Runs: one ``explain`` run per explained model (tags: its trial run, architecture and study) with
one nested run per method (``<architecture>-<method>``; method, architecture, trial run and study
as parameters and tags). A method run's metrics are its unfiltered row's means over cases and,
as ``best_filter/<metric>``, those of its best filtered row (the leaderboard's rule among the
method's filters, :func:`benchmark.reporting.leaderboard.rank_rows`; its name is the ``best_filter``
parameter); every filter's means are its ``filters.json`` MLflow table. No NaN is logged. Per
case and method (unfiltered relevance) a relevance NIfTI on the native grid with the case's affine
(one volume per modality) and a PNG of relevance over a modality slice with the lesion contour are
artifacts of the method run. The parent keeps ``explanations.csv`` (the means, one row per method
× filter) and ``cases.csv`` (every case's metrics per method × filter, with the method run's id).
So a sweep of M methods × F filters adds M + 1 runs, not M × F.

:func:`explain_architectures` explains the best trial of each chosen architecture of a study
(:func:`tracking.records.best_trial_per_architecture`), one ``explain`` run each.

The cases are the validation side of the split of the search that trained the model (read back,
never made again; changed data is refused), or case ids given by the caller.

Resolution: a model whose preprocessing is ``native`` (its ``preprocess`` settings, mode ``native``)
is explained at its native resolution: each case is the whole volume resampled to the target
spacing, explained by Gaussian-weighted sliding windows of its patch (``PreprocessConfig.window()``,
:mod:`explain.sliding`), and every metric (bLRPtoOT and the rest) is computed on that grid;
``reference_lrp`` takes no window and is skipped there. A ``seed``-mode model is explained on its
training grid, whole volumes, as the study did.

Stops and reruns: each method × case is computed once and kept in
``<out>/<model>-<settings digest>/`` (default ``explanations/``): ``<case>_<method>.nii.gz`` and
``.png`` (raw relevance, when ``raw`` is among the filters) and, written last, ``<case>_<method>.json``
(every filter's metrics); each file is written atomically, so after SIGKILL, SIGTERM or Ctrl-C a
job is complete or absent. A rerun with the same model, data, filters, ``heavy`` and seed reuses the
complete jobs (``overwrite`` recomputes them), removes the hidden temporary files a killed run left
there, ends FAILED the ``explain`` runs whose process died, and logs everything under a new parent
run. The digest covers the checkpoint's bytes, so retrained weights are never mixed with old results.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from benchmark.atomic import atomic_file, remove_temporary
from benchmark.data.cases import CaseRef, discover, read_case
from benchmark.data.defaults import DEFAULT_DATA, ensure_default_data
from benchmark.data.nifti import write_volume
from benchmark.data.preprocessing import PreprocessConfig, prepare, to_native
from benchmark.data.splits import Split
from benchmark.errors import ParameterError
from benchmark.figures import lesion_slice, relevance_png
from benchmark.paths import check_writable
from benchmark.reporting.leaderboard import key_metrics, rank_rows
from benchmark.stages.data import model_split
from benchmark.training.loop import load_model
from benchmark.training.profiles import experiment_of
from benchmark.training.studies import worker_alive, worker_identity
from explain.assessment import explain_case
from explain.attribution import methods as all_methods
from explain.attribution import unsupported
from explain.filters import RelevanceFilter, parse_filters
from tracking import model_registry, recovery
from tracking import runs as tracking
from tracking.records import Store, best_trial_per_architecture

DEFAULT_OUT = Path("explanations")
"""Where finished method × case jobs are kept between runs (see the module docstring)."""
HEAVY_CHOICES = ("raw", "all", "none")
"""Where the randomisation test (three more explanations per row) runs: raw relevance only, every filter, nowhere.

Faithfulness (region perturbation) runs on every row whatever ``heavy`` says: it ranks."""


@dataclass
class ExplanationResult:
    """What an explanation logged.

    Attributes:
        run_id: the parent ``explain`` run.
        model_run: the trial run explained (None for a checkpoint file).
        architecture: the explained model's architecture.
        cases: the case ids explained.
        methods: the methods.
        filters: the filter names.
        table: one row per method × filter: its method run's ``run_id``, ``method``, ``filter`` and mean metrics.
        split_digest: the digest of the model's split ("" when the model has none).
        folder: where the method × case jobs are kept.
        computed: method × case jobs computed by this call.
        reused: jobs found complete in ``folder`` and not computed again.
        removed_temporary: temporary files of a killed run removed from ``folder``.
        skipped: method → why it cannot explain this model (methods taken from "all" only;
            ``reference_lrp`` explains the study's architecture only).
    """

    run_id: str
    model_run: str | None
    architecture: str
    cases: list[str]
    methods: list[str]
    filters: list[str]
    table: list[dict] = field(default_factory=list)
    split_digest: str = ""
    folder: Path | None = None
    computed: int = 0
    reused: int = 0
    removed_temporary: int = 0
    skipped: dict[str, str] = field(default_factory=dict)

    def best_unfiltered(self) -> dict | None:
        """The unfiltered row with the highest evidence mass accuracy (synthetic data), or None."""
        return max((row for row in self.table if "evidence_mass_accuracy" in row and row["filter"] == "raw"),
                   key=lambda row: row["evidence_mass_accuracy"], default=None)

    def lines(self) -> list[str]:
        """The summary lines the command line prints."""
        runs = len({row["run_id"] for row in self.table})
        lines = [f"explained {self.architecture or 'the model'} ({self.model_run or 'checkpoint'}) on "
                 f"{len(self.cases)} cases with {len(self.methods)} methods and {len(self.filters)} filters: "
                 f"{len(self.table)} method × filter rows in {runs} method runs under MLflow run {self.run_id}"]
        if self.folder is not None:
            line = f"computed {self.computed} method × case jobs, reused {self.reused} from {self.folder}"
            if self.reused:
                line += " (--overwrite recomputes them)"
            if self.removed_temporary:
                line += f"; removed {self.removed_temporary} temporary files of an interrupted run"
            lines.append(line)
        best = self.best_unfiltered()
        if best is not None:
            lines.append(f"best evidence mass accuracy without a filter: {best['evidence_mass_accuracy']:.3f} "
                         f"({best['method']}; the report ranks every method × filter by faithfulness and "
                         "rank accuracies)")
        lines += [f"skipped {method}: {why}" for method, why in self.skipped.items()]
        return lines


def check_methods(names: Sequence[str] | None) -> list[str]:
    """Method names (None or ``["all"]``: every method), or a ParameterError naming the unknown one."""
    known = all_methods()
    chosen = known if not names or list(names) == ["all"] else list(names)
    unknown = [n for n in chosen if n not in known]
    if unknown:
        raise ParameterError(f"method '{unknown[0]}' is unknown: choose from {', '.join(known)}")
    return chosen


def _chosen_cases(data: Path, cases: int | Sequence[str], modalities: Sequence[str], split: Split | None
                  ) -> list[CaseRef]:
    """``cases`` validation cases of the split (then its training cases), or the cases named (any labelled case)."""
    if isinstance(cases, int):
        if cases < 1:
            raise ParameterError(f"cases must be at least 1 (got {cases})")
        if split is None:  # a model no search trained: the first labelled cases
            return discover(data, modalities, split="train", with_evidence=True)[:cases]
        train, val = split.resolve(data, with_evidence=True)
        return (val + train)[:cases]
    by_id = {r.case_id: r for r in discover(data, modalities, split="train", with_evidence=True)}
    missing = [c for c in cases if c not in by_id]
    if missing:
        raise ParameterError(f"case '{missing[0]}' is not a labelled case of '{data}'")
    return [by_id[c] for c in cases]


def explain_model(model: str = "", data: str | Path = "", methods: Sequence[str] | None = None,
                  filters: Sequence[str] = ("raw",), cases: int | Sequence[str] = 2, experiment: str = "",
                  heavy: str = "raw", seed: int = 0, split: Split | None = None, out: str | Path = DEFAULT_OUT,
                  overwrite: bool = False) -> ExplanationResult:
    """Explain a model on a few cases with every method × filter, and log it all.

    Args:
        model: a run id, ``runs:/…``, ``models:/name@alias`` or a ``.pt`` checkpoint; empty: the
            best trial of the latest search.
        data: the data folder (default: the one the model's split was made from, else the
            synthetic default).
        methods: method names (None: every method that can explain the model; the others are
            left out, with the reason in ``skipped`` and the parent run's ``skipped_methods``).
        filters: filter or grid names (``raw``, ``pass_A_B``, ``clamp_A_B``, ``post_…``, ``study_sweep``).
        cases: how many cases (the split's validation cases first), or a list of case ids.
        experiment: the MLflow experiment (empty: the project run's under ``mlflow run``, else ``strokelens``).
        heavy: one of :data:`HEAVY_CHOICES`.
        seed: random seed of the random and smoothgrad baselines and the randomisation test.
        split: the model's split, when the caller has it (else it is looked up).
        out: the folder that keeps finished method × case jobs for reruns (see the module docstring).
        overwrite: recompute jobs already complete in ``out``.

    Raises:
        ParameterError: an unknown method, filter, case or ``heavy``, an ``out`` that cannot be written,
            or a method named that cannot explain the model (``reference_lrp`` on anything but
            ``unet3d_reference``).
        TrackingError: the model does not resolve.
        DataError: the data changed since the model's split was saved.
    """
    from tqdm import tqdm

    names = check_methods(methods)
    relevance_filters = parse_filters(list(filters))
    if heavy not in HEAVY_CHOICES:
        raise ParameterError(f"heavy '{heavy}' is unknown: choose from {', '.join(HEAVY_CHOICES)}")
    check_writable(out, "explanations folder")
    tracking.setup(experiment)
    given, experiment = experiment, experiment or tracking.default_experiment()
    checkpoint, preprocess, model_run = model_registry.resolve_model(model, experiment)
    if not given and tracking.study_of(model_run):  # a model of a study: its profile's experiment (smoke's, …)
        experiment = tracking.default_experiment(experiment_of(tracking.study_of(model_run)))
        tracking.setup(experiment)
    config = PreprocessConfig.from_dict(preprocess) if preprocess else PreprocessConfig()
    split = split or model_split(model_run, checkpoint)
    if data:
        folder = Path(data)
    elif split is not None:
        folder = Path(split.data)
    else:
        folder = ensure_default_data(DEFAULT_DATA)[0]
    if isinstance(cases, str):
        cases = [cases]
    refs = _chosen_cases(folder, cases if isinstance(cases, int) else list(cases), config.modalities, split)
    network = load_model(checkpoint)
    window = config.window()  # native mode: sliding windows over the whole volume at the target spacing
    skipped = {name: why for name in names if (why := unsupported(network, name, window))}
    if skipped and methods and list(methods) != ["all"]:
        name = next(iter(skipped))
        raise ParameterError(f"method '{name}' cannot explain this model: {skipped[name]}")
    names = [name for name in names if name not in skipped]
    architecture = tracking.architecture_of(model_run) or getattr(network, "build_config", {}).get("name", "")
    params = {"model": model or (model_run or str(checkpoint)), "model_run": model_run or "",
              "architecture": architecture, "study": tracking.study_of(model_run),
              "data": str(folder), "cases": ",".join(r.case_id for r in refs), "heavy": heavy,
              "resolution": "native" if window is not None else "training grid",
              "split": split.digest if split is not None else "", "skipped_methods": ",".join(skipped)}
    settings = {"checkpoint_sha1": _sha1(checkpoint), "model_run": model_run or "", "preprocess": config.to_dict(),
                "data": str(folder.resolve()), "filters": [f.name for f in relevance_filters], "heavy": heavy,
                "seed": seed, "split": params["split"]}
    digest = hashlib.sha1(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]
    work = Path(out) / f"{model_run[:8] if model_run else 'checkpoint'}-{digest}"
    work.mkdir(parents=True, exist_ok=True)
    _write_json(work / "settings.json", settings)
    result = ExplanationResult("", model_run, architecture, [r.case_id for r in refs], names,
                               [f.name for f in relevance_filters],
                               split_digest=params["split"], folder=work, removed_temporary=remove_temporary(work),
                               skipped=skipped)
    recovery.fail_stale_runs(experiment, None, lambda worker: worker_alive(worker) is False, kind="explain")
    cases_read: dict[str, tuple] = {}
    records: list[dict] = []
    for method, ref in tqdm([(m, r) for m in names for r in refs], desc="explaining", unit="case"):
        record = None if overwrite else _finished(work, method, ref.case_id)
        if record is None:
            if ref.case_id not in cases_read:
                case = read_case(ref)
                cases_read[ref.case_id] = (case, prepare(case, config))
            case, p = cases_read[ref.case_id]
            record = _explain_job(work, network, case, p, method, relevance_filters, config, heavy, seed)
            result.computed += 1
        else:
            result.reused += 1
        records.append(record)
    with tempfile.TemporaryDirectory() as tmp, tracking.explain_run(model_run, params, architecture) as parent:
        recovery.tag_worker(worker_identity())
        result.run_id = parent.info.run_id
        per_case = []
        for method in names:
            done = [r for r in records if r["method"] == method]
            rows = []
            for f in relevance_filters:
                metrics = [r["filters"][f.name] for r in done if f.name in r["filters"]]
                if metrics:  # a baseline takes raw and post-hoc filters only
                    rows.append({"filter": f.name, "filter_kind": f.kind, "filter_mode": f.mode, "filter_low": f.low,
                                 "filter_high": f.high, "cases": len(metrics), **_means(metrics)})
            if not rows:
                continue
            run_params = {"filters": len(rows), "cases": len(done)}
            with tracking.explanation_run(method, architecture, model_run, run_params) as child:
                raw = next((row for row in rows if row["filter_kind"] == "raw"), None)
                best = _best_filtered(rows)
                tracking.log_explanation(_metrics_of(raw) if raw else None, best["filter"] if best else "",
                                         _metrics_of(best) if best else None, rows)
                if raw is not None:
                    tracking.log_artifacts([work / name for r in done for name in r["files"]], "relevance")
                run_id = child.info.run_id
            result.table += [{"run_id": run_id, "method": method, **row} for row in rows]
            per_case += [{"run_id": run_id, "method": method, "filter": name, "case": r["case"], **values}
                         for r in done for name, values in r["filters"].items()]
        import pandas as pd

        summary = Path(tmp) / "explanations.csv"
        pd.DataFrame(result.table).to_csv(summary, index=False)
        tracking.log_artifacts([summary], "")
        tracking.log_cases(per_case)
    return result


FILTER_COLUMNS = ("filter", "filter_kind", "filter_mode", "filter_low", "filter_high", "cases")
"""The columns of a filter row that describe the filter, not a metric."""


def _means(metrics: list[dict]) -> dict[str, float]:
    """Per metric, the mean over the cases where it is finite; a metric finite nowhere is left out."""
    keys = sorted(set().union(*metrics))
    out = {}
    for key in keys:
        values = [float(m[key]) for m in metrics if key in m and np.isfinite(m[key])]
        if values:
            out[key] = float(np.mean(values))
    return out


def _metrics_of(row: dict) -> dict[str, float]:
    return {k: v for k, v in row.items() if k not in FILTER_COLUMNS}


def _best_filtered(rows: list[dict]) -> dict | None:
    """The filtered row the leaderboard's rule ranks first among one method's filters, or None."""
    import pandas as pd

    filtered = [row for row in rows if row["filter_kind"] != "raw"]
    if not filtered or not key_metrics(set().union(*filtered)):
        return None
    ranked = rank_rows(pd.DataFrame(filtered))
    return next(row for row in filtered if row["filter"] == ranked.iloc[0]["filter"])


def best_models(study: str = "", experiment: str = "", architectures: Sequence[str] = ("all",)) -> dict[str, str]:
    """Per chosen architecture, the run id of its best trial in the study (complete trials first).

    Args:
        study: the study (empty: the one of the newest search in the experiment).
        experiment: the MLflow experiment (empty: the project run's, else ``strokelens``).
        architectures: architecture names, or ``["all"]`` for every architecture with a trial that
            reported a validation Dice.

    Raises:
        ParameterError: no search in the experiment, or an architecture without such a trial in the study.
    """
    experiment = experiment or tracking.default_experiment(experiment_of(study) if study
                                                           else tracking.DEFAULT_EXPERIMENT)
    tracking.setup(experiment)
    store = Store(experiment)
    if not study:
        studies = store.studies()
        if not studies:
            raise ParameterError(f"experiment '{experiment}' has no search: train first (mlflow run . -e train) "
                                 "or pass --experiment")
        study = studies[0]
    best = best_trial_per_architecture(store.runs("trial", study))
    chosen = list(best) if not architectures or list(architectures) == ["all"] else list(architectures)
    unknown = [a for a in chosen if a not in best]
    if unknown or not chosen:
        raise ParameterError(f"architecture '{unknown[0] if unknown else 'all'}' has no trial with a validation "
                             f"Dice in study '{study}': choose from {', '.join(best) or 'none (train first)'}")
    return {a: best[a].run_id for a in chosen}


def explain_architectures(study: str = "", experiment: str = "", architectures: Sequence[str] = ("all",),
                          **settings) -> list[ExplanationResult]:
    """Explain the best trial of each chosen architecture of a study (:func:`best_models`), one ``explain`` run each.

    ``settings`` are :func:`explain_model`'s (data, methods, filters, cases, heavy, seed, split, out, overwrite).
    """
    chosen = best_models(study, experiment, architectures)
    return [explain_model(run_id, experiment=experiment, **settings) for run_id in chosen.values()]


def _sha1(path: Path) -> str:
    digest = hashlib.sha1()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _write_json(path: Path, payload: dict) -> None:
    with atomic_file(path) as tmp:
        tmp.write_text(json.dumps(payload, indent=1, sort_keys=True), encoding="utf-8")


def _finished(work: Path, method: str, case_id: str) -> dict | None:
    """The record of a complete job (its JSON and every file it names exist), or None to compute it.

    The folder's name is the digest of every setting but the method and case, so a record found
    there was made with this request's filters.
    """
    try:
        record = json.loads((work / f"{case_id}_{method}.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or record.get("case") != case_id or record.get("method") != method:
        return None
    if not isinstance(record.get("filters"), dict) or not all((work / n).is_file() for n in record.get("files", [])):
        return None
    return record


def _explain_job(work: Path, network, case, p, method: str, filters: Sequence[RelevanceFilter],
                 config: PreprocessConfig, heavy: str, seed: int) -> dict:
    """Explain one case with one method; write its raw relevance (NIfTI, PNG), then its JSON record."""
    explanations = explain_case(network, p.image, p.label > 0.5, p.evidence, config.modalities, method, filters,
                                case_id=p.case_id, heavy=heavy, seed=seed, window=config.window())
    raw = [e for e in explanations if e.filter.kind == "raw"]
    files = [path.name for path in _case_outputs(work, raw, case, p, config)]
    record = {"case": p.case_id, "method": method, "files": files,
              "filters": {e.filter.name: e.metrics for e in explanations}}
    _write_json(work / f"{p.case_id}_{method}.json", record)  # last: its presence marks the job complete
    return record


def _case_outputs(folder: Path, explanations, case, p, config: PreprocessConfig) -> list[Path]:
    """Relevance NIfTI on the native grid (one volume per modality) and a PNG, per explanation of one case.

    The relevance is resampled from the model's grid (the training grid, or the target spacing in
    ``native`` mode) to the case's own grid like a probability map.
    """
    paths = []
    for e in explanations:
        native = to_native(e.relevance, case.shape)  # (C, D, H, W)
        paths.append(write_volume(folder / f"{e.case_id}_{e.method}.nii.gz", np.moveaxis(native, 0, -1),
                                  case.affine, dtype=np.float32))
        z = lesion_slice(p.label > 0.5)
        channel = list(config.modalities).index("Tmax") if "Tmax" in config.modalities else 0
        paths.append(relevance_png(folder / f"{e.case_id}_{e.method}.png", p.image[channel, z],
                                   e.relevance.sum(axis=0)[z], p.label[z] > 0.5,
                                   f"{e.case_id} · {e.method} · slice {z}\nrelevance (sum over modalities) "
                                   f"on {config.modalities[channel]}, lesion green"))
    return paths
