"""``mlflow run . -e train`` / ``python -m mlproject.train``: an Optuna search tracked in MLflow, then the export.

The study's best trials are exported to ONNX (the best becomes the registry's champion when it beats
the current one on the same split, or with ``--promote``); the
search saves the study's train/validation split (``checkpoints/<study>/split.json`` and MLflow).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from benchmark.stages.train import search_and_export
from mlproject._cli import ArgumentParser, add_search_arguments, run, search_settings
from mlproject.export import _flag
from tracking.runs import tracking_uri


def main(argv: Sequence[str] | None = None) -> int:
    """Run the search, export its best trials and print where to look."""
    parser = ArgumentParser(prog="python -m mlproject.train", description=__doc__)
    add_search_arguments(parser)
    parser.add_argument("--promote", default=False, type=_flag, nargs="?", const=True,
                        help="make the best trial the champion even when it does not beat the current one")
    parser.add_argument("--workers", type=int, default=1,
                        help="search processes on the study, one per GPU or sharing the CPU cores (each runs "
                        "--trials trials); the export follows once all have ended")
    args = parser.parse_args(argv)
    result = search_and_export(search_settings(args), top_k=args.top_k, export=not args.no_export, say=print,
                               promote=args.promote, workers=args.workers)
    print(f"compare the runs: mlflow ui --backend-store-uri {tracking_uri()}")
    return 0 if result.search.best_run_id and not result.failed_workers else 1


if __name__ == "__main__":
    sys.exit(run(main))
