"""Writes that leave nothing half-written: a temporary name beside the target, renamed on success."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from benchmark.errors import ParameterError

_TEMPORARY = re.compile(r"^\.(?P<name>.+)\.[a-z0-9_]{8}\.tmp(?P<extension>\.nii\.gz|\.[A-Za-z0-9]+)?$")
"""The name :func:`atomic_file` gives its temporary file: ``.<name>.<8 mkstemp characters>.tmp<extension of name>``."""


def _usual_mode(mode: int) -> int:
    """``mode`` under the process's umask: the permissions a plain ``open``/``mkdir`` would give."""
    umask = os.umask(0)
    os.umask(umask)
    return mode & ~umask


@contextlib.contextmanager
def atomic_directory(target: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary folder beside ``target`` that becomes ``target`` only on success.

    Args:
        target: the folder to create.
        overwrite: replace an existing non-empty ``target``; otherwise such a folder is an error.

    Yields:
        The temporary folder to write into. On an exception it is removed and ``target``
        is left as it was.
    """
    target = Path(target)
    if target.exists() and not target.is_dir():
        raise ParameterError(f"output '{target}' is a file, not a folder: choose another path")
    if target.is_dir() and any(target.iterdir()) and not overwrite:
        raise ParameterError(
            f"output folder '{target}' already exists and is not empty: "
            "pass --overwrite or choose another folder"
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    tmp.chmod(_usual_mode(0o777))  # mkdtemp makes it private; the result is an ordinary folder
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    trash = None
    if target.exists():
        trash = target.with_name(f".{target.name}.old-{os.getpid()}")
        target.rename(trash)
    tmp.rename(target)
    if trash is not None:
        shutil.rmtree(trash, ignore_errors=True)


@contextlib.contextmanager
def atomic_file(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``target`` that is renamed onto it only on success.

    The temporary name keeps ``target``'s extension (``.nii.gz`` included) so writers that
    infer the format from the name still work.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    extension = ".nii.gz" if target.name.endswith(".nii.gz") else target.suffix
    fd, name = tempfile.mkstemp(
        prefix=f".{target.name}.", suffix=f".tmp{extension}", dir=target.parent
    )
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.chmod(tmp, _usual_mode(0o666))  # mkstemp makes 0600; outputs get the usual permissions
    os.replace(tmp, target)


def is_temporary(name: str) -> bool:
    """Whether ``name`` is an :func:`atomic_file` temporary name (left behind only by a killed process)."""
    found = _TEMPORARY.match(name)
    return bool(found) and found["name"].endswith(found["extension"] or "")


def remove_temporary(folder: str | os.PathLike) -> int:
    """Remove the temporary files of :func:`atomic_file` that a killed process left in ``folder``; returns how many.

    Only names of exactly that form are removed (a user's ``notes.tmp.nii.gz`` or ``.notes`` stays).
    Call it only where no other process writes at the same moment.
    """
    removed = 0
    for path in Path(folder).iterdir():
        if path.is_file() and is_temporary(path.name):
            path.unlink(missing_ok=True)
            removed += 1
    return removed
