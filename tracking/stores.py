"""Opening a store so that a stop at any moment never leaves it broken, and never waits forever.

* A new SQLite database (MLflow's or Optuna's) is created under a temporary name beside its
  target and renamed into place once its schema is complete: a SIGKILL during the first
  migration leaves only a temporary file, removed at the next start (an interrupted migration in
  place leaves MLflow's ``_alembic_tmp_*`` tables, after which the store no longer opens).
* An existing SQLite store left with such ``_alembic_tmp_*`` tables by an interrupted upgrade is
  repaired: the temporary copy is dropped when its table still exists (the upgrade then reruns).
* An HTTP tracking server is asked for ``/health`` with a timeout of :data:`REACH_TIMEOUT_S`
  seconds before anything else, so an unreachable server is one clear line, not minutes of retries.
"""

from __future__ import annotations

import os
import sqlite3
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path

from tracking.errors import TrackingError
from tracking.locks import sqlite_lock

REACH_TIMEOUT_S = 10.0
"""Seconds a tracking server may take to answer before it counts as unreachable."""


def sqlite_path(url: str) -> Path | None:
    """The database file of a ``sqlite:///`` URL, else None."""
    return Path(url[len("sqlite:///"):]) if url.startswith("sqlite:///") else None


def _repair(path: Path) -> None:
    """Drop ``_alembic_tmp_<t>`` tables whose table ``<t>`` still exists (an upgrade interrupted mid-copy)."""
    with sqlite3.connect(path) as connection:
        tables = {row[0] for row in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        for table in sorted(t for t in tables if t.startswith("_alembic_tmp_")):
            if table[len("_alembic_tmp_"):] in tables:
                connection.execute(f'DROP TABLE "{table}"')
            else:  # the original was dropped before the rename: finish the rename
                connection.execute(f'ALTER TABLE "{table}" RENAME TO "{table[len("_alembic_tmp_"):]}"')


def prepare_sqlite(url: str, create: Callable[[str], object]) -> None:
    """Make sure the SQLite store at ``url`` exists complete; ``create(url)`` builds a schema.

    A missing database is built by ``create`` under a temporary name and renamed into place; an
    existing one is repaired (see the module docstring). Other URLs are left alone.
    """
    path = sqlite_path(url)
    if path is None:
        return
    with sqlite_lock(url):
        for stale in path.parent.glob(f".{path.name}.*.building"):
            stale.unlink(missing_ok=True)  # a creation that was killed
        if path.exists():
            _repair(path)
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        building = path.with_name(f".{path.name}.{uuid.uuid4().hex}.building")  # MLflow caches stores by URI
        try:
            create(f"sqlite:///{building}")
            os.replace(building, path)
        finally:
            building.unlink(missing_ok=True)


def check_reachable(url: str, timeout: float = REACH_TIMEOUT_S) -> None:
    """For an ``http(s)://`` tracking URI: its ``/health`` must answer within ``timeout`` seconds.

    Raises:
        TrackingError: naming the server, the wait and the fix.
    """
    if not url.startswith(("http://", "https://")):
        return
    try:
        with urllib.request.urlopen(f"{url.rstrip('/')}/health", timeout=timeout):
            return
    except urllib.error.HTTPError as exc:  # it answered: an auth wall (401) is reachable, a 5xx is not
        if exc.code < 500:
            return
        cause = f"HTTP {exc.code}"
    except OSError as exc:
        cause = str(getattr(exc, "reason", exc))
    raise TrackingError(f"the MLflow tracking server {url} did not answer within {timeout:.0f} s ({cause}): start it "
                        "(make server) or set MLFLOW_TRACKING_URI to a reachable store")
