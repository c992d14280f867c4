"""3-D segmentation architectures, their registry, ONNX export and inference sessions."""
