"""Names that become paths: study, experiment and model names never leave their output folder.

A name a user gives (``--study``, ``--experiment``, a registered model's name) is used as a folder
or file name under an output root (``checkpoints/<study>/``, ``reports/<study>/``). It must be one
path component: letters, digits, ``-``, ``_``, ``.``, ``@``, ``+`` and spaces, at most 128
characters, not starting with a dot (no hidden files, no ``..``) and not ending with a space
(the rule is :mod:`tracking.names`'s, so the tracking layer checks experiment names alike).
An output folder a user names is checked with :func:`check_writable` before any work starts.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from benchmark.errors import ParameterError
from tracking.names import NAME_RULE, name_problem

__all__ = ["NAME_RULE", "check_name", "check_writable", "contained", "inside"]


def check_name(value: str, what: str) -> str:
    """``value`` if it is a safe single path component, else a :class:`ParameterError` naming the rule.

    Args:
        value: the name given by the user.
        what: the parameter, for the message (``"study"``, ``"experiment"``).
    """
    problem = name_problem(value, what)
    if problem:
        raise ParameterError(problem)
    return value


def inside(root: str | Path, name: str, what: str) -> Path:
    """``root / name`` after :func:`check_name`; it is guaranteed to lie inside ``root``."""
    return contained(root, check_name(name, what), what)


def contained(root: str | Path, name: str, what: str) -> Path:
    """``root / name`` for a name made elsewhere (an existing study's): one component, no leading dot, inside ``root``.

    Weaker than :func:`check_name` (any other character is allowed), for names this version no
    longer creates but may still have to read, such as a study made by Optuna directly.
    """
    path = Path(root) / str(name)
    if (not name or name.startswith(".") or any(c in name for c in "/\\\0")
            or Path(root).resolve() not in path.resolve().parents):
        raise ParameterError(f"{what} name {name!r} leads outside '{root}' or is hidden: use {NAME_RULE}")
    return path


def check_writable(folder: str | Path, what: str) -> Path:
    """``folder`` if it is, or can be created as, a folder this process may write; else a :class:`ParameterError`.

    Nothing is created: the nearest existing ancestor must be a folder in which a (removed at
    once) temporary folder can be made. Catches a path under a regular file, a read-only place
    and pseudo file systems such as ``/proc``.

    Args:
        folder: the output folder.
        what: the flag, for the message (``"--out"``, ``"--checkpoints"``).
    """
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise ParameterError(f"{what} '{folder}' is a file, not a folder: choose another path")
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise ParameterError(f"{what} '{folder}' lies under the file '{existing}': choose another path")
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".strokelens-probe.", dir=existing))
    except OSError as exc:
        reason = "is read-only for you" if isinstance(exc, PermissionError) else f"refuses new folders: {exc.strerror}"
        raise ParameterError(f"{what} '{folder}' cannot be written ('{existing}' {reason}): "
                             "choose a writable place") from exc
    return folder
