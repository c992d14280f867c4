"""What every entry point shares: one-line errors instead of tracebacks, list and case flags, the search's flags."""

from __future__ import annotations

import argparse
import signal
import sys
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from benchmark.errors import USER_ERRORS, DataWarning, StrokelensError


class Terminated(KeyboardInterrupt):
    """SIGTERM (``kill``, ``docker stop``, Kubernetes, Slurm), raised like Ctrl-C so every stage cleans up alike."""


def _terminate(signum, frame):
    raise Terminated()

if TYPE_CHECKING:
    from benchmark.training.search import SearchSettings


def run(main: Callable[[Sequence[str] | None], int | None], argv: Sequence[str] | None = None) -> int:
    """Call ``main(argv)``; a user error (:data:`benchmark.errors.USER_ERRORS`) becomes one stderr line and exit 2.

    Ctrl-C exits with 130 and SIGTERM with 143 (128 + the signal), each after one line: both
    unwind the stages as an exception, so MLflow runs end FAILED, Optuna trials FAIL and nothing is
    left half-written. Data warnings (:class:`benchmark.errors.DataWarning`) print as one line each.
    """
    prog = Path(sys.argv[0]).stem if sys.argv and sys.argv[0] else "strokelens"
    shown = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, DataWarning):
            print(f"strokelens {prog}: warning: {' '.join(str(message).split())}", file=sys.stderr)
        else:
            shown(message, category, filename, lineno, file, line)

    warnings.showwarning = show
    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        return int(main(argv) or 0)
    except USER_ERRORS as exc:
        print(f"strokelens {prog}: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    except Terminated:
        print(f"strokelens {prog}: terminated (SIGTERM); run the same command again to resume", file=sys.stderr)
        return 143
    except KeyboardInterrupt:
        print(f"strokelens {prog}: interrupted", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)
        warnings.showwarning = shown


class ArgumentParser(argparse.ArgumentParser):
    """argparse with a one-line error (``strokelens <command>: error: …``) and exit code 2."""

    def error(self, message: str):  # noqa: D102 - argparse's hook
        print(f"strokelens {Path(self.prog.split()[-1]).name.rsplit('.', 1)[-1]}: error: {message}",
              file=sys.stderr)
        raise SystemExit(2)


def shape_list(text: str) -> list[tuple[int, int, int]]:
    """Argparse type: ``'192x192x19,128x128x25'`` → [(192, 192, 19), (128, 128, 25)]."""
    from benchmark.data.synthetic import parse_shape

    try:
        return [parse_shape(part) for part in text.split(",") if part.strip()]
    except StrokelensError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def split_list(text: str) -> list[str]:
    """``'a, b,c'`` → ``['a', 'b', 'c']``; empty text → []."""
    return [part.strip() for part in text.split(",") if part.strip()]


def method_list(text: str) -> list[str] | None:
    """``'all'`` or empty → None (every method), else the comma list."""
    return None if text.strip() in ("", "all") else split_list(text)


def case_spec(text: str) -> int | list[str]:
    """``'2'`` → 2 (how many validation cases), ``'training_1,training_4'`` → those case ids."""
    return int(text) if text.strip().isdigit() else split_list(text)


def add_experiment_argument(parser: argparse.ArgumentParser) -> None:
    """``--experiment``: empty means the project run's experiment under ``mlflow run``, else the study's profile's."""
    parser.add_argument("--experiment", default="", type=experiment_name,
                        help="the study's MLflow experiment; evaluations, explanations and reports go to "
                        "<experiment>-evaluation, -explanations and -report (default: the project run's under "
                        "mlflow run, else the profile's: strokelens, strokelens-smoke for the smoke study)")


def experiment_name(text: str) -> str:
    """Argparse type: an experiment name by :func:`benchmark.paths.check_name`'s rule (empty: the default)."""
    from benchmark.paths import check_name

    try:
        return check_name(text, "experiment") if text else text
    except StrokelensError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def auto_int(text: str) -> int | None:
    """Argparse type: ``auto`` → None (the profile decides), else an integer."""
    if text.strip().lower() in ("auto", ""):
        return None
    try:
        return int(float(text))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"'{text}' is neither an integer nor auto") from exc


def add_search_arguments(parser: argparse.ArgumentParser, data: bool = True, seed: bool = True) -> None:
    """The search's flags (one per MLproject parameter of ``train``); ``auto`` means the profile's value."""
    from benchmark.data.defaults import DEFAULT_DATA
    from benchmark.data.splits import DEFAULT_SPLIT_SEED, DEFAULT_VAL_FRACTION
    from benchmark.training.profiles import PROFILES
    from benchmark.training.search import DEFAULT_CHECKPOINTS
    from models.registry import available

    if data:
        parser.add_argument("--data", default="", help=f"data folder; empty: the synthetic default ({DEFAULT_DATA})")
    parser.add_argument("--trials", type=auto_int, default=None,
                        help="trials to add to the study (default auto: the profile's)")
    parser.add_argument("--epochs", type=auto_int, default=None,
                        help="maximum epochs per trial (default auto: the profile's)")
    parser.add_argument("--study", default="", help="Optuna study name; the same name resumes (default: the "
                        "profile's: strokelens, smoke for --profile smoke)")
    parser.add_argument("--storage", default="sqlite:///optuna.db", help="Optuna storage URL")
    add_experiment_argument(parser)
    if seed:
        parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--profile", default="default", help=f"one of {', '.join(PROFILES)}")
    parser.add_argument("--architectures", default="",
                        help=f"comma list to search (default: the profile's; known: {', '.join(available())})")
    parser.add_argument("--widths", default="", help="comma list of width multipliers (default: the profile's)")
    parser.add_argument("--loss", default="auto", help="training loss: dice, dice_ce or ce (the study's "
                        "cross-entropy); auto: the profile's (paper: ce)")
    parser.add_argument("--augmentation", default="auto", help="flips, study (rotation, translation and "
                        "intensity crop as the study's code) or both; auto: the profile's (paper: study)")
    parser.add_argument("--time-budget", type=float, default=-1,
                        help="seconds after which no new trial or epoch starts (-1: profile's, 0: none)")
    parser.add_argument("--val-fraction", type=float, default=DEFAULT_VAL_FRACTION,
                        help="fraction of the labelled cases held out for validation when a new study is split "
                        "(a study keeps its split.json)")
    parser.add_argument("--split-seed", type=int, default=DEFAULT_SPLIT_SEED,
                        help="random seed of a new study's split (independent of --seed)")
    parser.add_argument("--folds", type=auto_int, default=None,
                        help="K cross-validation folds saved in a new study's split.json; after the search each "
                        "architecture's best trial is trained on the other folds (default auto: the profile's)")
    parser.add_argument("--repeats", type=auto_int, default=None,
                        help="R trainings of each fold with seeds derived from --seed (default auto: the profile's)")
    parser.add_argument("--preprocessing", default="auto", help="seed (whole volumes at the study's 48x48x19 grid) "
                        "or native (the data set's plan: target spacing, patches, sliding windows); auto: the "
                        "profile's (gpu: native)")
    parser.add_argument("--plan", default="", help="native: the plan.json to use (python -m mlproject.plan); "
                        "empty: the study's saved plan, else one made from the data")
    parser.add_argument("--no-export", action="store_true", help="skip the ONNX export of the best trials")
    parser.add_argument("--top-k", type=int, default=1, help="export the k best trials of the study (the best "
                        "becomes the champion)")
    parser.add_argument("--checkpoints", default=str(DEFAULT_CHECKPOINTS),
                        help="folder for per-epoch checkpoints and each study's split.json")


def search_settings(args: argparse.Namespace) -> SearchSettings:
    """Validated :class:`~benchmark.training.search.SearchSettings` from the flags, before any run."""
    from benchmark.data.defaults import DEFAULT_DATA
    from benchmark.training.loop import resolve_device
    from benchmark.training.profiles import resolve_profile, restrict, with_preprocessing, with_training
    from benchmark.training.search import SearchSettings

    profile = restrict(resolve_profile(args.profile, resolve_device(args.device)),
                       split_list(args.architectures), split_list(args.widths))
    profile = with_preprocessing(profile, args.preprocessing)
    profile = with_training(profile, args.loss.strip(), args.augmentation.strip())
    return SearchSettings(data=Path(args.data) if args.data else DEFAULT_DATA,
                          trials=profile.trials if args.trials is None else args.trials,
                          epochs=profile.epochs if args.epochs is None else args.epochs,
                          study=args.study or profile.study, storage=args.storage, experiment=args.experiment,
                          seed=args.seed,
                          device=args.device, profile=profile, checkpoints=Path(args.checkpoints),
                          time_budget=profile.time_budget if args.time_budget < 0 else (args.time_budget or None),
                          val_fraction=args.val_fraction, split_seed=args.split_seed,
                          folds=profile.folds if args.folds is None else args.folds,
                          repeats=profile.repeats if args.repeats is None else args.repeats,
                          preprocessing=profile.preprocessing, plan=Path(args.plan) if args.plan.strip() else None)
