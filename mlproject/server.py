"""``make server`` / ``python -m mlproject.server``: a team's tracking server and Optuna storage on PostgreSQL.

Starts a local PostgreSQL cluster (or uses an existing server's databases) and ``mlflow server``
with proxied artifacts, prints the two settings every worker needs, and serves until Ctrl-C.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

from benchmark.stages.server import DEFAULT_FOLDER, serve_team
from mlproject._cli import ArgumentParser, run


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the flags and serve."""
    parser = ArgumentParser(prog="python -m mlproject.server", description=__doc__)
    parser.add_argument("--folder", default=str(DEFAULT_FOLDER), help="local cluster (postgres/) and artifacts/")
    parser.add_argument("--mlflow-db", default="", help="postgresql://… database for MLflow on an existing server")
    parser.add_argument("--optuna-db", default="", help="postgresql://… database for Optuna on an existing server")
    parser.add_argument("--host", default="127.0.0.1", help="where the MLflow server listens (expose it only "
                        "behind authentication: --basic-auth or a reverse proxy)")
    parser.add_argument("--port", type=int, default=5000, help="the MLflow server's port")
    parser.add_argument("--postgres-port", type=int, default=None, help="the local cluster's port (default: free)")
    parser.add_argument("--basic-auth", action="store_true", help="MLflow's basic-auth app (--app-name basic-auth)")
    args = parser.parse_args(argv)
    serve_team(folder=Path(args.folder), mlflow_db=args.mlflow_db, optuna_db=args.optuna_db, host=args.host,
               port=args.port, postgres_port=args.postgres_port, basic_auth=args.basic_auth)
    return 0


if __name__ == "__main__":
    sys.exit(run(main))
