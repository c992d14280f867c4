"""``python -m benchmark.perf <what> --json OUT``: performance benchmarks that print JSON.

Speed targets are checked here, never in timed tests: medians over repeats, device named.
``synth``: seconds to generate one synthetic case (maps, label, evidence) at a grid, on one core.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from benchmark.errors import atomic_file


def device_info() -> dict:
    """The machine a benchmark ran on."""
    import torch

    info = {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "device": "cpu"}
    if torch.cuda.is_available():
        info["device"] = torch.cuda.get_device_name(0)
    return info


def bench_synth(shape=(192, 192, 19), repeats: int = 5) -> dict:
    """Median seconds to generate one case (in memory) and to write it as NIfTI."""
    import tempfile

    from benchmark.synthetic import generate_case, write_dataset

    generate = []
    for i in range(repeats):
        start = time.perf_counter()
        generate_case(0, i + 1, shape)
        generate.append(time.perf_counter() - start)
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        write_dataset(Path(tmp) / "d", repeats, shapes=[shape], test_cases=0, progress=False)
        written = (time.perf_counter() - start) / repeats
    return {"benchmark": "synth", "grid_xyz": list(shape), "repeats": repeats,
            "generate_s_median": statistics.median(generate), "generate_and_write_s_mean": written,
            "target_s": 1.0, "meets_target": written < 1.0}


def main(argv: Sequence[str] | None = None) -> int:
    """Run one benchmark and write/print its JSON."""
    parser = argparse.ArgumentParser(prog="python -m benchmark.perf", description=__doc__)
    parser.add_argument("what", choices=["synth"])
    parser.add_argument("--json", default="", help="write the result here too")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    result = {**bench_synth(repeats=args.repeats), "device_info": device_info()}
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        with atomic_file(args.json) as tmp:
            tmp.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
