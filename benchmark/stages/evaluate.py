"""The evaluation stage: the figures of the architecture leaderboard, as MLflow runs.

For each architecture of a study, its best trial (complete trials first, then pruned ones) is
evaluated on the validation side of the study's saved split: per-case metrics on the native
grid, Dice under noise and under zeroing half the voxels, and latency in PyTorch and
onnxruntime. A model of ``native`` preprocessing predicts each case at its target spacing by Gaussian
sliding windows (as ``predict`` does) before its probability is resampled to the native grid; its
latency is that of one patch. The clinical threshold rules (rCBF < 30 % of the contralateral mean, Tmax > 6 s,
their union) are evaluated on the same cases. Each lands in a nested MLflow run
(``evaluation-<architecture>``, ``clinical-rule-<rule>``) with mean and sd metrics and a
``cases.csv`` artifact; the parent ``evaluate-<study>`` run keeps the split (``split.json`` and
its digest as the ``split`` parameter). The report reads them from there.

With cross-validation folds or repeats (:mod:`benchmark.training.folds`), an architecture's per-case
table is out of fold: each labelled case is scored by the model(s) of the fold that held it out (never
by one trained on it); the R repeats of a fold are scored separately and their metrics averaged per
case, with the sample standard deviation of Dice over repeats as ``dice_repeat_sd`` (and its mean as
a metric). The table gains ``fold`` and ``repeats`` columns, every labelled case appears exactly once,
and the clinical rules are scored on the same cases, so the leaderboard's confidence intervals and
paired tests use all of them. Latency is measured on the trial's own model. Every evaluation run
logs ``folds``, ``repeats`` and ``cases`` as parameters; with one fold and one repeat nothing else changes.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from benchmark.data.cases import read_case
from benchmark.data.preprocessing import PreprocessConfig, prepare
from benchmark.data.splits import SPLIT_FILE, Split
from benchmark.errors import ParameterError
from benchmark.evaluation.robustness import (
    NOISE_SIGMA,
    ZERO_FRACTION,
    evaluate_model,
    evaluate_rules,
    latency,
    summarize,
)
from benchmark.training.folds import best_trials, fold_models, load_fold_models
from benchmark.training.loop import load_model
from benchmark.training.profiles import experiment_of
from benchmark.training.search import DEFAULT_CHECKPOINTS, split_file, study_split
from inferers import SlidingWindow
from tracking import model_registry
from tracking import runs as tracking
from tracking.records import Store

CASE_KEYS = ("case", "fold", "repeats")
"""Columns of an out-of-fold table that are not metrics (not averaged, not summarised)."""


@dataclass
class EvaluationResult:
    """What an evaluation logged.

    Attributes:
        run_id: the parent ``evaluate-<study>`` run.
        study: the study.
        architectures: per architecture, the trial run evaluated.
        rules: the clinical rules evaluated.
        val_cases: the cases scored: the split's validation side, or every labelled case with K ≥ 2 folds.
        split_digest: the split's digest.
        folds: K, the split's cross-validation folds.
    """

    run_id: str
    study: str
    architectures: dict[str, str] = field(default_factory=dict)
    rules: list[str] = field(default_factory=list)
    val_cases: list[str] = field(default_factory=list)
    split_digest: str = ""
    folds: int = 1

    def line(self) -> str:
        """The summary line the command line prints."""
        cases = (f"{len(self.val_cases)} validation cases" if self.folds == 1 else
                 f"all {len(self.val_cases)} labelled cases out of fold ({self.folds} folds)")
        return (f"evaluated {len(self.architectures)} architectures and {len(self.rules)} clinical rules on "
                f"{cases} under MLflow run {self.run_id}")


def evaluate_study(study: str, experiment: str = "", data: str | Path = "", repeats: int = 5, seed: int = 0,
                   checkpoints: str | Path = DEFAULT_CHECKPOINTS, split: Split | None = None) -> EvaluationResult:
    """Evaluate the best trial of each architecture and the clinical rules on the study's validation cases.

    With folds or repeats, every labelled case is scored out of fold (see the module docstring).

    Args:
        study: the Optuna study (and MLflow study tag).
        experiment: the MLflow experiment (empty: the project run's under ``mlflow run``, else ``strokelens``).
        data: the data folder (default: the one the study's split was made from).
        repeats: timed repeats of each latency.
        seed: random seed of the perturbations.
        checkpoints: where the study's split lies when MLflow holds none.
        split: the study's split, when the caller has it (else it is read from MLflow or ``checkpoints``).

    Raises:
        ParameterError: the study has no search, no trial with weights or no saved split in the experiment.
        DataError: the data folder is missing or changed since the split was saved.
    """
    from tqdm import tqdm

    if repeats < 1:
        raise ParameterError(f"repeats must be at least 1 (got {repeats})")
    experiment = experiment or tracking.default_experiment(experiment_of(study))
    tracking.setup(experiment)
    store = Store(experiment)
    searches = store.runs("search", study)
    if not searches:
        known = ", ".join(store.studies()) or "none"
        raise ParameterError(f"study '{study}' has no search in MLflow experiment '{experiment}' "
                             f"({tracking.tracking_uri()}); studies there: {known}")
    best = best_trials(store, study)
    if not best:
        raise ParameterError(f"study '{study}' has no finished or pruned trial with weights: run the search "
                             "(mlflow run . -e train) until a trial completes an epoch")
    split = split or study_split(study, experiment, checkpoints)
    if split is None:
        raise ParameterError(f"study '{study}' has no saved split (none in its search runs nor in "
                             f"{split_file(checkpoints, study)}): resume its search once (mlflow run . -e train "
                             f"-P study={study} -P trials=1) to save it")
    models = {a: fold_models(store, study, t.run_id, split.folds) for a, t in best.items()}
    out_of_fold = split.folds > 1 or any(len(m) > 1 for m in models.values())
    train_refs, val_refs = split.resolve(data)
    scored = sorted(train_refs + val_refs, key=lambda r: r.case_id) if split.folds > 1 else val_refs
    raw_cases = [read_case(r) for r in scored]
    n_repeats = {len(m) // split.folds for m in models.values()}
    params = {"study": study, "data": str(data or split.data), "val_cases": len(raw_cases), "split": split.digest,
              "noise_sigma": NOISE_SIGMA, "zero_fraction": ZERO_FRACTION, "seed": seed, "latency_repeats": repeats,
              "folds": split.folds, "repeats": max(n_repeats), "cases": len(raw_cases)}
    result = EvaluationResult("", study, val_cases=[r.case_id for r in scored], split_digest=split.digest,
                              folds=split.folds)
    with tracking.evaluate_run(study, params) as parent, tempfile.TemporaryDirectory() as tmp:
        result.run_id = parent.info.run_id
        tracking.log_artifacts([split.save(Path(tmp) / SPLIT_FILE)], "")
        prepared: dict[str, list] = {}
        for architecture, trial in tqdm(best.items(), desc="evaluating", unit="architecture"):
            checkpoint, preprocess, _ = model_registry.resolve_model(trial.run_id, experiment)
            config = PreprocessConfig.from_dict(preprocess) if preprocess else PreprocessConfig()
            if config.key() not in prepared:
                prepared[config.key()] = [prepare(c, config) for c in raw_cases]
            model = load_model(checkpoint)
            if out_of_fold:
                rows = out_of_fold_rows(load_fold_models(models[architecture], experiment), models[architecture],
                                        split, prepared[config.key()], seed, window=config.window())
                metrics = summarize([{k: v for k, v in r.items() if k not in CASE_KEYS} for r in rows])
            else:
                rows = evaluate_model(model, prepared[config.key()], seed=seed, window=config.window())
                metrics = summarize(rows)
            speed = latency(model, config.to_dict(), repeats=repeats)
            run_params = {"model_run": trial.run_id, "trial": trial.tags.get(tracking.TAG_TRIAL, ""),
                          "trial_state": trial.state, "onnx_provider": speed.pop("onnx_provider"),
                          "folds": split.folds, "repeats": len(models[architecture]) // split.folds,
                          "cases": len(rows),
                          **{k: trial.params[k] for k in ("width", "loss", "lr") if k in trial.params}}
            with tracking.evaluation_run(study, architecture, trial.run_id, run_params):
                tracking.log_summary({**metrics, **speed})
                tracking.log_cases(rows)
            result.architectures[architecture] = trial.run_id
        for rule, rows in evaluate_rules(raw_cases, seed=seed).items():
            with tracking.clinical_rule_run(study, rule, {"rule": rule, "cases": len(rows)}):
                tracking.log_summary(summarize(rows))
                tracking.log_cases(rows)
            result.rules.append(rule)
    return result


def out_of_fold_rows(models: list, which: list, split: Split, cases: list, seed: int = 0,
                     window: SlidingWindow | None = None) -> list[dict]:
    """Per case, the metrics of the models of the fold that held it out, averaged over their repeats.

    Args:
        models: the K × R PyTorch models, in the order of ``which``.
        which: their :class:`~benchmark.training.folds.FoldModel` (fold, repeat).
        split: the study's split (which fold holds out which case).
        cases: the prepared cases to score (each held out by exactly one fold).
        seed: random seed of the perturbations (the same for every repeat).
        window: the models' sliding window (``native`` mode), None for whole volumes.

    Returns:
        One row per case, in the order of ``cases``: ``case``, ``fold``, ``repeats``, the mean of each
        metric of :func:`~benchmark.evaluation.robustness.evaluate_model` over the repeats, and
        ``dice_repeat_sd`` (sample standard deviation of Dice over the repeats; 0 with one repeat).
    """
    import numpy as np

    fold_of = {case_id: k for k in range(split.folds) for case_id in split.fold_ids(k)[1]}
    per_case: dict[str, list[dict]] = {c.case_id: [] for c in cases}
    for model, fold_model in zip(models, which, strict=True):
        held_out = [c for c in cases if fold_of[c.case_id] == fold_model.fold]
        for row in evaluate_model(model, held_out, seed=seed, window=window):
            per_case[row["case"]].append(row)
    rows = []
    for case_id, scored in per_case.items():
        metrics = [k for k in scored[0] if k != "case"]
        dice_values = np.array([r["dice"] for r in scored], dtype=np.float64)
        rows.append({"case": case_id, "fold": fold_of[case_id], "repeats": len(scored),
                     **{k: float(np.mean([r[k] for r in scored])) for k in metrics},
                     "dice_repeat_sd": float(dice_values.std(ddof=1)) if len(scored) > 1 else 0.0})
    return rows
