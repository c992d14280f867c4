"""The services a team shares: a local PostgreSQL cluster and an MLflow tracking server.

:class:`LocalPostgres` initialises and starts a throw-away or persistent PostgreSQL cluster with
Debian's ``initdb``/``pg_ctl`` (package ``postgresql``), listening on 127.0.0.1 only, with
``trust`` authentication for local connections (bind it elsewhere only behind a password, see the
README). PostgreSQL refuses to run as root, so as root the cluster runs as the ``postgres`` user
that the Debian package creates. :class:`TrackingServer` runs ``mlflow server`` on a backend
store with proxied artifacts (``--artifacts-destination``), so workers on other hosts need only its
URL. Both are context managers that stop what they started, also on errors.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from tracking.errors import TrackingError

START_TIMEOUT = 60.0
"""Seconds a service may take to accept connections before it counts as failed."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on now (the OS picks it)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def postgres_binary(name: str) -> str:
    """Path of a PostgreSQL server program (``initdb``, ``pg_ctl``), or a :class:`TrackingError`.

    Debian keeps them in ``/usr/lib/postgresql/<version>/bin``, off the PATH; the newest wins.
    """
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"),
                        key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit() else 0)
    if candidates:
        return candidates[-1]
    raise TrackingError(f"PostgreSQL's {name} is not installed: apt-get install postgresql (Debian), "
                        "or give the URL of an existing PostgreSQL server")


def _as_owner(command: list[str]) -> list[str]:
    """Run ``command`` as ``postgres`` when we are root (PostgreSQL refuses root)."""
    if os.geteuid() != 0:
        return command
    if shutil.which("runuser") is None:
        raise TrackingError("running PostgreSQL as root needs runuser (util-linux) to switch to the postgres user")
    return ["runuser", "-u", "postgres", "--", *command]


def _wait(check, what: str, timeout: float, process: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if check():
            return
        if process is not None and process.poll() is not None:
            raise TrackingError(f"{what} exited with code {process.returncode} while starting")
        if time.monotonic() > deadline:
            raise TrackingError(f"{what} did not answer within {timeout:.0f} s")
        time.sleep(0.25)


class _Service:
    """A started thing that stops on leaving its ``with`` block, and also when it fails to start."""

    def start(self):  # pragma: no cover - every service defines it
        raise NotImplementedError

    def stop(self) -> None:  # pragma: no cover - every service defines it
        raise NotImplementedError

    def __enter__(self):
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc) -> None:
        self.stop()


class LocalPostgres(_Service):
    """A PostgreSQL cluster in ``folder`` (created with ``initdb`` when empty) on 127.0.0.1.

    Args:
        folder: the cluster's data folder; None makes a temporary one, removed on :meth:`stop`.
        port: TCP port; None picks a free one.
        databases: databases created (if missing). MLflow and Optuna each need their own: both keep
            their schema version in an ``alembic_version`` table and refuse the other's.
        host: the address to listen on (127.0.0.1 unless the cluster is to be reached from other hosts).

    Use as ``with LocalPostgres() as pg: pg.url("optuna")``.
    """

    def __init__(self, folder: str | Path | None = None, port: int | None = None,
                 databases: tuple[str, ...] = ("mlflow", "optuna"), host: str = "127.0.0.1"):
        self.temporary = folder is None
        self.folder = Path(folder) if folder is not None else Path(tempfile.mkdtemp(prefix="strokelens-pg-"))
        self.port = port or free_port()
        self.databases, self.host = tuple(databases), host
        self.started = False

    def url(self, database: str) -> str:
        """SQLAlchemy URL of one database (``postgresql://postgres@host:port/<database>``)."""
        return f"postgresql://postgres@{self.host}:{self.port}/{database}"

    def _prepare_folder(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            shutil.chown(self.folder, "postgres", "postgres")
            self.folder.chmod(0o700)

    def start(self) -> LocalPostgres:
        """Initialise the cluster if needed, start it and create the databases."""
        self._prepare_folder()
        data = self.folder / "data"
        if not (data / "PG_VERSION").is_file():
            done = subprocess.run(_as_owner([postgres_binary("initdb"), "-D", str(data), "-U", "postgres",
                                             "--auth=trust", "-E", "UTF8", "--no-instructions"]),
                                  capture_output=True, text=True)
            if done.returncode != 0:
                hint = ("; as root the cluster runs as the postgres user, which must be able to enter every "
                        "parent folder: choose a --folder under a world-readable path"
                        if "Permission denied" in done.stderr else "")
                raise TrackingError(f"initdb failed in '{data}': {' '.join(done.stderr.strip().splitlines()[-1:])}"
                                    f"{hint}")
        options = f"-p {self.port} -c listen_addresses={self.host} -k {self.folder}"
        done = subprocess.run(_as_owner([postgres_binary("pg_ctl"), "-D", str(data), "-o", options, "-l",
                                         str(self.folder / "postgres.log"), "-w", "-t", str(int(START_TIMEOUT)),
                                         "start"]), capture_output=True, text=True)
        if done.returncode != 0:
            raise TrackingError(f"PostgreSQL did not start (see {self.folder / 'postgres.log'}): "
                                f"{(done.stderr or done.stdout).strip().splitlines()[-1:]}")
        self.started = True
        self._create_databases()
        return self

    def _create_databases(self) -> None:
        import sqlalchemy

        engine = sqlalchemy.create_engine(self.url("postgres"), isolation_level="AUTOCOMMIT")
        try:
            with engine.connect() as connection:
                for database in self.databases:
                    exists = connection.execute(sqlalchemy.text("SELECT 1 FROM pg_database WHERE datname = :d"),
                                                {"d": database}).first()
                    if not exists:
                        connection.execute(sqlalchemy.text(f'CREATE DATABASE "{database}"'))
        finally:
            engine.dispose()

    def stop(self) -> None:
        """Stop the cluster (fast shutdown); a temporary one is removed."""
        if self.started:
            subprocess.run(_as_owner([postgres_binary("pg_ctl"), "-D", str(self.folder / "data"), "-m", "fast",
                                      "-w", "stop"]), capture_output=True, text=True)
            self.started = False
        if self.temporary:
            shutil.rmtree(self.folder, ignore_errors=True)



class TrackingServer(_Service):
    """``mlflow server`` on ``backend`` with proxied artifacts in ``artifacts``.

    Args:
        backend: the backend store URI (``postgresql://…`` for a team, ``sqlite:///…`` for one host).
        artifacts: the folder the server stores artifacts in; clients upload and download through
            the server (``mlflow-artifacts:/``), so they need no shared disk.
        host: where to listen (127.0.0.1 unless told otherwise; expose it only behind authentication).
        port: None picks a free port.
        workers: uvicorn workers of the server.
        app_name: an MLflow server app, e.g. ``basic-auth`` for MLflow's username/password app.
    """

    def __init__(self, backend: str, artifacts: str | Path, host: str = "127.0.0.1", port: int | None = None,
                 workers: int = 1, app_name: str = ""):
        self.backend, self.artifacts = backend, Path(artifacts)
        self.host, self.port, self.workers = host, port or free_port(host), workers
        self.app_name = app_name
        self.process: subprocess.Popen | None = None
        self.log = self.artifacts.parent / f"mlflow-server-{self.port}.log"

    @property
    def url(self) -> str:
        """What workers put in ``MLFLOW_TRACKING_URI``."""
        return f"http://{self.host}:{self.port}"

    def _alive(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/health", timeout=2) as response:
                return response.status == 200
        except OSError:
            return False

    def start(self, timeout: float = START_TIMEOUT) -> TrackingServer:
        """Start the server and wait until ``/health`` answers."""
        self.artifacts.mkdir(parents=True, exist_ok=True)
        mlflow = Path(sys.executable).with_name("mlflow")
        command = [str(mlflow) if mlflow.exists() else "mlflow", "server", "--backend-store-uri", self.backend,
                   "--artifacts-destination", str(self.artifacts.resolve()), "--serve-artifacts",
                   "--host", self.host, "--port", str(self.port), "--workers", str(self.workers),
                   *(["--app-name", self.app_name] if self.app_name else [])]
        env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env,
                                            start_new_session=True)
        try:
            _wait(self._alive, f"the MLflow server on {self.url}", timeout, self.process)
        except TrackingError as exc:
            last = self.log.read_text(errors="replace").strip().splitlines()[-1:] if self.log.is_file() else []
            raise TrackingError(f"{exc} (log {self.log}: {' '.join(last)})") from exc
        return self

    def stop(self) -> None:
        """Stop the server and every worker process it started."""
        if self.process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, 15)
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, 9)
            self.process.wait(timeout=10)
        self.process = None

