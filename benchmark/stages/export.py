"""The export stage: a trained model to ONNX, verified, logged and registered in MLflow.

The model (by default the best trial of the latest search) is exported to ONNX, checked against
PyTorch on several grids, logged as an MLflow pyfunc around its ONNX session (the served model, whose
predictor is :data:`PREDICTOR`) and registered as
``strokelens-segmenter`` with its tags and a description. The alias ``champion`` moves to the new
version only when it beats the current champion on the same validation cases (see
:func:`champion_decision`) or the user forces it (``--promote``). Optionally an int8 model is made,
calibrated on the training side of the split of the search that trained the model, and its Dice
change against fp32 is measured on the validation side.

:func:`export_ensemble` exports the K × R fold models of a trial (:mod:`benchmark.training.folds`)
as one ONNX graph that averages their softmax probabilities (:class:`models.ensemble.Ensemble`; its
``logits`` output is ``log p̄``, so prediction and serving read ``p̄`` unchanged). An ensemble has no
held-out validation Dice (every case trained one of its members), so it takes the ``champion``
alias only with ``--promote``.

With ``lrp_onnx`` (``--lrp-onnx``) the relevance pass of :data:`RELEVANCE_METHODS` is exported too
(:func:`explain.onnx_export.export_lrp_onnx`: the LRP pass as forward operations, verified against
``explain.attribute`` in float64 on the model's training grid and an uneven one, relative L1 ≤ 1e-4),
shipped inside the served pyfunc (a request may ask for relevance, :mod:`benchmark.serving`) and
registered as ``strokelens-relevance-<method>`` with tags naming the segmenter version, the parity
and the architecture (its ``champion`` alias follows the segmenter's). A method whose graph cannot be
exported or misses the parity is skipped with its reason (logged, tagged on the segmenter version,
printed), never failing the export. It is off by default: ``torch.onnx.export`` (dynamo) of the
relevance graph takes about 20-100 s per method on a 2-core CPU (longer than the segmenter's own export).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from benchmark.data.cases import discover, read_case
from benchmark.data.preprocessing import PreprocessConfig, prepare, to_native
from benchmark.data.splits import Split
from benchmark.errors import ParameterError
from benchmark.evaluation.segmentation import dice
from benchmark.evaluation.statistics import bootstrap_ci
from benchmark.stages.data import model_split
from benchmark.training.folds import fold_models, load_fold_models
from benchmark.training.loop import load_model
from models.ensemble import Ensemble
from models.onnx import Segmenter, atomic_file, export_onnx, quantize_int8, read_sidecar, sidecar_path
from tracking import model_registry
from tracking import runs as tracking
from tracking.records import Store

logger = logging.getLogger(__name__)

PREDICTOR = "benchmark.serving:load_predictor"
"""The factory the registered pyfunc builds its predictor with (see :mod:`benchmark.serving`)."""
CALIBRATION_CASES = 8
"""Training cases that calibrate the int8 activation ranges."""
RELEVANCE_METHODS: tuple[str, ...] = ("lrp_epsilon", "lrp_zplus")
"""LRP methods whose relevance graphs ``--lrp-onnx`` exports, ships and registers."""
RELEVANCE_TOLERANCE = 1e-4
"""The largest relative L1 difference to ``explain.attribute`` a relevance graph may have to be registered."""


@dataclass
class ExportResult:
    """What an export logged.

    Attributes:
        run_id: the export run that holds the ONNX model.
        source_run: the trial run the weights come from (None for a checkpoint file).
        architecture: the network's registry name.
        max_abs_diff: the largest |onnxruntime − PyTorch| over the checked grids.
        uri: the logged MLflow model's URI.
        version: the registered version, or None when not registered.
        champion: whether the ``champion`` alias moved to it.
        champion_reason: one line saying why the alias moved or stayed ("" when not registered).
        int8_dice_change: mean Dice of int8 minus fp32 (None without an int8 model).
        int8_cases: how many cases that change is measured on.
        int8_cases_side: ``validation`` (the split's), or ``labelled`` for a model no search trained.
        relevance: LRP method → its registered relevance model (``models:/…``, or the logged URI).
        relevance_parity: LRP method → the largest relative L1 difference to ``explain.attribute``.
        relevance_skipped: LRP method → why its relevance graph was not exported.
    """

    run_id: str
    source_run: str | None
    architecture: str
    max_abs_diff: float
    uri: str
    version: str | None
    champion: bool
    champion_reason: str = ""
    int8_dice_change: float | None = None
    int8_cases: int = 0
    int8_cases_side: str = "validation"
    relevance: dict[str, str] = field(default_factory=dict)
    relevance_parity: dict[str, float] = field(default_factory=dict)
    relevance_skipped: dict[str, str] = field(default_factory=dict)

    def line(self) -> str:
        """The summary line the command line prints."""
        alias = f"@{model_registry.CHAMPION_ALIAS}" if self.champion else f"/{self.version}"
        where = f"models:/{model_registry.REGISTERED_MODEL}{alias} (version {self.version})" if self.version \
            else self.uri
        quantised = ""
        if self.int8_dice_change is not None:
            quantised = (f"; int8 Dice change {self.int8_dice_change:+.4f} on {self.int8_cases} "
                         f"{self.int8_cases_side} cases")
            if self.int8_cases_side != "validation":
                quantised += " (the model has no saved split: calibrated on the same cases)"
        line = (f"exported {self.architecture} to ONNX (max |onnxruntime − PyTorch| {self.max_abs_diff:.2e}); "
                f"logged under MLflow run {self.run_id}: {where}{quantised}")
        lines = [line] + ([self.champion_reason] if self.champion_reason else [])
        lines += [f"relevance {m}: {uri} (relative L1 to explain.attribute {self.relevance_parity[m]:.1e}); "
                  "the served model answers requests with \"relevance\": \"" + m + "\""
                  for m, uri in self.relevance.items()]
        lines += [f"relevance {m} not exported: {why}" for m, why in self.relevance_skipped.items()]
        return "\n".join(lines)


@dataclass
class RelevanceExport:
    """The relevance graphs exported beside a segmenter (see the module docstring).

    Attributes:
        reports: LRP method → its export report (file, parity).
        skipped: LRP method → the one-line reason it was not exported.
        seconds: wall time of the whole relevance export.
    """

    reports: dict = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def paths(self) -> dict[str, Path]:
        """LRP method → relevance ONNX file."""
        return {method: report.onnx_path for method, report in self.reports.items()}


def export_relevance(model, folder: Path, config: PreprocessConfig,
                     methods: tuple[str, ...] = RELEVANCE_METHODS) -> RelevanceExport:
    """Export and verify the relevance graph of each method into ``folder`` (``<method>.onnx`` and its JSON).

    The graphs are traced on the model's training grid and checked against ``explain.attribute``
    (float64) on that grid and on an uneven one (:data:`explain.onnx_export.CHECK_GRIDS`' second). A
    method the graph cannot express, or whose parity exceeds :data:`RELEVANCE_TOLERANCE`, is skipped
    with its reason (a warning is logged); nothing else stops the export.
    """
    import torch

    from explain.errors import ExplainError
    from explain.onnx_export import CHECK_GRIDS, export_lrp_onnx

    start = time.perf_counter()
    result = RelevanceExport()
    grid = tuple(config.grid_dhw)
    example = torch.rand(1, len(config.modalities), *grid, generator=torch.Generator().manual_seed(0))
    grids = tuple(dict.fromkeys([grid, *CHECK_GRIDS[1:]]))
    for method in methods:
        try:
            result.reports[method] = export_lrp_onnx(model, method, Path(folder) / f"{method}.onnx", example,
                                                     grids=grids, tolerance=RELEVANCE_TOLERANCE)
        except (ExplainError, RuntimeError) as exc:  # onnxruntime's own failures are RuntimeErrors
            reason = " ".join(str(exc).split())[:300]
            result.skipped[method] = reason
            logger.warning("relevance ONNX of %s not exported for %s: %s", method,
                           getattr(model, "build_config", {}).get("name", type(model).__name__), reason)
    result.seconds = time.perf_counter() - start
    return result


def register_relevance(relevance: RelevanceExport, segmenter_version: str | None, tags: dict, run_id: str,
                       champion: bool, result: ExportResult) -> None:
    """Log (and register beside ``segmenter_version``) the relevance graphs; record them in ``result`` and MLflow."""
    architecture = tags.get("architecture", "")
    metrics = {"lrp_onnx_export_s": relevance.seconds}
    for method, report in relevance.reports.items():
        metrics[f"lrp_onnx_relative_l1_{method}"] = report.worst
        parity = {"parity_relative_l1": f"{report.worst:.3e}", "parity_grids": ",".join(report.relative_l1),
                  "target": "lesion", "architecture": architecture,
                  "segmenter_model": model_registry.REGISTERED_MODEL if segmenter_version else "",
                  "segmenter_version": segmenter_version or "", "segmenter_run": run_id,
                  "trial_run": tags.get("trial_run", ""), "study": tags.get("study", "")}
        description = (f"{method} relevance (LRP) of {architecture} segmenter "
                       + (f"version {segmenter_version} " if segmenter_version else "")
                       + "as an ONNX graph: input image (N, C, D, H, W) as the segmenter's prepared input, outputs "
                       f"relevance (same shape), logits, target. Relative L1 to explain.attribute {report.worst:.1e} "
                       f"on grids {', '.join(report.relative_l1)}.")
        uri, version = model_registry.log_relevance_model(report.onnx_path, report.onnx_path.with_suffix(".json"),
                                                          method, register=segmenter_version is not None,
                                                          tags=parity, description=description, champion=champion)
        result.relevance[method] = (f"models:/{model_registry.relevance_model_name(method)}/{version}"
                                    if version else uri)
        result.relevance_parity[method] = report.worst
    result.relevance_skipped.update(relevance.skipped)
    tracking.log_summary(metrics)
    if segmenter_version is not None:
        model_registry.tag_version(segmenter_version, {
            "relevance_methods": ",".join(relevance.reports),
            **{f"relevance_skipped_{m}": why[:250] for m, why in relevance.skipped.items()}})


def data_digest(split: Split) -> str:
    """SHA-256 (first 32 hex digits) over the sorted case digests of ``split``: the data, whatever the sides."""
    joined = "".join(f"{c.case} {c.digest}\n" for c in sorted(split.cases, key=lambda c: c.case))
    return hashlib.sha256(joined.encode()).hexdigest()[:32]


def champion_decision(version: str, val_dice: float | None, split_digest: str, current: dict | None,
                      promote: bool = False) -> tuple[bool, str]:
    """Whether a new version takes the ``champion`` alias, and the one line that says why.

    The study's metric is the mean validation Dice of the trial's best epoch (``best_val_dice``
    as the trial logged it, the same number for the new model and the champion). Models compare only
    on the same validation cases, i.e. the same split digest; the new model must be strictly better.
    ``promote`` moves the alias regardless.

    Args:
        version: the new registered version.
        val_dice: its mean validation Dice (None or NaN when unknown, e.g. a bare checkpoint).
        split_digest: the digest of the split it was validated on ("" when unknown).
        current: the current champion's tags (``version``, ``val_dice``, ``split``), or None.
        promote: force the alias onto the new version.
    """
    alias = model_registry.CHAMPION_ALIAS
    if promote:
        return True, f"registered version {version} as {alias} (--promote)"
    if current is None:
        return True, f"registered version {version} as {alias}: there was no champion"
    old = current.get("version", "?")
    old_split = current.get("split", "")
    try:
        old_dice = float(current.get("val_dice", "nan"))
    except ValueError:
        old_dice = math.nan
    held = f"registered version {version} without the {alias} alias (version {old} keeps it)"
    if val_dice is None or math.isnan(val_dice) or not split_digest:
        return False, f"{held}: the new model has no validation Dice on a saved split; pass --promote to force"
    if not old_split or math.isnan(old_dice):
        return False, f"{held}: the champion has no validation Dice on a saved split; pass --promote to force"
    if old_split != split_digest:
        return False, (f"{held}: not comparable, the champion was validated on split {old_split[:8]}… and "
                       f"this model on split {split_digest[:8]}…; pass --promote to force")
    if val_dice > old_dice:
        return True, (f"registered version {version} as {alias}: validation Dice {val_dice:.3f} > version "
                      f"{old}'s {old_dice:.3f} on the same cases (split {split_digest[:8]}…)")
    return False, (f"{held}: validation Dice {val_dice:.3f} ≤ champion's {old_dice:.3f} on the same cases "
                   f"(split {split_digest[:8]}…); pass --promote to force")


def int8_dice_change(onnx_path: Path, int8_path: Path, cases) -> dict:
    """Mean Dice of the fp32 and int8 models on the native grid over ``cases`` (prepared), and the change.

    ``dice_fp32_cases`` holds the fp32 model's per-case Dice (for the version's confidence interval).
    """
    fp32, int8 = Segmenter(onnx_path), Segmenter(int8_path)
    window = PreprocessConfig.from_dict(fp32.meta["preprocess"]).window()
    scores = {"fp32": [], "int8": []}
    for case in cases:
        for name, segmenter in (("fp32", fp32), ("int8", int8)):
            probability = to_native(segmenter.probability(case.image[None], window=window), case.native_shape)[0]
            scores[name].append(dice(probability > 0.5, case.native_label))
    means = {f"val_dice_{k}": float(np.mean(v)) for k, v in scores.items()}
    return {**means, "int8_dice_change": means["val_dice_int8"] - means["val_dice_fp32"],
            "dice_fp32_cases": scores["fp32"]}


def export_model(reference: str = "", experiment: str = "", out: str | Path = "", register: bool = True,
                 int8_data: str | Path = "", champion: bool = True, split: Split | None = None,
                 promote: bool = False, lrp_onnx: bool = False) -> ExportResult:
    """Export, verify, log and register one model.

    Args:
        reference: a run id, ``runs:/…``, ``models:/…`` or a ``.pt`` checkpoint; empty: the best
            trial of the latest search.
        experiment: the MLflow experiment (empty: the project run's under ``mlflow run``, else ``strokelens``).
        out: also keep ``model.onnx`` and its JSON in this folder.
        register: register the model (else only log it).
        int8_data: a data folder: also quantise to int8, calibrated on the training side of the
            model's split, and measure the Dice change on its validation side (checked against the
            split: changed data is refused). A model no search trained has no split: then every
            labelled case serves both, and the result says so.
        champion: let the new version compete for the ``champion`` alias (false: never move it).
        split: the model's split, when the caller has it (else it is looked up).
        promote: move the ``champion`` alias to the new version even when it does not beat the
            current champion (see :func:`champion_decision`).
        lrp_onnx: also export the relevance graphs of :data:`RELEVANCE_METHODS`, ship them in the served
            model and register them as ``strokelens-relevance-<method>`` (module docstring).

    Raises:
        TrackingError: the reference does not resolve or the store cannot be used.
        DataError: the data changed since the model's split was saved.
    """
    tracking.setup(experiment)
    experiment = experiment or tracking.default_experiment()
    checkpoint, preprocess, run_id = model_registry.resolve_model(reference, experiment)
    preprocess = preprocess or PreprocessConfig().to_dict()
    model = load_model(checkpoint)
    int8_refs = None
    split = split or model_split(run_id, checkpoint)
    if int8_data:
        if split is not None:
            int8_refs = (*split.resolve(int8_data), "validation")
        else:
            labelled = discover(int8_data, PreprocessConfig.from_dict(preprocess).modalities, split="train")
            int8_refs = (labelled, labelled, "labelled")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(out) if out else Path(tmp)
        report = export_onnx(model, folder / "model.onnx", preprocess)
        relevance = export_relevance(model, folder, PreprocessConfig.from_dict(preprocess)) if lrp_onnx else None
        params = {"model": reference or run_id or str(checkpoint), "source_run": run_id or ""}
        if split is not None:
            params["split"] = split.digest
        facts = model_registry.source_run_facts(run_id)
        architecture = model.build_config["name"]
        val_dice = facts.get("val_dice")
        tags = {"architecture": architecture, "study": facts.get("study", ""), "trial_run": run_id or "",
                "val_dice": "" if val_dice is None else f"{val_dice:.6f}",
                "split": split.digest if split is not None else "",
                "data_digest": data_digest(split) if split is not None else "", "profile": facts.get("profile", "")}
        if split is not None:
            tags["val_cases"] = str(sum(c.side == "validation" for c in split.cases))
        origin = (f"trial run {run_id} of study '{tags['study']}'" if run_id else f"checkpoint {checkpoint}")
        dice_text = f"best validation Dice {val_dice:.3f}" if val_dice is not None else "no validation Dice"
        split_text = f"on split {split.digest[:8]}…" if split is not None else "without a saved split"
        description = (f"{architecture} segmenter of ischemic-stroke lesions (ONNX, fp32 logits), exported from "
                       f"{origin}. {dice_text[0].upper() + dice_text[1:]} {split_text}.")
        current = model_registry.champion_tags() if register and champion else None
        with tracking.export_run(run_id, params) as parent:
            tracking.log_summary({f"onnx_max_abs_diff_{k}": v for k, v in report.max_abs_diff.items()})
            uri, version = model_registry.log_onnx_model(report.onnx_path, report.sidecar_path, PREDICTOR,
                                                         register=register, tags=tags, description=description,
                                                         relevance=relevance.paths if relevance else None)
            result = ExportResult(parent.info.run_id, run_id, architecture, report.worst, uri, version, False)
            if int8_refs is not None:
                train_refs, val_refs, side = int8_refs
                config = PreprocessConfig.from_dict(preprocess)
                calibration = [prepare(read_case(r), config).image[None] for r in train_refs[:CALIBRATION_CASES]]
                int8_path = quantize_int8(report.onnx_path, folder / "model_int8.onnx", calibration)
                change = int8_dice_change(report.onnx_path, int8_path, [prepare(read_case(r), config)
                                                                         for r in val_refs])
                per_case = change.pop("dice_fp32_cases")
                tracking.log_summary(change)
                tracking.log_artifacts([int8_path, sidecar_path(int8_path)], "onnx-int8")
                result.int8_dice_change, result.int8_cases = change["int8_dice_change"], len(val_refs)
                result.int8_cases_side = side
                if version is not None and side == "validation":
                    interval = bootstrap_ci(per_case)
                    model_registry.tag_version(version, {"val_dice_ci_low": f"{interval.low:.6f}",
                                                         "val_dice_ci_high": f"{interval.high:.6f}",
                                                         "val_dice_onnx": f"{interval.mean:.6f}"})
            if version is not None and champion:
                result.champion, result.champion_reason = champion_decision(
                    version, val_dice, tags["split"], current, promote)
                if result.champion:
                    model_registry.set_champion(version)
            elif version is not None:
                result.champion_reason = (f"registered version {version} without the "
                                          f"{model_registry.CHAMPION_ALIAS} alias (not the best of its search)")
            if relevance is not None:
                register_relevance(relevance, version, tags, parent.info.run_id, result.champion, result)
    return result


def export_ensemble(reference: str = "", experiment: str = "", out: str | Path = "", register: bool = True,
                    promote: bool = False) -> ExportResult:
    """Export the fold models of a trial as one ONNX ensemble of their averaged probabilities; log and register it.

    Args:
        reference: the trial whose configuration the folds trained (a run id or ``runs:/…``); empty:
            the best trial of the latest search.
        experiment: the MLflow experiment (empty: the project run's under ``mlflow run``, else ``strokelens``).
        out: also keep ``model.onnx`` and its JSON in this folder.
        register: register the model (else only log it).
        promote: make the new version the ``champion`` (without it, the alias stays where it is).

    Raises:
        ParameterError: the reference is no trial of a search, or the trial has one model only (train
            ``--folds``/``--repeats``) or lacks some of its folds.
        TrackingError: the reference does not resolve or the store cannot be used.
    """
    tracking.setup(experiment)
    experiment = experiment or tracking.default_experiment()
    checkpoint, preprocess, run_id = model_registry.resolve_model(reference, experiment)
    split = model_split(run_id, checkpoint) if run_id else None
    if not run_id or split is None:
        raise ParameterError(f"model '{reference or checkpoint}' is no trial of a search with a saved split: an "
                             "ensemble is made of a trial's fold models; pass --model <trial run id>")
    study = tracking.study_of(run_id)
    members = fold_models(Store(experiment), study, run_id, split.folds)
    if len(members) < 2:
        raise ParameterError(f"trial run {run_id} has a single model (1 fold, 1 repeat): nothing to ensemble; train "
                             f"folds first (mlflow run . -e train -P study={study} -P folds=5 in a new study)")
    preprocess = preprocess or PreprocessConfig().to_dict()
    ensemble = Ensemble(load_fold_models(members, experiment))
    repeats = len(members) // split.folds
    facts = model_registry.source_run_facts(run_id)
    architecture = ensemble.build_config["members"][0]["name"]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(out) if out else Path(tmp)
        report = export_onnx(ensemble, folder / "model.onnx", preprocess)
        sidecar = read_sidecar(report.onnx_path)
        sidecar["ensemble"] = {"combination": "mean of the members' softmax probabilities; the logits output "
                                              "is its logarithm (softmax of it gives the mean)",
                               "folds": split.folds, "repeats": repeats, "trial_run": run_id,
                               "members": [{"fold": m.fold, "repeat": m.repeat, "run_id": m.run_id} for m in members]}
        with atomic_file(report.sidecar_path) as side:
            side.write_text(json.dumps(sidecar, indent=2) + "\n")
        tags = {"architecture": architecture, "study": study, "trial_run": run_id, "val_dice": "",
                "split": split.digest, "data_digest": data_digest(split), "profile": facts.get("profile", ""),
                "ensemble": f"{split.folds} folds x {repeats} repeats"}
        description = (f"Ensemble of {len(members)} {architecture} segmenters of ischemic-stroke lesions (ONNX, log "
                       f"of the mean softmax probability): trial run {run_id} of study '{study}' trained on "
                       f"{split.folds} cross-validation folds × {repeats} repeats of split {split.digest[:8]}…. "
                       "No held-out validation Dice: every labelled case trained some member.")
        params = {"model": reference or run_id, "source_run": run_id, "split": split.digest, "ensemble": True,
                  "folds": split.folds, "repeats": repeats, "members": len(members)}
        with tracking.export_run(run_id, params) as parent:
            tracking.log_summary({f"onnx_max_abs_diff_{k}": v for k, v in report.max_abs_diff.items()})
            uri, version = model_registry.log_onnx_model(report.onnx_path, report.sidecar_path, PREDICTOR,
                                                         register=register, tags=tags, description=description)
            result = ExportResult(parent.info.run_id, run_id, f"ensemble of {len(members)} {architecture}",
                                  report.worst, uri, version, False)
            if version is not None and promote:
                result.champion, result.champion_reason = champion_decision(version, None, split.digest, None,
                                                                            promote=True)
                model_registry.set_champion(version)
            elif version is not None:
                result.champion_reason = (f"registered version {version} without the {model_registry.CHAMPION_ALIAS} "
                                          "alias: an ensemble has no held-out validation Dice to compare; pass "
                                          "--promote to make it the champion")
    return result
