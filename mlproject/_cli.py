"""What every entry point shares: one-line errors and a non-zero exit instead of tracebacks."""

from __future__ import annotations

import argparse
import signal
import sys
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

from benchmark.errors import USER_ERRORS, DataWarning, StrokelensError


class Terminated(KeyboardInterrupt):
    """SIGTERM (``kill``, ``docker stop``, Kubernetes, Slurm), raised like Ctrl-C so every stage cleans up alike."""


def _terminate(signum, frame):
    raise Terminated()


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


def add_experiment_argument(parser: argparse.ArgumentParser) -> None:
    """``--experiment``: empty means the project run's experiment under ``mlflow run``, else ``strokelens``."""
    parser.add_argument("--experiment", default="", help="MLflow experiment (default: the project run's "
                        "under mlflow run, else strokelens)")


def experiment_of(args: argparse.Namespace) -> str:
    """The experiment ``--experiment`` names, resolved (see :func:`add_experiment_argument`)."""
    from tracking.runs import default_experiment

    return args.experiment or default_experiment()
