"""A model's structure as the engine needs it, read off one traced forward pass (no code is parsed).

* **Units**: the modules rules attach to: leaf modules and gates (:func:`explain.layers.is_gate`);
  a gate's own sub-modules are not units (they get no relevance).
* **Input layers**: the layers with weights (:data:`explain.backend.LINEAR_LAYERS`) that *read
  the input*: their input tensor is the model's input itself, or the input passed on unchanged
  by identity-like routers (:data:`IDENTITY_LIKE`: ``Identity``, dropout in eval mode), or the
  input gated by a gate whose signal is the input (an input lens: ``x ⊙ g``). Through a gate this
  is right for LRP because the gate hands all relevance of its output to its signal unchanged, so
  the layer after it is the last one whose rule decides the input's relevance; its z^B bounds
  still hold because ``0 ≤ g ≤ 1`` keeps ``x ⊙ g`` inside [0, h] when ``l = 0`` (the study's
  min-max normalised inputs). Layers inside a gate's branch (the lens's own convolution) read the
  input too but get no relevance, so they are not input layers. Nothing is followed through
  pooling, normalisation or any layer that changes values: e.g. a residual block's first
  convolution and its projection shortcut both read the input, the second convolution does not.
* **Output layers**: the layer with weights whose output is the model's output (followed back
  through identity-like routers and gates); if none is, the last layer with weights that ran.
* **BatchNorm pairs** ``(layer, batchnorm)``: a BatchNorm whose only input is the unshared output
  of a layer with weights (what :class:`explain.canonizers.BatchNormCanonizer` merges).

The trace runs in eval mode under ``torch.no_grad`` (each module's mode is restored after) once per
model and input rank; later calls reuse it.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from explain.backend import has_weights
from explain.layers import is_gate

Tensor = torch.Tensor

IDENTITY_LIKE: tuple[type[nn.Module], ...] = (nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d,
                                              nn.AlphaDropout, nn.FeatureAlphaDropout)
"""Modules that, in eval mode, hand their input on unchanged."""


@dataclass(frozen=True)
class Structure:
    """What one traced forward pass tells about a model (module docstring); names as in ``named_modules``."""

    input_layers: tuple[str, ...] = ()
    output_layers: tuple[str, ...] = ()
    batchnorm_pairs: tuple[tuple[str, str], ...] = ()
    order: tuple[str, ...] = ()
    """Units in the order they ran (data flow), each once."""


def units(model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    """``(name, module)`` of every unit: leaves and gates, never a gate's sub-modules."""
    inside: list[str] = []
    for name, module in model.named_modules():
        if any(name.startswith(prefix) for prefix in inside):
            continue
        if is_gate(module):
            inside.append(name + "." if name else "")  # the model itself may be a gate
            yield name, module
        elif not list(module.children()):
            yield name, module


_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def trace(model: nn.Module, example: Tensor) -> Structure:
    """The :class:`Structure` of ``model`` for inputs like ``example`` (cached per model and input rank)."""
    key = (tuple((n, type(m)) for n, m in model.named_modules()), example.dim())
    cached = _CACHE.get(model)
    if cached is not None and cached[0] == key:
        return cached[1]
    structure = _trace(model, example)
    _CACHE[model] = (key, structure)
    return structure


def _trace(model: nn.Module, example: Tensor) -> Structure:
    names = {m: n for n, m in model.named_modules()}
    unit_modules = {m for _, m in units(model)}
    made: dict[int, list[tuple[nn.Module, int | None]]] = {}  # tensor id → [(producer, routed input id)]
    consumers: dict[int, int] = {}
    carrying = {id(example)}  # the input and what hands it on unchanged
    found_inputs: list[str] = []
    order: list[str] = []
    linear_order: list[str] = []
    pairs: list[tuple[str, str, int]] = []
    keep = []  # every tensor stays alive, so no id is reused during the trace

    def record(module, inputs, output):
        keep.append((inputs, output))
        tensors = [t for t in inputs if isinstance(t, Tensor)]
        for t in tensors:
            consumers[id(t)] = consumers.get(id(t), 0) + 1
        first = tensors[0] if tensors else None
        if isinstance(module, _BatchNorm) and first is not None and made.get(id(first)):
            producer = made[id(first)][-1][0]
            if has_weights(producer):
                pairs.append((names[producer], names[module], id(first)))
        routes = module in unit_modules and (isinstance(module, IDENTITY_LIKE) or is_gate(module))
        if module in unit_modules:
            if names[module] not in order:
                order.append(names[module])
            if has_weights(module):
                linear_order.append(names[module])
            if first is not None and id(first) in carrying:
                if has_weights(module) and names[module] not in found_inputs:
                    found_inputs.append(names[module])
                elif routes and isinstance(output, Tensor):
                    carrying.add(id(output))
        if isinstance(output, Tensor):
            made.setdefault(id(output), []).append((module, id(first) if routes and first is not None else None))

    modes = [(m, m.training) for m in model.modules()]
    handles = [m.register_forward_hook(record) for m in model.modules()
               if m in unit_modules or not list(m.children())]
    try:
        model.eval()
        with torch.no_grad():
            out = model(example)
    finally:
        for handle in handles:
            handle.remove()
        for module, training in modes:
            module.train(training)
    output = out if isinstance(out, Tensor) else next((t for t in out if isinstance(t, Tensor)), None)
    head = _producing_layer(made, id(output)) if output is not None else None
    outputs = (names[head],) if head is not None else tuple(linear_order[-1:])
    merged = tuple((layer, bn) for layer, bn, tensor in pairs if consumers.get(tensor) == 1)
    return Structure(tuple(found_inputs), outputs, merged, tuple(order))


def _producing_layer(made: dict, tensor: int) -> nn.Module | None:
    """The layer with weights whose output ``tensor`` is, followed back through routers and gates."""
    seen = set()
    while tensor not in seen:
        seen.add(tensor)
        for module, source in reversed(made.get(tensor, [])):
            if has_weights(module):
                return module
            if source is None:
                return None
            if source != tensor:  # a router or gate: its input; Identity returns its input itself
                tensor = source
                break
        else:
            return None
    return None
