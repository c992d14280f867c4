"""An ensemble of trained segmenters that averages their softmax probabilities (nnU-Net's fold ensemble).

``p̄ = (1/M) Σ_m softmax(f_m(x))`` over the class channel, the way nnU-Net ensembles its
cross-validation folds (``nnUNetv2_predict -f 0 1 2 3 4`` averages the folds' softmax outputs).
:meth:`Ensemble.forward` returns ``log p̄ = logsumexp_m(log_softmax(f_m(x))) − log M`` (computed in
log space, so a confident member's tiny probabilities neither underflow nor need clamping): a
softmax of it gives back ``p̄`` exactly, because the averaged probabilities already sum to one, so
every consumer of a strokelens model's "logits" (onnxruntime's :class:`models.onnx.Segmenter`,
prediction, serving) reads the averaged probabilities without knowing it holds an ensemble, and
:func:`models.onnx.export_onnx` writes the whole ensemble as one ONNX graph.
:meth:`Ensemble.probability` gives ``p̄`` directly.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from models.errors import ModelParameterError

ENSEMBLE = "ensemble"
"""The ``name`` in an ensemble's ``build_config``."""


class Ensemble(nn.Module):
    """Average the softmax probabilities of ``members`` (each a registry model with the same inputs and classes).

    Args:
        members: at least one trained model; all take the same input channels and give the same classes.

    Raises:
        ModelParameterError: no member, or members that disagree on input channels or classes.
    """

    def __init__(self, members: Sequence[nn.Module]):
        super().__init__()
        if not members:
            raise ModelParameterError("an ensemble needs at least one model")
        configs = [getattr(m, "build_config", {}) for m in members]
        shapes = {(c.get("in_channels"), c.get("out_channels")) for c in configs}
        if len(shapes) != 1:
            raise ModelParameterError(f"ensemble members disagree on (input channels, classes): {sorted(shapes)}")
        self.members = nn.ModuleList(members)
        in_channels, out_channels = shapes.pop()
        self.build_config = {"name": ENSEMBLE, "in_channels": in_channels, "out_channels": out_channels,
                             "members": configs}

    def probability(self, x: torch.Tensor) -> torch.Tensor:
        """(N, classes, D, H, W) averaged softmax probabilities ``p̄``."""
        return torch.exp(self(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, classes, D, H, W) ``log p̄`` (see the module docstring): softmax of it is the averaged probability."""
        log_probabilities = torch.stack([torch.log_softmax(member(x), dim=1) for member in self.members])
        return torch.logsumexp(log_probabilities, dim=0) - math.log(len(self.members))
