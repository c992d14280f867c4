"""The rules written as terms of the generic :class:`~explain.rules.base.LinearRule`: ε, z^B, flat, w²."""

from __future__ import annotations

import torch

from explain.rules.base import LinearRule, Term, identity, negative, no_bias, positive

Tensor = torch.Tensor


class Epsilon(LinearRule):
    """LRP-ε: ``R_i = Σ_j x_i w_ij / stab(z_j) · R_j`` with the layer's bias in ``z_j``.

    Conservation ``bias``: per layer within ``Σ_j |R_j| ε / (|z_j| + ε)`` when the layer has no bias.
    """

    name = "epsilon"
    conservation = "bias"

    def __init__(self, epsilon: float = 1e-6):
        super().__init__([(1.0, [Term(1.0, identity, identity, identity)])], epsilon, use_output=True)


def data_mask(x: Tensor) -> Tensor:
    """(N, 1, *spatial): 1 where any input channel is non-zero (inside the skull-stripped brain).

    For a ``Linear`` input (N, F) that is (N, 1): 1 unless every feature of the sample is 0.
    """
    return (x != 0).any(dim=1, keepdim=True).to(x.dtype)


class ZBox(LinearRule):
    """LRP-z^B for inputs bounded by [low, high] (the first layer); no bias.

    Voxels where every input channel is 0 (outside the skull-stripped brain) can take no other
    value, so their bounds are [0, 0] and they receive no relevance. Conservation ``exact``
    (every contribution ``w⁺(x − l) + w⁻(x − h)`` is ≥ 0), except for outputs that see only such
    voxels.

    Args:
        low: lower bound l of the inputs (e.g. 0 after min-max normalisation).
        high: upper bound h.
        study_published: the study's published sign variant (max(0, W) for the ``h`` term).
    """

    name = "zbox"
    conservation = "exact"

    def __init__(self, low: float = 0.0, high: float = 1.0, study_published: bool = False, epsilon: float = 1e-9):
        self.low, self.high, self.study_published = low, high, study_published
        high_weight = positive if study_published else negative
        super().__init__([(1.0, [Term(1.0, identity, identity, no_bias),
                                 Term(-1.0, lambda x: low * data_mask(x).expand_as(x), positive, no_bias),
                                 Term(-1.0, lambda x: high * data_mask(x).expand_as(x), high_weight, no_bias)])],
                         epsilon)

    def __repr__(self) -> str:
        return f"ZBox(low={self.low}, high={self.high}, study_published={self.study_published})"


class Flat(LinearRule):
    """LRP-flat: relevance spread evenly over each output's receptive field (weights 1).

    Inputs are 1 on data voxels and 0 where every channel is 0 (outside the brain). Conservation
    ``exact`` for outputs that see at least one data voxel.
    """

    name = "flat"
    conservation = "exact"

    def __init__(self, epsilon: float = 1e-9):
        super().__init__([(1.0, [Term(1.0, lambda x: data_mask(x).expand_as(x), torch.ones_like, no_bias)])],
                         epsilon)


class WSquare(LinearRule):
    """LRP-w²: relevance in proportion to squared weights (inputs 1); conservation ``exact``."""

    name = "wsquare"
    conservation = "exact"

    def __init__(self, epsilon: float = 1e-9):
        super().__init__([(1.0, [Term(1.0, torch.ones_like, lambda w: w * w, no_bias)])], epsilon)




class ParameterFreeEpsilon(Epsilon):
    """The ε rule on parameter-free linear modules (interpolation, average pooling): no bias, so ``exact``."""

    conservation = "exact"
