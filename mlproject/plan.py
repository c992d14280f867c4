"""``python -m mlproject.plan --data DIR``: a data set's fingerprint and its plan for native preprocessing.

Writes ``plan.json`` (target spacing, patch and batch size, normalisation, resampling orders and the
fingerprint they come from) and prints a short summary; ``mlproject.train --preprocessing native
--plan plan.json`` trains with it.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from benchmark.data.planning import PLAN_FILE
from benchmark.stages.plan import plan_data
from mlproject._cli import ArgumentParser, run


def main(argv: Sequence[str] | None = None) -> int:
    """Write the plan and print its summary."""
    parser = ArgumentParser(prog="python -m mlproject.plan", description=__doc__)
    parser.add_argument("--data", default="", help="ISLES 2017 or nnU-Net raw folder (empty: the synthetic default)")
    parser.add_argument("--out", default=PLAN_FILE, help="the plan file to write")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"),
                        help="the memory budget: cpu (min(1/4 RAM, 2 GiB)) or cuda (80%% of the GPU's memory)")
    parser.add_argument("--architecture", default="unet3d", help="the network the memory rule is computed for")
    parser.add_argument("--width", type=float, default=None,
                        help="its width (default: 0.25 on cpu, 1.0 on cuda: the widest the profile searches)")
    parser.add_argument("--normalization", default="robust", help="robust (z-score inside the brain) or minmax")
    parser.add_argument("--overlap", type=float, default=0.5, help="least overlap of sliding windows")
    args = parser.parse_args(argv)
    width = args.width if args.width is not None else (1.0 if args.device == "cuda" else 0.25)
    result = plan_data(args.data, args.out, args.device, args.architecture, width, args.normalization, args.overlap)
    print("\n".join(result.lines()))
    return 0


if __name__ == "__main__":
    sys.exit(run(main))
