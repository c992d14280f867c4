"""3-D segmentation architectures, their registry, ONNX export and inference sessions."""

from models.registry import available, build, build_from_config, parameter_count

__all__ = ["available", "build", "build_from_config", "parameter_count"]
