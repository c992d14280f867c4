"""An LRP engine that stands on its own: rules, composites, canonizers, baselines, filters and metrics.

``explain.methods()`` lists the method names; ``explain.attribute(model, x, method, target=None,
window=None, **options)`` returns relevance with x's shape (N, C, *spatial); with an
``inferers.SlidingWindow`` it explains a patch model's Gaussian-stitched sliding-window prediction
of a larger volume (:mod:`explain.sliding`). A network is explainable when it
is built from layers with rules (``Linear``, ``Conv1d/2d/3d``, ``ConvTranspose1d/2d/3d``,
BatchNorm, activations, pooling, dropout) and the combinator layers of :mod:`explain.layers`
(``Add``, ``Concat``, ``Multiply``, ``Upsample``); its gates declare the gate protocol
(``explain_gate = True``, :class:`explain.layers.Gate`). New LRP methods are added with
:func:`register_composite`. ``reference_lrp`` is the study's own propagation, on the study's
architecture only (:mod:`explain.reference`; ``unsupported(model, method)`` says why not). The
package imports nothing from the rest of strokelens but :mod:`inferers` (the window geometry).

Modules: :mod:`~explain.layers` (combinators, gate protocol), :mod:`~explain.rules` (LRP rules),
:mod:`~explain.backend` (layer maps, adjoints, oneDNN dispatch), :mod:`~explain.core` (hooks,
composites), :mod:`~explain.graph` (traced structure), :mod:`~explain.canonizers` (BatchNorm
merging), :mod:`~explain.composites` (the registry), :mod:`~explain.targets`,
:mod:`~explain.baselines`, :mod:`~explain.attribution` (the API), :mod:`~explain.sliding` (windows),
:mod:`~explain.filters`, :mod:`~explain.metrics`, :mod:`~explain.assessment`, :mod:`~explain.reference` (the
study's propagation).
"""

from explain.attribution import attribute, is_lrp, lrp_sweep, methods, relevance_balance, rule_map, unsupported
from explain.composites import conservation, register_composite

__all__ = ["attribute", "conservation", "is_lrp", "lrp_sweep", "methods", "register_composite", "relevance_balance",
           "rule_map", "unsupported"]
