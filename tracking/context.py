"""What a run was made with: the code version and the lock files, as tags on every run.

* ``strokelens.git_commit``: ``git rev-parse HEAD`` of the project, with ``-dirty`` when tracked
  files differ from it (``git status --porcelain --untracked-files=no``); ``unknown`` outside a clone.
* ``strokelens.lock_sha256``: SHA-256 over the lock files (``requirements*.txt``, in name order), so
  two runs with the same digest ran on the same pinned packages.

System metrics (CPU, memory, disk, network; GPU through ``pynvml`` where one is present) are MLflow's
own sampler (``log_system_metrics=True``), every :data:`SYSTEM_METRICS_INTERVAL_S` seconds.
"""

from __future__ import annotations

import functools
import hashlib
import subprocess
from pathlib import Path

TAG_GIT_COMMIT = "strokelens.git_commit"
TAG_LOCK = "strokelens.lock_sha256"
SYSTEM_METRICS_INTERVAL_S = 5
"""Seconds between two samples of the system metrics of a training run."""

ROOT = Path(__file__).resolve().parents[1]


def _git(*args: str) -> str:
    return subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True, timeout=10,
                          check=True).stdout.strip()


def git_commit() -> str:
    """The project's commit, ``-dirty`` when tracked files changed, ``unknown`` outside a git clone."""
    try:
        commit = _git("rev-parse", "HEAD")
        dirty = _git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return commit + ("-dirty" if dirty else "")


def lock_digest(root: Path = ROOT) -> str:
    """SHA-256 of the lock files' bytes, in name order (``none`` when there is none)."""
    files = sorted(root.glob("requirements*.txt"))
    if not files:
        return "none"
    digest = hashlib.sha256()
    for path in files:
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


@functools.lru_cache(maxsize=1)
def context_tags() -> dict[str, str]:
    """The tags every run gets (computed once per process)."""
    return {TAG_GIT_COMMIT: git_commit(), TAG_LOCK: lock_digest()}
