"""``make serve`` / ``python -m mlproject.serve``: the registered segmenter behind an HTTP endpoint.

Serves ``models:/strokelens-segmenter@champion`` (or ``--model``) with MLflow's scoring app under
uvicorn from this interpreter (no virtual-environment activation needed), on 127.0.0.1 by default,
with a request-size limit, short error messages and bounded concurrency (:mod:`tracking.serving`).
``POST /invocations`` takes one case at its native grid (:mod:`benchmark.serving`, README "Serving").
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from mlproject._cli import ArgumentParser, run
from tracking import model_registry
from tracking.serving import DEFAULT_CONCURRENCY, DEFAULT_MAX_MB, DEFAULT_TIMEOUT_S, serve

DEFAULT_MODEL = f"models:/{model_registry.REGISTERED_MODEL}@{model_registry.CHAMPION_ALIAS}"


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the flags and serve until Ctrl-C or SIGTERM."""
    parser = ArgumentParser(prog="python -m mlproject.serve", description=__doc__)
    parser.add_argument("-m", "--model", default=DEFAULT_MODEL, help="models:/…, runs:/… or a local MLflow model "
                        f"folder (default {DEFAULT_MODEL})")
    parser.add_argument("--host", default="127.0.0.1", help="where to listen (the server has no authentication: "
                        "expose it only behind a reverse proxy that has)")
    parser.add_argument("-p", "--port", type=int, default=5000, help="the port (default 5000)")
    parser.add_argument("--max-request-mb", type=float, default=DEFAULT_MAX_MB,
                        help=f"largest request body in MiB; larger ones get 413 (default {DEFAULT_MAX_MB})")
    parser.add_argument("--concurrency", type=int, default=DEFAULT_CONCURRENCY,
                        help=f"requests computed at once, the others wait (default {DEFAULT_CONCURRENCY})")
    parser.add_argument("--timeout", type=int, default=DEFAULT_TIMEOUT_S,
                        help=f"seconds before an unanswered request gets 504 (default {DEFAULT_TIMEOUT_S})")
    args = parser.parse_args(argv)
    if not args.max_request_mb > 0 or args.concurrency < 1 or args.timeout < 1:
        parser.error("--max-request-mb must be positive, --concurrency and --timeout at least 1")
    serve(args.model, args.host, args.port, int(args.max_request_mb * 2**20), args.concurrency, args.timeout,
          on_ready=lambda url: print(f"serving {args.model} at {url} (requests up to {args.max_request_mb:g} MiB; "
                                     "Ctrl-C stops)", flush=True))
    return 0


if __name__ == "__main__":
    sys.exit(run(main))
