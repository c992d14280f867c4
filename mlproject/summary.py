"""``python -m mlproject.summary --data DIR``: describe a data set (either layout)."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from benchmark.evaluation.dataset_summary import summarize_dataset
from mlproject._cli import ArgumentParser, run


def main(argv: Sequence[str] | None = None) -> int:
    """Print the per-case table and the summary lines."""
    parser = ArgumentParser(prog="python -m mlproject.summary", description=__doc__)
    parser.add_argument("--data", required=True, help="ISLES 2017 or nnU-Net raw folder")
    parser.add_argument("--no-rules", action="store_true", help="skip the threshold rules")
    args = parser.parse_args(argv)
    table, lines = summarize_dataset(args.data, with_rules=not args.no_rules)
    print(table.to_string(index=False))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(run(main))
