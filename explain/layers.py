"""Explainable combinator layers and the gate protocol: what a network uses so the engine explains it.

Every operation that combines tensors is a module of its own (:class:`Concat`, :class:`Add`,
:class:`Multiply`, :class:`Upsample`), so a rule is attached to it the same way as to a
convolution; a network's ``forward`` then only calls modules (slicing and cropping may stay
functional: autograd routes relevance through them exactly). They work on tensors
(N, C, *spatial) of any spatial rank.

**The gate protocol.** A *gate* is a module whose ``forward(signal, *context)`` returns
``signal ⊙ g`` with ``g`` computed from anything (the signal, the context) by the module's own
sub-layers, e.g. an attention gate or a learned input lens. LRP gives all relevance of its output
to ``signal`` and none to the gating branch (signal-takes-all, Arras et al. 2017 for LSTM gates;
Montavon et al. 2019): the gate is treated as one unit, its sub-layers get no rule and no
relevance. A module declares itself a gate with the class attribute ``explain_gate = True``
(:class:`Gate`); nothing else is needed, and :func:`is_gate` is what the engine checks.
:class:`Multiply` is the elementary gate (the gate value is given).
"""

from __future__ import annotations

from typing import ClassVar, Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["Add", "Concat", "Gate", "Multiply", "Upsample", "COMBINATORS", "is_gate"]


@runtime_checkable
class Gate(Protocol):
    """A signal-takes-all module: ``forward(signal, *context) -> signal ⊙ g`` (module docstring).

    Attributes:
        explain_gate: ``True``: all relevance of the output goes to the first argument.
    """

    explain_gate: ClassVar[bool]


def is_gate(module: nn.Module) -> bool:
    """Whether ``module`` declares the gate protocol (``explain_gate = True`` on its class)."""
    return getattr(type(module), "explain_gate", False) is True


class Concat(nn.Module):
    """Concatenate tensors along the channel axis: (N, ΣC_i, *spatial)."""

    def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
        return torch.cat(tensors, dim=1)


class Add(nn.Module):
    """Element-wise sum of tensors of one shape (residual connections)."""

    def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
        out = tensors[0]
        for t in tensors[1:]:
            out = out + t
        return out


class Multiply(nn.Module):
    """Gate a signal: ``signal × gate`` (gate broadcast over channels when it has one); a :class:`Gate`."""

    explain_gate: ClassVar[bool] = True

    def forward(self, signal: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
        return signal * gate


_MODES = {1: "linear", 2: "bilinear", 3: "trilinear"}


class Upsample(nn.Module):
    """(Bi-, tri-)linear interpolation to the spatial size of a reference tensor (1-3 spatial axes)."""

    def forward(self, x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        if x.shape[2:] == like.shape[2:]:
            return x
        mode = _MODES.get(x.dim() - 2)
        if mode is None:
            raise ValueError(f"Upsample needs 1 to 3 spatial axes, got a tensor of shape {tuple(x.shape)}")
        return F.interpolate(x, size=like.shape[2:], mode=mode, align_corners=False)


COMBINATORS: tuple[type[nn.Module], ...] = (Add, Concat, Multiply, Upsample)
"""The combinator layers (each gets a rule of its own: Norm, routing, signal-takes-all, ε)."""
