"""Names that become paths: study, experiment and model names never leave their output folder.

A name a user gives (``--study``, ``--experiment``, a registered model's name) is used as a folder
or file name under an output root (``checkpoints/<study>/``, ``reports/<study>/``). It must be one
path component: letters, digits, ``-``, ``_``, ``.``, ``@``, ``+`` and spaces, at most 128
characters, not starting with a dot (no hidden files, no ``..``) and not ending with a space.
"""

from __future__ import annotations

import re
from pathlib import Path

from benchmark.errors import ParameterError

NAME_RULE = ("letters, digits, '-', '_', '.', '@', '+' and spaces only, at most 128 characters, "
             "not starting with '.' or ending with a space")
_NAME = re.compile(r"[A-Za-z0-9_@+\-][A-Za-z0-9_@+\-. ]{0,127}")


def check_name(value: str, what: str) -> str:
    """``value`` if it is a safe single path component, else a :class:`ParameterError` naming the rule.

    Args:
        value: the name given by the user.
        what: the parameter, for the message (``"study"``, ``"experiment"``).
    """
    if not isinstance(value, str) or not _NAME.fullmatch(value) or value.endswith(" "):
        raise ParameterError(f"{what} name {value!r} is not allowed: use {NAME_RULE} (no '/', '\\' or '..')")
    return value


def inside(root: str | Path, name: str, what: str) -> Path:
    """``root / name`` after :func:`check_name`; it is guaranteed to lie inside ``root``."""
    path = Path(root) / check_name(name, what)
    if Path(root).resolve() not in path.resolve().parents:
        raise ParameterError(f"{what} name {name!r} leads outside '{root}': use {NAME_RULE}")
    return path
