"""The project's own exceptions, and every exception the command line turns into one line.

Every error a user can cause (missing or corrupt files, bad parameters) is raised as
:class:`StrokelensError` with a message that names the file or parameter and the fix.
The command-line entry points turn it into one line on stderr and a non-zero exit.
"""

from __future__ import annotations

from explain.errors import ExplainError
from models.errors import ModelError
from tracking.errors import TrackingError


class StrokelensError(Exception):
    """An error the user can fix; the message names the file or parameter and the fix."""


class DataError(StrokelensError):
    """Input data on disk is missing, corrupt or inconsistent."""


class ParameterError(StrokelensError, ValueError):
    """A parameter given by the user is out of range or unknown."""


class CaseError(DataError):
    """One case of a data set cannot be used; the rest may be.

    Attributes:
        case_id: the case.
        labelled: whether the case has ground truth (a broken unlabelled case does not stop training).
    """

    def __init__(self, case_id: str, message: str, labelled: bool = True):
        super().__init__(message)
        self.case_id, self.labelled = case_id, labelled


class DataWarning(UserWarning):
    """Data that loads but looks wrong (an all-zero modality, no lesion anywhere, a stray file).

    The command line prints each as one ``warning:`` line and goes on.
    """


USER_ERRORS: tuple[type[Exception], ...] = (StrokelensError, ModelError, ExplainError, TrackingError)
"""What a user can cause and fix: the command line prints one line and exits 2 for each."""

