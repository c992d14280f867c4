"""The evaluation stage: the figures of the architecture leaderboard, as MLflow runs.

For each architecture of a study, its best trial (complete trials first, then pruned ones) is
evaluated on the validation side of the study's saved split: per-case metrics on the native
grid, Dice under noise and under zeroing half the voxels, and latency in PyTorch and
onnxruntime. The clinical threshold rules (rCBF < 30 % of the contralateral mean, Tmax > 6 s,
their union) are evaluated on the same cases. Each lands in a nested MLflow run
(``evaluation-<architecture>``, ``clinical-rule-<rule>``) with mean and sd metrics and a
``cases.csv`` artifact; the parent ``evaluate-<study>`` run keeps the split (``split.json`` and
its digest as the ``split`` parameter). The report reads them from there.
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
from benchmark.training.loop import load_model
from benchmark.training.search import DEFAULT_CHECKPOINTS, split_file, study_split
from tracking import model_registry
from tracking import runs as tracking
from tracking.records import Store, best_trial_per_architecture


@dataclass
class EvaluationResult:
    """What an evaluation logged.

    Attributes:
        run_id: the parent ``evaluate-<study>`` run.
        study: the study.
        architectures: per architecture, the trial run evaluated.
        rules: the clinical rules evaluated.
        val_cases: the validation cases, as saved in the study's split.
        split_digest: the split's digest.
    """

    run_id: str
    study: str
    architectures: dict[str, str] = field(default_factory=dict)
    rules: list[str] = field(default_factory=list)
    val_cases: list[str] = field(default_factory=list)
    split_digest: str = ""

    def line(self) -> str:
        """The summary line the command line prints."""
        return (f"evaluated {len(self.architectures)} architectures and {len(self.rules)} clinical rules on "
                f"{len(self.val_cases)} validation cases under MLflow run {self.run_id}")


def evaluate_study(study: str, experiment: str = "", data: str | Path = "", repeats: int = 5, seed: int = 0,
                   checkpoints: str | Path = DEFAULT_CHECKPOINTS, split: Split | None = None) -> EvaluationResult:
    """Evaluate the best trial of each architecture and the clinical rules on the study's validation cases.

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
    tracking.setup(experiment)
    experiment = experiment or tracking.default_experiment()
    store = Store(experiment)
    searches = store.runs("search", study)
    if not searches:
        known = ", ".join(store.studies()) or "none"
        raise ParameterError(f"study '{study}' has no search in MLflow experiment '{experiment}' "
                             f"({tracking.tracking_uri()}); studies there: {known}")
    best = {a: t for a, t in best_trial_per_architecture(store.runs("trial", study)).items()
            if store.has_checkpoint(t.run_id)}
    if not best:
        raise ParameterError(f"study '{study}' has no finished or pruned trial with weights: run the search "
                             "(mlflow run . -e train) until a trial completes an epoch")
    split = split or study_split(study, experiment, checkpoints)
    if split is None:
        raise ParameterError(f"study '{study}' has no saved split (none in its search runs nor in "
                             f"{split_file(checkpoints, study)}): resume its search once (mlflow run . -e train "
                             f"-P study={study} -P trials=1) to save it")
    _, val_refs = split.resolve(data)
    raw_cases = [read_case(r) for r in val_refs]
    params = {"study": study, "data": str(data or split.data), "val_cases": len(raw_cases), "split": split.digest,
              "noise_sigma": NOISE_SIGMA, "zero_fraction": ZERO_FRACTION, "seed": seed, "latency_repeats": repeats}
    result = EvaluationResult("", study, val_cases=split.val_ids, split_digest=split.digest)
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
            rows = evaluate_model(model, prepared[config.key()], seed=seed)
            speed = latency(model, config.to_dict(), repeats=repeats)
            run_params = {"model_run": trial.run_id, "trial": trial.tags.get(tracking.TAG_TRIAL, ""),
                          "trial_state": trial.state, "onnx_provider": speed.pop("onnx_provider"),
                          **{k: trial.params[k] for k in ("width", "loss", "lr") if k in trial.params}}
            with tracking.evaluation_run(study, architecture, trial.run_id, run_params):
                tracking.log_summary({**summarize(rows), **speed})
                tracking.log_cases(rows)
            result.architectures[architecture] = trial.run_id
        for rule, rows in evaluate_rules(raw_cases, seed=seed).items():
            with tracking.clinical_rule_run(study, rule, {"rule": rule}):
                tracking.log_summary(summarize(rows))
                tracking.log_cases(rows)
            result.rules.append(rule)
    return result
