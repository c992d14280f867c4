"""The mechanism: rules attached to modules by hooks, and composites that say which rule goes where.

A forward hook replaces a unit's output (:func:`explain.graph.units`: a leaf module or a gate)
by the same values routed through :class:`_RelevanceFunction`, whose backward asks the unit's
:class:`~explain.rules.Rule` for the relevance of each input. So one call of
``torch.autograd.grad(output, x, R)`` propagates relevance: autograd itself splits it at
concatenations (slicing), sums it at fan-outs, routes it to the winner of a max-pool and through
padding, cropping and reshaping. Every hook and every swapped forward is removed when the
``with`` block ends, also on errors.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from explain import backend
from explain.errors import ExplainError
from explain.graph import IDENTITY_LIKE, units
from explain.layers import Concat, is_gate
from explain.rules import Rule

Tensor = torch.Tensor

NATIVE: tuple[type, ...] = (*IDENTITY_LIKE, nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AdaptiveMaxPool1d,
                            nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d, nn.Flatten, nn.Unflatten, Concat)
"""Modules whose own gradient already moves relevance correctly (routing, no scaling): identity,
dropout (eval), max-pooling (to the winner), reshaping, concatenation (split by slicing)."""


class _RelevanceFunction(torch.autograd.Function):
    """Identity in the forward pass; the rule's relevance in the backward pass."""

    @staticmethod
    def forward(ctx, hook: _RuleHook, output: Tensor, *inputs: Tensor) -> Tensor:
        ctx.hook = hook
        return output.clone()

    @staticmethod
    def backward(ctx, relevance: Tensor):
        relevances = ctx.hook.backward(relevance)
        return (None, None, *relevances)


class _RuleHook:
    """One module's rule, its stored inputs and output, and its per-explanation cache."""

    def __init__(self, module: nn.Module, rule: Rule, name: str, context: ExplainContext):
        self.module, self.rule, self.name, self.context = module, rule, name, context
        self.inputs: tuple[Tensor, ...] = ()
        self.output: Tensor | None = None
        self.cache: dict = {}

    def forward_hook(self, module, inputs, output):
        if not isinstance(output, Tensor) or not torch.is_grad_enabled():
            return output
        self.inputs = tuple(i.detach() for i in inputs)
        self.output = output.detach()
        self.cache = {}
        tensors = [i for i in inputs if isinstance(i, Tensor)]
        return _RelevanceFunction.apply(self, output.detach(), *tensors)

    def backward(self, relevance: Tensor) -> tuple[Tensor | None, ...]:
        out = self.rule.relevance(self.module, self.inputs, self.output, relevance, self.cache)
        if self.context.ledger is not None:
            self.context.ledger.append(LayerBalance(
                self.name, self.rule.name, float(relevance.sum()), sum(float(r.sum()) for r in out if r is not None),
                float(relevance.abs().sum()), self.rule.stabiliser_bound(relevance, self.cache)))
        layer_filter = self.context.layer_filter
        if layer_filter is not None and self.rule.filterable:
            out = tuple(None if r is None else layer_filter(r) for r in out)
        return out


@dataclass(frozen=True)
class LayerBalance:
    """One unit's relevance balance in one backward pass (sums over the batch), before any filter.

    Attributes:
        name: the unit's name in the model.
        rule: the rule's name.
        relevance_out: ``Σ R`` at the unit's output.
        relevance_in: ``Σ R`` over its inputs.
        mass_out: ``Σ |R|`` at its output.
        stabiliser_bound: the rule's bound on ``|relevance_in − relevance_out|`` due to its stabiliser
            (:meth:`explain.rules.Rule.stabiliser_bound`; a bias's share comes on top).
    """

    name: str
    rule: str
    relevance_out: float
    relevance_in: float
    mass_out: float
    stabiliser_bound: float


@dataclass
class ExplainContext:
    """State shared by the hooks of one ``with composite.context(model)`` block.

    Attributes:
        layer_filter: applied to the relevance each filterable rule hands on.
        ledger: when a list, every unit's :class:`LayerBalance` is appended to it (costs a few
            reductions per layer; off by default).
    """

    layer_filter: Callable[[Tensor], Tensor] | None = None
    ledger: list[LayerBalance] | None = None


Matcher = Callable[[str, nn.Module], bool]


def by_type(*types: type) -> Matcher:
    """Match modules of these types."""
    return lambda name, module: isinstance(module, types)


def by_name(*names: str) -> Matcher:
    """Match modules by their qualified name in the model."""
    return lambda name, module: name in names


def gates() -> Matcher:
    """Match the modules that declare the gate protocol (:func:`explain.layers.is_gate`)."""
    return lambda name, module: is_gate(module)


_CONSERVATION = {"exact": 0, "bias": 1, "none": 2}


class Composite:
    """Maps modules to rules: the first matching ``(matcher, rule factory)`` pair wins.

    Args:
        mapping: ``[(matcher, factory), …]``; a factory returns a fresh :class:`Rule` per module.
        name: for messages.
    """

    def __init__(self, mapping: Sequence[tuple[Matcher, Callable[[], Rule]]], name: str = "composite"):
        self.mapping = list(mapping)
        self.name = name

    def rules(self, model: nn.Module) -> dict[str, tuple[nn.Module, Rule]]:
        """The rule of every unit, or a :class:`ExplainError` naming an uncovered one."""
        assigned = {}
        for name, module in units(model):
            for matcher, factory in self.mapping:
                if matcher(name, module):
                    assigned[name] = (module, factory())
                    break
            else:
                if not isinstance(module, NATIVE):
                    raise ExplainError(
                        f"layer '{name}' ({type(module).__name__}) has no rule in composite '{self.name}': "
                        f"add a rule for {type(module).__name__} to the composite (e.g. Pass() for an "
                        "element-wise activation, Epsilon() for a linear layer)")
        return assigned

    @property
    def conservation(self) -> str:
        """The weakest :attr:`Rule.conservation` among the composite's rules: exact, bias or none."""
        levels = [factory().conservation for _, factory in self.mapping]
        return max(levels, key=_CONSERVATION.__getitem__, default="exact")

    @contextlib.contextmanager
    def context(self, model: nn.Module, state: ExplainContext | None = None) -> Iterator[nn.Module]:
        """Attach the rules to ``model`` for the block; hooks are removed on exit, errors included.

        Args:
            model: the model to explain.
            state: shared settings the caller may change between backward passes (the layer filter).
        """
        state = state if state is not None else ExplainContext()
        handles = []
        assigned = self.rules(model)
        try:
            for name, (module, rule) in assigned.items():
                hook = _RuleHook(module, rule, name, state)
                handles.append(module.register_forward_hook(hook.forward_hook))
            with backend.accelerated(module for module, _ in assigned.values()):
                yield model
        finally:
            for handle in handles:
                handle.remove()
