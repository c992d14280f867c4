"""The rule base classes (:class:`Rule`, the generic :class:`LinearRule`) and the routing rules.

See :mod:`explain.rules` for the formulas and the conservation conventions.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from explain.backend import Adjoint, has_weights, layer_forward

Tensor = torch.Tensor


def stabilize(z: Tensor, epsilon: float) -> Tensor:
    """``z + ε·sign(z)`` with sign(0) = 1, so the division never explodes."""
    return z + epsilon * torch.where(z >= 0, 1.0, -1.0).to(z.dtype)


@dataclass(frozen=True)
class Term:
    """One ``sign · f(in(x); θ)`` of a rule (see the module docstring)."""

    sign: float
    inputs: Callable[[Tensor], Tensor]
    weight: Callable[[Tensor], Tensor]
    bias: Callable[[Tensor | None], Tensor | None]


def identity(t):
    """Term modifier: unchanged."""
    return t


def no_bias(b):
    """Term modifier: the bias left out."""
    return None


def positive(t):
    """Term modifier: ``t⁺ = max(t, 0)``."""
    return t.clamp(min=0)


def negative(t):
    """Term modifier: ``t⁻ = min(t, 0)``."""
    return t.clamp(max=0)


class Rule:
    """Base class: turns output relevance into relevance for each input (None: no relevance).

    Attributes:
        name: for messages.
        filterable: whether a layer filter (:mod:`explain.filters`) acts on this rule's output
            relevance; False for rules that only route relevance (Pass, SignalTakesAll).
        conservation: ``exact``, ``bias`` or ``none`` (:mod:`explain.rules`); a rule claims nothing unless
            it says so.
    """

    name: ClassVar[str] = "rule"
    filterable: ClassVar[bool] = True
    conservation: ClassVar[str] = "none"

    def relevance(self, module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor, relevance: Tensor,
                  cache: dict) -> tuple[Tensor | None, ...]:
        """Relevance of each input, given the module's stored inputs, output and output relevance."""
        raise NotImplementedError

    def stabiliser_bound(self, relevance: Tensor, cache: dict) -> float:
        """After :meth:`relevance`: a bound on ``|Σ R_in − Σ R_out|`` due to the stabiliser alone.

        ``ε Σ_j |R_j| / |stab(z'_j)|`` over the rule's denominators z' (biases excluded: a bias's
        share comes on top); 0 for rules that only route relevance; ``inf`` for rules without a
        conservation claim.
        """
        return 0.0 if self.conservation != "none" else float("inf")

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class LinearRule(Rule):
    """The generic linear-layer rule: groups of terms (see the module docstring).

    Args:
        groups: ``[(coefficient, [Term, …]), …]``.
        epsilon: stabiliser ε of the denominators.
        use_output: the single group equals the layer's own output (ε rule): reuse it.
    """

    def __init__(self, groups: list[tuple[float, list[Term]]], epsilon: float = 1e-9, use_output: bool = False):
        self.groups = groups
        self.epsilon = epsilon
        self.use_output = use_output

    def relevance(self, module, inputs, output, relevance, cache):
        x = inputs[0]
        if not has_weights(module):
            return (self._parameter_free(module, inputs, output, relevance, cache),) + (None,) * (len(inputs) - 1)
        total = None
        for g, (coefficient, terms) in enumerate(self.groups):
            prepared = cache.get(g)
            if prepared is None:  # modified inputs, weights and z are shared by every backward pass
                mods = [(t.sign, t.inputs(x), t.weight(module.weight)) for t in terms]
                if self.use_output:
                    z = output
                else:
                    z = sum(sign * layer_forward(module, xm, w, t.bias(module.bias), output.shape)
                            for (sign, xm, w), t in zip(mods, terms, strict=True))
                mods = [(sign, xm, Adjoint(module, w)) for sign, xm, w in mods]
                prepared = cache[g] = (mods, stabilize(z, self.epsilon))
            mods, z = prepared
            s = relevance / z
            part = sum(sign * xm * adjoint(s, x.shape) for sign, xm, adjoint in mods)
            part = part * coefficient if coefficient != 1 else part
            total = part if total is None else total + part
        return (total,)

    def _parameter_free(self, module, inputs, output, relevance, cache):
        """z-rule through a parameter-free linear module (interpolation, pooling by averaging)."""
        x = inputs[0]
        with torch.enable_grad():
            xg = x.detach().requires_grad_(True)
            z = module.forward(xg, *inputs[1:])  # no hooks: this is the rule itself
            cache["z"] = stabilize(z.detach(), self.epsilon)
            (gradient,) = torch.autograd.grad(z, xg, relevance / cache["z"])
        return x * gradient

    def stabiliser_bound(self, relevance, cache):
        if "z" in cache:
            return self.epsilon * float((relevance / cache["z"]).abs().sum())
        return self.epsilon * sum(abs(coefficient) * float((relevance / cache[g][1]).abs().sum())
                                  for g, (coefficient, _) in enumerate(self.groups))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(epsilon={self.epsilon})"


class Pass(Rule):
    """Relevance passes unchanged (activations, unmerged BatchNorm, sigmoid); not filtered."""

    name = "pass"
    filterable = False
    conservation = "exact"

    def relevance(self, module, inputs, output, relevance, cache):
        return (relevance,) + (None,) * (len(inputs) - 1)


class Norm(Rule):
    """Sums: ``R_k = x_k / stab(Σ_k x_k) · R`` (residual additions split proportionally)."""

    name = "norm"
    conservation = "exact"

    def __init__(self, epsilon: float = 1e-9):
        self.epsilon = epsilon

    def relevance(self, module, inputs, output, relevance, cache):
        if "z" not in cache:
            cache["z"] = stabilize(output, self.epsilon)
        s = relevance / cache["z"]
        return tuple(x * s for x in inputs)

    def stabiliser_bound(self, relevance, cache):
        return self.epsilon * float((relevance / cache["z"]).abs().sum())


class SignalTakesAll(Rule):
    """Gates (:class:`explain.layers.Gate`): all relevance goes to the signal, none to the gate; not filtered."""

    name = "signal_takes_all"
    filterable = False
    conservation = "exact"

    def relevance(self, module, inputs, output, relevance, cache):
        return (relevance,) + (None,) * (len(inputs) - 1)
