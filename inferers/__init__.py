"""Sliding-window geometry and Gaussian stitching, shared by inference (PyTorch and onnxruntime) and LRP.

A library at the bottom of the project: numpy and torch only, it imports nothing from strokelens, so
the models (:mod:`models.onnx`), the evaluation and the LRP engine (:mod:`explain`) tile a volume into
the same windows and stitch with the same weights. See :mod:`inferers.sliding` for the conventions.
"""

from inferers.sliding import SlidingWindow, gaussian_importance, sliding_window, window_starts

__all__ = ["SlidingWindow", "gaussian_importance", "sliding_window", "window_starts"]
