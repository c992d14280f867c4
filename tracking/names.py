"""The rule for names a user gives (study, experiment, registered model): one safe path component.

Such a name becomes a folder or file name (``checkpoints/<study>/``, ``reports/<study>/``) or an
MLflow name that other tools turn into paths, so it must be one path component: letters, digits,
``-``, ``_``, ``.``, ``@``, ``+`` and spaces, at most 128 characters, not starting with a dot (no
hidden files, no ``..``) and not ending with a space. :func:`benchmark.paths.check_name` raises the
benchmark's error from it; :func:`tracking.runs.setup` checks experiment names with it.
"""

from __future__ import annotations

import re

NAME_RULE = ("letters, digits, '-', '_', '.', '@', '+' and spaces only, at most 128 characters, "
             "not starting with '.' or ending with a space")
_NAME = re.compile(r"[A-Za-z0-9_@+\-][A-Za-z0-9_@+\-. ]{0,127}")


def name_problem(value: object, what: str) -> str | None:
    """None when ``value`` is an allowed name, else the one-line message naming the rule.

    Args:
        value: the name given by the user.
        what: the parameter, for the message (``"study"``, ``"experiment"``).
    """
    if isinstance(value, str) and _NAME.fullmatch(value) and not value.endswith(" "):
        return None
    return f"{what} name {value!r} is not allowed: use {NAME_RULE} (no '/', '\\' or '..')"
