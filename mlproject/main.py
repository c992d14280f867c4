"""``mlflow run .`` / ``python -m mlproject.main``: the whole pipeline on one data folder.

Today: the synthetic default is generated when no ``--data`` is given, then summarised.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from benchmark.defaults import DEFAULT_CASES, DEFAULT_DATA, DEFAULT_SEED, ensure_default_data
from benchmark.summary import summarize_dataset
from mlproject._cli import ArgumentParser, run


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line arguments of the pipeline."""
    parser = ArgumentParser(prog="python -m mlproject.main", description=__doc__)
    parser.add_argument("--data", default="", help="data folder; empty: the synthetic default "
                        f"in {DEFAULT_DATA}, generated once")
    parser.add_argument("--cases", type=int, default=DEFAULT_CASES,
                        help="training cases of the synthetic default when it is generated")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help="seed of the synthetic default")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the pipeline."""
    args = parse_args(argv)
    data = args.data
    if not data:
        path, made = ensure_default_data(DEFAULT_DATA, args.cases, args.seed)
        print(f"{'generated' if made else 'reusing'} synthetic data in {path}")
        data = str(path)
    table, lines = summarize_dataset(data)
    print(table.to_string(index=False))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(run(main))
