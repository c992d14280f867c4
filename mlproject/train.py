"""``mlflow run . -e train`` / ``python -m mlproject.train``: an Optuna search tracked in MLflow."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from benchmark.data.defaults import DEFAULT_DATA, ensure_default_data
from benchmark.errors import ParameterError
from benchmark.training.loop import resolve_device
from benchmark.training.profiles import PROFILES, resolve_profile, restrict
from benchmark.training.search import SearchResult, SearchSettings, describe, run_search
from mlproject._cli import ArgumentParser, run, split_list
from mlproject.export import export_model
from models.registry import available
from tracking.runs import DEFAULT_EXPERIMENT, tracking_uri


def auto_int(text: str) -> int | None:
    """Argparse type: ``auto`` → None (the profile decides), else an integer."""
    if text.strip().lower() in ("auto", ""):
        return None
    try:
        return int(float(text))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"'{text}' is neither an integer nor auto") from exc


def build_parser() -> ArgumentParser:
    """One flag per MLproject parameter; ``auto`` for trials/epochs means the profile's value."""
    parser = ArgumentParser(prog="python -m mlproject.train", description=__doc__)
    parser.add_argument("--data", default="", help=f"data folder; empty: the synthetic default ({DEFAULT_DATA})")
    parser.add_argument("--trials", type=auto_int, default=None,
                        help="trials to add to the study (default auto: the profile's)")
    parser.add_argument("--epochs", type=auto_int, default=None,
                        help="maximum epochs per trial (default auto: the profile's)")
    parser.add_argument("--study", default="strokelens", help="Optuna study name; the same name resumes")
    parser.add_argument("--storage", default="sqlite:///optuna.db", help="Optuna storage URL")
    parser.add_argument("--experiment", default=DEFAULT_EXPERIMENT, help="MLflow experiment")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--profile", default="default", help=f"one of {', '.join(PROFILES)}")
    parser.add_argument("--architectures", default="",
                        help=f"comma list to search (default: the profile's; known: {', '.join(available())})")
    parser.add_argument("--widths", default="", help="comma list of width multipliers (default: the profile's)")
    parser.add_argument("--time-budget", type=float, default=-1,
                        help="seconds after which no new trial or epoch starts (-1: profile's, 0: none)")
    parser.add_argument("--no-export", action="store_true", help="skip the ONNX export of the best trials")
    parser.add_argument("--top-k", type=int, default=1, help="export the k best trials of the study (the best "
                        "becomes the champion)")
    parser.add_argument("--checkpoints", default="checkpoints", help="folder for per-epoch checkpoints")
    return parser


def settings_from_args(argv: Sequence[str] | None = None) -> SearchSettings:
    """Parse and validate the arguments (before any run is started)."""
    return parse(argv)[1]


def parse(argv: Sequence[str] | None = None) -> tuple[argparse.Namespace, SearchSettings]:
    """Parsed arguments and validated search settings; every bad value is refused before any run."""
    args = build_parser().parse_args(argv)
    if args.top_k < 1:
        raise ParameterError(f"top-k must be at least 1 (got {args.top_k}); use --no-export to export nothing")
    profile = restrict(resolve_profile(args.profile, resolve_device(args.device)),
                       split_list(args.architectures), split_list(args.widths))
    trials = profile.trials if args.trials is None else args.trials
    epochs = profile.epochs if args.epochs is None else args.epochs
    budget = profile.time_budget if args.time_budget < 0 else (args.time_budget or None)
    settings = SearchSettings(data=Path(args.data) if args.data else DEFAULT_DATA, trials=trials,
                              epochs=epochs, study=args.study, storage=args.storage,
                              experiment=args.experiment, seed=args.seed, device=args.device,
                              profile=profile, checkpoints=Path(args.checkpoints), time_budget=budget)
    return args, settings


def search_and_export(args: argparse.Namespace, settings: SearchSettings) -> SearchResult:
    """Run the search, print its summary, export its ``--top-k`` best trials (unless ``--no-export``)."""
    result = run_search(settings)
    print(describe(result))
    os.environ.pop("MLFLOW_RUN_ID", None)  # under `mlflow run` the search used that run; later stages get their own
    if result.best_run_id and not args.no_export:
        for rank, run_id in enumerate(result.ranked_run_ids[:args.top_k]):  # rank 0, the best, is the champion
            print(export_model(run_id, result.experiment, int8_data=str(settings.data) if rank == 0 else "",
                               champion=rank == 0))
    return result


def main(argv: Sequence[str] | None = None) -> int:
    """Run the search, export its best model and print where to look."""
    args, settings = parse(argv)
    if settings.data == DEFAULT_DATA:
        ensure_default_data(DEFAULT_DATA)
    result = search_and_export(args, settings)
    print(f"compare the runs: mlflow ui --backend-store-uri {tracking_uri()}")
    return 0 if result.best_run_id else 1


if __name__ == "__main__":
    sys.exit(run(main))
