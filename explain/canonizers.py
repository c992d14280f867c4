"""Canonizers: rewrite a model into an equivalent one the rules explain better, and undo it exactly.

:class:`BatchNormCanonizer` merges each eval-mode BatchNorm (1-, 2- or 3-D) into the layer with
weights that feeds it alone (``Linear``, a convolution or a transposed convolution, any rank), as
Zennit's ``MergeBatchNorm`` does; which layer feeds which BatchNorm is read from a traced forward
pass (:func:`explain.graph.trace`), so the model's code is not parsed.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from explain.backend import output_axis
from explain.errors import ExplainError
from explain.graph import trace

Tensor = torch.Tensor


class BatchNormCanonizer:
    """Merge each eval-mode BatchNorm into the layer that feeds it alone.

    ``y = a·(Wx + b − μ) + β`` with ``a = γ / √(σ² + ε)`` becomes the layer with weights ``a·W``
    (scaled along the output-channel axis) and bias ``a·(b − μ) + β``, and the BatchNorm becomes
    the identity (μ = 0, σ² = 1 − ε, γ = 1, β = 0; without affine parameters γ = 1, β = 0 are
    implied). BatchNorms without running statistics are left alone. :meth:`remove` restores every
    parameter and buffer exactly.
    """

    def __init__(self):
        self._saved: list[tuple[nn.Module, dict[str, Tensor | None]]] = []
        self.merged: list[tuple[str, str]] = []

    @staticmethod
    def pairs(model: nn.Module, example: Tensor) -> list[tuple[str, nn.Module, str, nn.Module]]:
        """(layer name, layer, BN name, BN) where the BN's only input is the layer's unshared output.

        The trace runs once per model (and input rank); later calls reuse it.
        """
        modules = dict(model.named_modules())
        return [(c, modules[c], b, modules[b]) for c, b in trace(model, example).batchnorm_pairs]

    def apply(self, model: nn.Module, example: Tensor) -> BatchNormCanonizer:
        """Merge in place (the model must be in eval mode)."""
        if model.training:
            raise ExplainError("BatchNorm can only be merged in eval mode: call model.eval() first")
        for layer_name, layer, bn_name, bn in self.pairs(model, example):
            if not isinstance(bn, _BatchNorm) or bn.running_mean is None or bn.running_var is None:
                continue
            # every change below assigns a new tensor, so the originals are kept by reference
            self._saved.append((layer, {"weight": layer.weight.data,
                                        "bias": None if layer.bias is None else layer.bias.data}))
            self._saved.append((bn, {k: getattr(bn, k).data for k in ("weight", "bias", "running_mean", "running_var")
                                     if getattr(bn, k) is not None}))
            gain = bn.weight.data if bn.weight is not None else torch.ones_like(bn.running_var)
            shift = bn.bias.data if bn.bias is not None else torch.zeros_like(bn.running_mean)
            scale = gain / torch.sqrt(bn.running_var + bn.eps)
            bias = layer.bias.data if layer.bias is not None else torch.zeros_like(bn.running_mean)
            shape = [1] * layer.weight.dim()
            shape[output_axis(layer)] = -1
            layer.weight.data = layer.weight.data * scale.view(shape)
            new_bias = scale * (bias - bn.running_mean) + shift
            if layer.bias is None:
                layer.bias = nn.Parameter(new_bias, requires_grad=layer.weight.requires_grad)
                self._saved[-2][1]["created_bias"] = True
            else:
                layer.bias.data = new_bias
            if bn.weight is not None:
                bn.weight.data = torch.ones_like(bn.weight.data)
                bn.bias.data = torch.zeros_like(bn.bias.data)
            bn.running_mean.data = torch.zeros_like(bn.running_mean)
            bn.running_var.data = torch.full_like(bn.running_var, 1.0 - bn.eps)
            self.merged.append((layer_name, bn_name))
        return self

    def remove(self) -> None:
        """Restore every parameter and buffer changed by :meth:`apply`."""
        for module, saved in reversed(self._saved):
            if isinstance(module, _BatchNorm):
                for key, value in saved.items():
                    getattr(module, key).data = value
            else:
                module.weight.data = saved["weight"]
                if saved.get("created_bias"):
                    module.bias = None
                elif saved["bias"] is not None:
                    module.bias.data = saved["bias"]
        self._saved.clear()
        self.merged.clear()

    @property
    def merged_batchnorms(self) -> set[str]:
        """Names of the BatchNorm modules merged (they then need no rule)."""
        return {bn for _, bn in self.merged}


@contextlib.contextmanager
def canonized(model: nn.Module, example: Tensor) -> Iterator[BatchNormCanonizer]:
    """Merge BatchNorms for the block (eval mode), restore them afterwards, errors included."""
    canonizer = BatchNormCanonizer()
    try:
        yield canonizer.apply(model, example)
    finally:
        canonizer.remove()
