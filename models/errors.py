"""The model library's own exceptions (it imports nothing from the rest of strokelens).

Each message names the parameter or file and the fix; the command line turns them into one line.
"""

from __future__ import annotations


class ModelError(Exception):
    """An error in building, loading or exporting a model that the user can fix."""


class ModelParameterError(ModelError, ValueError):
    """An unknown architecture or an invalid hyper-parameter."""


class ModelFileError(ModelError):
    """A model file (ONNX, its JSON) is missing or corrupt."""


class ExportError(ModelError):
    """The exported model does not reproduce PyTorch, or the export itself failed."""
