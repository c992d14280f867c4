"""The LRP engine (rules, composites, canonizers), baselines, relevance filters and metrics.

``explain.methods()`` lists the method names; ``explain.attribute(model, x, method, target=None,
**options)`` returns relevance with x's shape (N, C, D, H, W).
"""

from explain.attribution import attribute, lrp_sweep, methods

__all__ = ["attribute", "lrp_sweep", "methods"]
