"""A file lock for SQLite databases that several worker processes open at once.

Creating a database's tables is not safe to do concurrently (MLflow's and Optuna's first
migrations both fail with integrity errors), so whoever creates or opens a store takes
``<db>.lock`` first. Other URLs (PostgreSQL, HTTP) need no lock.
"""

from __future__ import annotations

import contextlib
import fcntl
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def sqlite_lock(url: str) -> Iterator[None]:
    """Hold an exclusive lock beside ``sqlite:///path`` for the block (no-op for other URLs)."""
    if not url.startswith("sqlite:///"):
        yield
        return
    db = Path(url[len("sqlite:///"):])
    db.parent.mkdir(parents=True, exist_ok=True)
    with open(db.with_name(db.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
