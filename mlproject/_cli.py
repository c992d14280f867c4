"""What every entry point shares: one-line errors and a non-zero exit instead of tracebacks."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from benchmark.errors import USER_ERRORS, StrokelensError


def run(main: Callable[[Sequence[str] | None], int | None], argv: Sequence[str] | None = None) -> int:
    """Call ``main(argv)``; a user error (:data:`benchmark.errors.USER_ERRORS`) becomes one stderr line and exit code 2.

    Ctrl-C exits with 130 after one line; the stages themselves leave nothing half-written.
    """
    prog = Path(sys.argv[0]).stem if sys.argv and sys.argv[0] else "strokelens"
    try:
        return int(main(argv) or 0)
    except USER_ERRORS as exc:
        print(f"strokelens {prog}: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"strokelens {prog}: interrupted", file=sys.stderr)
        return 130


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
