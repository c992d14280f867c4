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


SECTIONS: dict[str, tuple[str, ...]] = {
    "": ("search", "trial", "folds", "fold", "export"),
    "evaluation": ("evaluate", "evaluation", "clinical_rule"),
    "explanations": ("explain", "explanation"),
    "reproduction": ("experiments", "experiment"),
    "resolution": ("resolution", "resolution_setting"),
    "report": ("report",),
}
"""Which experiment each run kind (tag ``strokelens.kind``) lives in: the section's suffix → its kinds.

The study's experiment (the name the user gives, e.g. ``strokelens``) holds the searches, their trials,
the cross-validation folds and the exports; evaluations, explanations, the study's experiments, the
resolution studies and the reports each have their own, named ``<experiment>-<section>``
(``strokelens-evaluation``, …), so that each runs table shows runs that belong together. Runs link
across them by tags (study, trial run, architecture)."""


def section_of(kind: str) -> str:
    """The section (``""``: the study's experiment itself) of a run kind; an unknown kind stays in the study's."""
    return next((section for section, kinds in SECTIONS.items() if kind in kinds), "")


def experiment_for(base: str, kind: str) -> str:
    """The name of the experiment that holds runs of ``kind`` for the study's experiment ``base``.

    >>> experiment_for("strokelens", "trial"), experiment_for("strokelens", "explanation")
    ('strokelens', 'strokelens-explanations')
    """
    return section_experiment(base, section_of(kind))


def section_experiment(base: str, section: str) -> str:
    """The name of a section's experiment: ``<base>-<section>``, or ``base`` itself for the study's section ``""``."""
    return f"{base}-{section}" if section else base


def base_experiment(name: str) -> str:
    """The study's experiment of an experiment name: ``name`` without a section suffix.

    ``mlflow run . -e evaluate --experiment-name strokelens-evaluation`` thus logs to
    ``strokelens-evaluation`` and reads the searches of ``strokelens``.
    """
    for section in SECTIONS:
        if section and name.endswith(f"-{section}") and len(name) > len(section) + 1:
            return name[: -len(section) - 1]
    return name
