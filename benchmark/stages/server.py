"""The team server stage: PostgreSQL-backed MLflow tracking and Optuna storage on one host.

``serve_team`` starts (or reuses) PostgreSQL — an existing server given by URL, or a local cluster
initialised in ``data`` with Debian's ``initdb``/``pg_ctl`` — and ``mlflow server`` on it with
proxied artifacts (workers upload and download through HTTP, no shared disk), then blocks until
SIGINT/SIGTERM and stops what it started. MLflow and Optuna live in two databases of the
cluster (``mlflow``, ``optuna``): both version their schema in an ``alembic_version`` table.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from benchmark.errors import ParameterError
from tracking.services import LocalPostgres, TrackingServer

DEFAULT_FOLDER = Path(".strokelens-server")
"""Where a local cluster and the artifacts live unless told otherwise (relative to the working folder)."""


@dataclass(frozen=True)
class TeamServer:
    """The two addresses every worker needs, and where the server keeps its files."""

    tracking_uri: str
    optuna_storage: str
    artifacts: Path
    postgres_folder: Path | None

    def lines(self) -> list[str]:
        """What a worker types, one line each."""
        return [f"export MLFLOW_TRACKING_URI={self.tracking_uri}",
                f"python -m mlproject.train --storage {self.optuna_storage} --study <name>"]


@contextlib.contextmanager
def team_server(folder: Path = DEFAULT_FOLDER, mlflow_db: str = "", optuna_db: str = "", host: str = "127.0.0.1",
                port: int = 5000, postgres_port: int | None = None, basic_auth: bool = False) -> Iterator[TeamServer]:
    """Start the services for the block; everything started is stopped on exit, errors included.

    Args:
        folder: holds ``postgres/`` (a local cluster, kept between starts) and ``artifacts/``.
        mlflow_db: URL of MLflow's database on an existing PostgreSQL server; empty (with
            ``optuna_db`` empty) starts a local cluster instead. Give both or neither.
        optuna_db: URL of Optuna's database on the same server.
        host: where the MLflow server listens (127.0.0.1 unless the team reaches it from other hosts;
            then use ``basic_auth`` or a reverse proxy with authentication).
        port: the MLflow server's port.
        postgres_port: the local cluster's port (None: a free one).
        basic_auth: run MLflow's basic-auth app (``--app-name basic-auth``; users and passwords in
            ``basic_auth.ini``, see MLflow's documentation).
    """
    if bool(mlflow_db) != bool(optuna_db):
        raise ParameterError("give both --mlflow-db and --optuna-db (two databases of an existing PostgreSQL "
                             "server), or neither to start a local cluster")
    for url in (mlflow_db, optuna_db):
        if url and not url.startswith("postgresql"):
            raise ParameterError(f"'{url}' is not a PostgreSQL URL: use postgresql://user:password@host:5432/db")
    folder = Path(folder)
    with contextlib.ExitStack() as stack:
        local = None
        if not mlflow_db:
            local = stack.enter_context(LocalPostgres(folder / "postgres", port=postgres_port, host="127.0.0.1"))
            mlflow_db, optuna_db = local.url("mlflow"), local.url("optuna")
        server = stack.enter_context(TrackingServer(mlflow_db, folder / "artifacts", host=host, port=port,
                                                    app_name="basic-auth" if basic_auth else ""))
        yield TeamServer(server.url, optuna_db, folder / "artifacts", None if local is None else local.folder)


def serve_team(say: Callable[[str], None] = print, **settings) -> TeamServer:
    """Start the team server (see :func:`team_server`), print what workers need, wait for SIGINT/SIGTERM."""
    stop = threading.Event()
    previous = {s: signal.signal(s, lambda *_: stop.set()) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        with team_server(**settings) as team:
            for line in team.lines():
                say(line)
            say("serving until Ctrl-C or SIGTERM")
            stop.wait()
        return team
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
