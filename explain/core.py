"""The mechanism: rules attached to modules by hooks, composites, canonizers, all undoable.

A forward hook replaces a module's output by the same values routed through
:class:`_RelevanceFunction`, whose backward asks the module's :class:`~explain.rules.Rule` for the
relevance of each input. So one call of ``torch.autograd.grad(output, x, R)`` propagates
relevance: autograd itself splits it at concatenations (slicing), sums it at fan-outs, routes it
to the winner of a max-pool and through padding and cropping. Every hook and every swapped
parameter is restored when the ``with`` block ends, also on errors.
"""

from __future__ import annotations

import contextlib
import functools
import weakref
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from explain.errors import ExplainError
from explain.rules import Rule, layer_forward
from models.blocks import Add, Concat, Multiply, Upsample

Tensor = torch.Tensor

NATIVE: tuple[type, ...] = (nn.MaxPool3d, nn.Identity, nn.Dropout, nn.Dropout3d)
"""Modules whose own gradient already moves relevance correctly (routing, no scaling)."""


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
        layer_filter = self.context.layer_filter
        if layer_filter is not None and self.rule.name not in ("pass", "signal_takes_all"):
            out = tuple(None if r is None else layer_filter(r) for r in out)
        return out


@dataclass
class ExplainContext:
    """State shared by the hooks of one ``with composite.context(model)`` block."""

    layer_filter: Callable[[Tensor], Tensor] | None = None


Matcher = Callable[[str, nn.Module], bool]


def by_type(*types: type) -> Matcher:
    """Match modules of these types."""
    return lambda name, module: isinstance(module, types)


def by_name(*names: str) -> Matcher:
    """Match modules by their qualified name in the model."""
    return lambda name, module: name in names


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
        """The rule of every leaf module, or a :class:`ExplainError` naming an uncovered one."""
        assigned = {}
        for name, module in model.named_modules():
            if list(module.children()) and not _is_combiner(module):
                continue
            for matcher, factory in self.mapping:
                if matcher(name, module):
                    assigned[name] = (module, factory())
                    break
            else:
                if not isinstance(module, NATIVE) and not _is_router(module):
                    raise ExplainError(
                        f"layer '{name}' ({type(module).__name__}) has no rule in composite '{self.name}': "
                        f"add a rule for {type(module).__name__} to the composite (e.g. Pass() for an "
                        "element-wise activation, Epsilon() for a linear layer)")
        return assigned

    @contextlib.contextmanager
    def context(self, model: nn.Module, state: ExplainContext | None = None) -> Iterator[nn.Module]:
        """Attach the rules to ``model`` for the block; hooks are removed on exit, errors included.

        Args:
            model: the model to explain.
            state: shared settings the caller may change between backward passes (the layer filter).
        """
        state = state if state is not None else ExplainContext()
        handles, swapped = [], []
        try:
            for name, (module, rule) in self.rules(model).items():
                hook = _RuleHook(module, rule, name, state)
                handles.append(module.register_forward_hook(hook.forward_hook))
                if _has_fast_forward(module):
                    swapped.append((module, module.__dict__.get("forward")))
                    module.forward = functools.partial(_fast_forward, module)
            yield model
        finally:
            for handle in handles:
                handle.remove()
            for module, own in swapped:
                if own is None:
                    del module.forward
                else:
                    module.forward = own


def _has_fast_forward(module: nn.Module) -> bool:
    """Convolutions whose forward :func:`explain.rules.layer_forward` computes (zero padding)."""
    return isinstance(module, nn.Conv3d | nn.ConvTranspose3d) and module.padding_mode == "zeros"


def _fast_forward(module: nn.Module, x: Tensor, output_size=None) -> Tensor:
    """The convolution's own forward, through the rules' oneDNN dispatch (same values)."""
    if output_size is not None:
        return type(module).forward(module, x, output_size)
    return layer_forward(module, x, module.weight, module.bias)


def _is_combiner(module: nn.Module) -> bool:
    return isinstance(module, Add | Concat | Multiply | Upsample)


def _is_router(module: nn.Module) -> bool:
    """Concatenation: autograd's slicing splits relevance exactly, no rule needed."""
    return isinstance(module, Concat)


_PAIRS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


class BatchNormCanonizer:
    """Merge each eval-mode BatchNorm3d into the (transposed) convolution that feeds it alone.

    ``y = a·(Wx + b − μ) + β`` with ``a = γ / √(σ² + ε)`` becomes a convolution with weights
    ``a·W`` (output-channel axis) and bias ``a·(b − μ) + β``, and the BatchNorm becomes the
    identity (μ = 0, σ² = 1 − ε, γ = 1, β = 0). Which convolution feeds which BatchNorm is read
    from a traced forward pass, so the model's code is not parsed. :meth:`remove` restores every
    parameter and buffer exactly.
    """

    def __init__(self):
        self._saved: list[tuple[nn.Module, dict[str, Tensor | None]]] = []
        self.merged: list[tuple[str, str]] = []

    @staticmethod
    def pairs(model: nn.Module, example: Tensor) -> list[tuple[str, nn.Module, str, nn.Module]]:
        """(conv name, conv, bn name, bn) where the BN's only input is the conv's unshared output.

        The trace runs once per model (and input rank); later calls reuse it.
        """
        key = (tuple(n for n, _ in model.named_modules()), example.dim())
        cached = _PAIRS.get(model)
        if cached is not None and cached[0] == key:
            modules = dict(model.named_modules())
            return [(c, modules[c], b, modules[b]) for c, b in cached[1]]
        found_pairs = BatchNormCanonizer._trace(model, example)
        _PAIRS[model] = (key, [(c, b) for c, _, b, _ in found_pairs])
        return found_pairs

    @staticmethod
    def _trace(model: nn.Module, example: Tensor) -> list[tuple[str, nn.Module, str, nn.Module]]:
        producers: dict[int, tuple[str, nn.Module]] = {}
        consumers: dict[int, int] = {}
        found = []
        handles = []
        names = {m: n for n, m in model.named_modules()}

        def record(module, inputs, output):
            for t in inputs:
                if isinstance(t, Tensor):
                    consumers[id(t)] = consumers.get(id(t), 0) + 1
            if isinstance(module, nn.BatchNorm3d) and isinstance(inputs[0], Tensor):
                producer = producers.get(id(inputs[0]))
                if producer is not None:
                    found.append((producer, (names[module], module), id(inputs[0])))
            if isinstance(output, Tensor):
                producers[id(output)] = (names[module], module)

        keep = []
        for module in model.modules():
            if not list(module.children()) or _is_combiner(module):
                handles.append(module.register_forward_hook(lambda m, i, o: keep.append(o) or record(m, i, o)))
        try:
            with torch.no_grad():
                model(example)
        finally:
            for h in handles:
                h.remove()
        return [(cn, c, bn, b) for (cn, c), (bn, b), tid in found
                if isinstance(c, nn.Conv3d | nn.ConvTranspose3d) and consumers.get(tid) == 1]

    def apply(self, model: nn.Module, example: Tensor) -> BatchNormCanonizer:
        """Merge in place (the model must be in eval mode)."""
        if model.training:
            raise ExplainError("BatchNorm can only be merged in eval mode: call model.eval() first")
        for conv_name, conv, bn_name, bn in self.pairs(model, example):
            # every change below assigns a new tensor, so the originals are kept by reference
            self._saved.append((conv, {"weight": conv.weight.data,
                                       "bias": None if conv.bias is None else conv.bias.data}))
            self._saved.append((bn, {k: getattr(bn, k).data
                                     for k in ("weight", "bias", "running_mean", "running_var")}))
            scale = bn.weight.data / torch.sqrt(bn.running_var + bn.eps)
            bias = conv.bias.data if conv.bias is not None else torch.zeros_like(bn.running_mean)
            shape = [1] * conv.weight.dim()
            shape[0 if isinstance(conv, nn.Conv3d) else 1] = -1
            conv.weight.data = conv.weight.data * scale.view(shape)
            new_bias = scale * (bias - bn.running_mean) + bn.bias.data
            if conv.bias is None:
                conv.bias = nn.Parameter(new_bias, requires_grad=conv.weight.requires_grad)
                self._saved[-2][1]["created_bias"] = True
            else:
                conv.bias.data = new_bias
            bn.weight.data = torch.ones_like(bn.weight.data)
            bn.bias.data = torch.zeros_like(bn.bias.data)
            bn.running_mean.data = torch.zeros_like(bn.running_mean)
            bn.running_var.data = torch.full_like(bn.running_var, 1.0 - bn.eps)
            self.merged.append((conv_name, bn_name))
        return self

    def remove(self) -> None:
        """Restore every parameter and buffer changed by :meth:`apply`."""
        for module, saved in reversed(self._saved):
            if isinstance(module, nn.BatchNorm3d):
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
