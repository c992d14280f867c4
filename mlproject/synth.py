"""``python -m mlproject.synth``: write a synthetic ISLES-2017-like data set."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from benchmark.data.synthetic import LAYOUTS, write_dataset
from mlproject._cli import ArgumentParser, run, shape_list


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line arguments (each maps to one ``write_dataset`` argument)."""
    parser = ArgumentParser(prog="python -m mlproject.synth", description=__doc__)
    parser.add_argument("--out", required=True, help="folder to create")
    parser.add_argument("--cases", type=int, default=16, help="training cases with ground truth")
    parser.add_argument("--test-cases", type=int, default=None,
                        help="cases without ground truth (default cases // 4, at least 1)")
    parser.add_argument("--seed", type=int, default=0, help="same seed, byte-identical files")
    parser.add_argument("--shape", type=shape_list, default=[(192, 192, 19)],
                        help="grid X x Y x Z, or a comma list cycled over cases (default 192x192x19)")
    parser.add_argument("--layout", choices=LAYOUTS, default="isles2017")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Write the data set and print where it is."""
    args = parse_args(argv)
    out = write_dataset(args.out, args.cases, seed=args.seed, shapes=args.shape, layout=args.layout,
                        test_cases=args.test_cases, overwrite=args.overwrite)
    print(f"wrote {args.cases} training cases ({args.layout} layout) to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(run(main))
