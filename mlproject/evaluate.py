"""``mlflow run . -e evaluate`` / ``python -m mlproject.evaluate``: the figures of the architecture leaderboard.

For each architecture of a study, its best trial (complete trials first, then pruned ones) is
evaluated on the search's validation cases: per-case metrics on the native grid, Dice under noise
and under zeroing half the voxels, and latency in PyTorch and onnxruntime. The clinical threshold
rules (rCBF < 30 % of the contralateral mean, Tmax > 6 s, their union) are evaluated on the same
cases. Each lands in a nested MLflow run (``evaluation-<architecture>``, ``baseline-<rule>``)
with mean and sd metrics and a ``cases.csv`` artifact; the report reads them from there.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

from benchmark.data.cases import discover, read_case
from benchmark.data.preprocessing import PreprocessConfig, prepare
from benchmark.errors import ParameterError
from benchmark.evaluation.clinical_rules import CLINICAL_RULES
from benchmark.evaluation.robustness import (
    NOISE_SIGMA,
    ZERO_FRACTION,
    evaluate_model,
    evaluate_rules,
    latency,
    summarize,
)
from benchmark.training.loop import load_model
from benchmark.training.search import split_cases
from mlproject._cli import ArgumentParser, add_experiment_argument, experiment_of, run
from tracking import runs as tracking
from tracking.records import Store, best_trial_per_architecture


def parse_args(argv: Sequence[str] | None = None):
    """One flag per MLproject parameter."""
    parser = ArgumentParser(prog="python -m mlproject.evaluate", description=__doc__)
    parser.add_argument("--study", default="strokelens", help="the Optuna study whose trials are evaluated")
    add_experiment_argument(parser)
    parser.add_argument("--data", default="", help="data folder (default: the one the study's search used)")
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats of each latency")
    parser.add_argument("--seed", type=int, default=0, help="seed of the perturbations")
    return parser.parse_args(argv)


def evaluate_study(study: str, experiment: str = tracking.DEFAULT_EXPERIMENT, data: str = "", repeats: int = 5,
                   seed: int = 0) -> str:
    """Evaluate the best trial of each architecture and the clinical rules; returns a summary line.

    Raises:
        ParameterError: the study has no search or no trial with weights in the experiment.
    """
    from tqdm import tqdm

    if repeats < 1:
        raise ParameterError(f"repeats must be at least 1 (got {repeats})")
    tracking.setup(experiment)
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
    folder = data or searches[0].params.get("data", "")
    if not folder or not Path(folder).is_dir():
        raise ParameterError(f"data folder '{folder}' of study '{study}' does not exist: pass --data")
    _, val_refs = split_cases(discover(folder, split="train"), seed=0)  # the search's validation cases
    raw_cases = [read_case(r) for r in val_refs]
    params = {"study": study, "data": folder, "val_cases": len(raw_cases), "noise_sigma": NOISE_SIGMA,
              "zero_fraction": ZERO_FRACTION, "seed": seed, "latency_repeats": repeats}
    with tracking.evaluate_run(study, params) as parent:
        prepared: dict[str, list] = {}
        for architecture, trial in tqdm(best.items(), desc="evaluating", unit="architecture"):
            checkpoint, preprocess, _ = tracking.resolve_model(trial.run_id, experiment)
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
        for rule, rows in evaluate_rules(raw_cases, seed=seed).items():
            with tracking.clinical_rule_run(study, rule, {"rule": rule}):
                tracking.log_summary(summarize(rows))
                tracking.log_cases(rows)
    return (f"evaluated {len(best)} architectures and {len(CLINICAL_RULES)} clinical rules on {len(raw_cases)} "
            f"validation cases under MLflow run {parent.info.run_id}")


def main(argv: Sequence[str] | None = None) -> int:
    """Evaluate and log."""
    args = parse_args(argv)
    print(evaluate_study(args.study, experiment_of(args), args.data, args.repeats, args.seed))
    return 0


if __name__ == "__main__":
    sys.exit(run(main))
