"""A library of 3-D segmentation architectures.

Blocks, networks, the registry, the fold ensemble, ONNX export and the onnxruntime session. It imports nothing from
the rest of strokelens except the explainable layers of :mod:`explain`, and raises
:class:`models.errors.ModelError`.
"""

from models.ensemble import Ensemble
from models.reference import from_reference_checkpoint
from models.registry import available, build, build_from_config, parameter_count

__all__ = ["Ensemble", "available", "build", "build_from_config", "from_reference_checkpoint", "parameter_count"]
