"""A file lock for SQLite databases that several worker processes open at once.

Creating a database's tables is not safe to do concurrently (MLflow's and Optuna's first
migrations both fail with integrity errors), so whoever creates or opens a store takes
``<db>.lock`` first (``filelock``, which also works where ``fcntl`` does not). Other URLs
(PostgreSQL, HTTP) need no lock.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from filelock import FileLock


@contextlib.contextmanager
def sqlite_lock(url: str) -> Iterator[None]:
    """Hold an exclusive lock beside ``sqlite:///path`` for the block (no-op for other URLs)."""
    if not url.startswith("sqlite:///"):
        yield
        return
    db = Path(url[len("sqlite:///"):])
    db.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(db.with_name(db.name + ".lock")):
        yield
