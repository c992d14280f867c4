"""LRP as a model of its own: the relevance pass written as forward operations, exported to ONNX.

``LRPGraph(model, method, example)`` is an ``nn.Module`` whose ``forward(x)`` runs the model's
forward pass keeping every unit's input and output, puts the explained target on the output
(:mod:`explain.targets`), and propagates relevance back with ordinary forward operations, so
``torch.onnx.export`` turns it into a graph ``image → relevance`` that onnxruntime runs without
PyTorch. It computes what ``explain.attribute(model, x, method)`` computes (same canonizer, same
composite, same rules, same target), unit by unit:

* layers with weights (``Conv``, ``ConvTranspose``, ``Linear``) under a
  :class:`~explain.rules.LinearRule` (ε, z^B, flat, w²): ``z = Σ_t sign_t · f(in_t(x); θ_t)``
  (ε: the layer's own output), ``s = R / (z + ε·sign(z))``, ``R_in = Σ_t sign_t · in_t(x) ⊙ J_tᵀ s``,
  where the adjoint ``J_tᵀ`` of a convolution is the transposed convolution with the rule's
  weights θ_t (output padding ``stride − 1`` and a crop to the input's size, so any grid works)
  and that of a transposed convolution the convolution;
* under z⁺ (:class:`~explain.rules.ZPlus`), exactly as the engine on mixed-sign inputs:
  ``z⁺ = (Wx + |W||x|)/2``, ``B = |W||x|``, ``c_B = 0.5/(z⁺ + ε)`` where ``z⁺ > ε + τB`` (else 0),
  ``c_W = c_B`` plus ``1/stab(Wx)`` where ``z⁺ ≤ ε + τB`` (outputs without positive contribution,
  relative to their magnitude, fall back to their negative ones: :class:`~explain.rules.ZPlus`),
  ``R_in = x ⊙ Wᵀ(c_W R) + |x| ⊙ |W|ᵀ(c_B R)``; weights ``W`` and ``|W|`` are
  constants of the graph, BatchNorms merged into them beforehand;
* ``Pass`` (activations, BatchNorms), gates (signal takes all): ``R`` to the (first) input;
  ``Norm`` (:class:`~explain.layers.Add`): ``R_k = x_k ⊙ R / stab(Σ_k x_k)``;
* max-pooling: winner takes all, through the pooling's indices (``ScatterElements``, as autograd);
  concatenation: ``R`` split along channels; cropping (slicing): ``R`` padded back with zeros;
  fan-out: relevance summed.

The model's structure is read by ``torch.fx`` symbolic tracing with the engine's units
(:func:`explain.graph.units`: combinators and gates) as leaves. A model fx cannot trace, a module
outside the list above, or a rule outside ε, z⁺, z^B, flat, w² (γ and α-β are not exported) is
refused with an :class:`~explain.errors.ExplainError` naming it. The graph outputs ``relevance``
(N, C, *spatial), ``logits`` and ``target`` (N,: the explained target, what a conservative rule's
relevance sums to).

:func:`export_lrp_onnx` writes the ONNX file (``torch.onnx.export(..., dynamo=True)`` with dynamic
batch and spatial axes, as ``models.onnx.export_onnx``), checks it, and compares onnxruntime's
relevance with ``explain.attribute`` on several grids (relative L1 ≤ ``tolerance``); nothing is left
behind on failure. The reference is ``explain.attribute`` in float64: on near-dead z⁺ outputs
(no positive contribution, ``z⁺`` a rounding error above its ε) float32 amplifies rounding, and the
engine's float32 relevance itself lies up to ~1e-3 relative L1 from its float64 one on mixed-sign
inputs, where this graph's lies within ~1e-6.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import operator
import os
import tempfile
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from explain import composites
from explain.backend import CONVOLUTIONS, TRANSPOSED, has_weights
from explain.canonizers import BatchNormCanonizer
from explain.core import NATIVE
from explain.errors import ExplainError
from explain.graph import IDENTITY_LIKE, trace
from explain.layers import COMBINATORS, Add, Concat, is_gate
from explain.rules import LinearRule, Norm, Pass, SignalTakesAll, ZPlus, stabilize
from explain.targets import check_input

Tensor = torch.Tensor

__all__ = ["CHECK_GRIDS", "LRPExportReport", "LRPGraph", "export_lrp_onnx", "relative_l1"]

CHECK_GRIDS: tuple[tuple[int, int, int], ...] = ((19, 48, 48), (16, 40, 32))
"""(D, H, W) grids the export is verified on: the study's 48×48×19 and an uneven 32×40×16."""

TARGETS = ("lesion", "map")
"""Targets an exported graph can explain (:mod:`explain.targets`; masks and voxels change per request)."""

_MAX_POOLS = (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d)
_FLAT_RULES = (Pass, SignalTakesAll)


class _UnitTracer(fx.Tracer):
    """fx tracer that keeps the engine's units (combinators, gates, leaf layers) as single nodes."""

    def is_leaf_module(self, m: nn.Module, qualified_name: str) -> bool:
        return isinstance(m, COMBINATORS) or is_gate(m) or super().is_leaf_module(m, qualified_name)


def relative_l1(got, expected) -> float:
    """``Σ|got − expected| / Σ|expected|`` (0 when both are 0)."""
    got, expected = np.asarray(got, dtype=np.float64), np.asarray(expected, dtype=np.float64)
    scale = float(np.abs(expected).sum())
    diff = float(np.abs(got - expected).sum())
    return diff / scale if scale > 0 else diff


class LRPGraph(nn.Module):
    """The forward pass and an LRP method's relevance pass as one module (module docstring).

    Args:
        model: an explainable network (a registry model or any model fx traces whose units have
            rules), returning logits (N, K ≥ 2, *spatial); it is copied, never changed.
        method: an LRP method of :func:`explain.methods` whose rules are ε, z⁺, z^B, flat or w²
            (``lrp_epsilon``, ``lrp_zplus``, ``lrp_zplus_zbox``, ``study_published``, ``epsilon_plus_flat``).
        example: an input (1, C, *spatial) like the ones to explain (BatchNorm pairs and the
            composite's input and output layers are read off it).
        target: ``lesion`` (the default target of ``explain.attribute``) or ``map``.
        **options: the method's options (e.g. ``epsilon``).

    Raises:
        ExplainError: an unknown method, option or target, a unit or rule the graph cannot express,
            or a model fx cannot trace.
    """

    def __init__(self, model: nn.Module, method: str, example: Tensor, target: str = "lesion", **options):
        super().__init__()
        if method not in composites.COMPOSITES:
            raise ExplainError(f"method '{method}' has no exported relevance graph: choose an LRP composite "
                               f"({', '.join(composites.COMPOSITES)})")
        if target not in TARGETS:
            raise ExplainError(f"target '{target}' cannot be exported: use one of {', '.join(TARGETS)} (a mask or "
                               "a voxel changes per request: explain it with explain.attribute)")
        example = check_input(example)
        self.method, self.target = method, target
        net = copy.deepcopy(model).float().eval()
        for p in net.parameters():
            p.requires_grad_(False)
        BatchNormCanonizer().apply(net, example)  # kept: the copy is the canonized model
        self.net = net
        assigned = composites.build(method, trace(net, example), **options).rules(net)
        self.rules = {name: rule for name, (_, rule) in assigned.items()}
        try:
            self.graph = _UnitTracer().trace(net)
        except Exception as exc:
            raise ExplainError(f"{type(model).__name__} cannot be exported as a relevance graph: torch.fx cannot "
                               f"trace it ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); "
                               "write its forward without data-dependent control flow") from exc
        self.nodes = list(self.graph.nodes)
        self._weights: dict[str, list[str]] = {}
        self._maybe_non_negative: set[fx.Node] = set()
        for node in self.nodes:
            self._check(node)
            if self._may_be_non_negative(node):
                self._maybe_non_negative.add(node)

    def _may_be_non_negative(self, node: fx.Node) -> bool:
        """Whether a node's output can be ≥ 0 everywhere for more than a few inputs (image, ReLU, sigmoid, …).

        For the layers such nodes feed, z⁺ follows the engine's shortcut (one adjoint with ``2W⁺``, plus
        one with ``W`` for dead outputs) when the input is ≥ 0, chosen at run time; other layers (after
        LeakyReLU, mixed-sign) always take the two-adjoint form.
        """
        if node.op == "placeholder":
            return True
        inputs = [a for a in node.args if isinstance(a, fx.Node)]
        if node.op == "call_function" and node.target is operator.getitem:
            return inputs[0] in self._maybe_non_negative
        if node.op != "call_module":
            return False
        module = self.net.get_submodule(node.target)
        if isinstance(module, nn.ReLU | nn.ReLU6 | nn.Sigmoid | nn.Softplus):
            return True
        if isinstance(module, (*IDENTITY_LIKE, *_MAX_POOLS, Concat)) or is_gate(module):
            return all(a in self._maybe_non_negative for a in inputs[:None if isinstance(module, Concat) else 1])
        return False

    def _check(self, node: fx.Node) -> None:
        """Refuse what the graph cannot express; prepare each linear rule's weights as buffers."""
        if node.op in ("placeholder", "output", "get_attr"):
            return
        if node.op == "call_function" and node.target in (operator.getitem, getattr):
            return
        if node.op != "call_module":
            raise ExplainError(f"{type(self.net).__name__}'s forward calls {node.target} (node '{node.name}'): the "
                               "relevance graph supports modules, slicing and shape reads only; make the operation "
                               "a module of explain.layers")
        module = self.net.get_submodule(node.target)
        rule = self.rules.get(node.target)
        if rule is None:
            if isinstance(module, (*IDENTITY_LIKE, *_MAX_POOLS, Concat)):
                return
            kind = "has no rule" if not isinstance(module, NATIVE) else "routes relevance in a way not exported"
            raise ExplainError(f"layer '{node.target}' ({type(module).__name__}) {kind}: the relevance graph cannot "
                               "export it")
        if isinstance(rule, _FLAT_RULES) or (isinstance(rule, Norm) and isinstance(module, Add)):
            return
        if not has_weights(module) or not isinstance(rule, LinearRule | ZPlus):
            raise ExplainError(f"rule {rule!r} of layer '{node.target}' ({type(module).__name__}) is not exported: "
                               "the relevance graph covers the ε, z⁺, z^B, flat and w² rules (lrp_epsilon, "
                               "lrp_zplus, lrp_zplus_zbox, study_published, epsilon_plus_flat)")
        names = []
        if isinstance(rule, ZPlus):
            weights = [module.weight, module.weight.abs(), module.weight + module.weight.abs()]
        else:
            weights = [t.weight(module.weight) for _, terms in rule.groups for t in terms]
            weights += [t.bias(module.bias) if module.bias is not None else None
                        for _, terms in rule.groups for t in terms]
        for k, w in enumerate(weights):
            name = f"_w_{node.name}_{k}"
            self.register_buffer(name, None if w is None else w.detach().clone(), persistent=False)
            names.append(name)
        self._weights[node.target] = names

    def _buffer(self, node: fx.Node, k: int) -> Tensor | None:
        return getattr(self, self._weights[node.target][k])

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(relevance with x's shape, logits, explained target (N,))."""
        values: dict[fx.Node, object] = {}
        arguments: dict[fx.Node, tuple] = {}
        logits = None
        for node in self.nodes:
            args = fx.node.map_arg(node.args, lambda n: values[n])
            kwargs = fx.node.map_arg(node.kwargs, lambda n: values[n])
            if node.op == "placeholder":
                values[node] = x
            elif node.op == "call_module":
                values[node] = self.net.get_submodule(node.target)(*args, **kwargs)
            elif node.op == "call_function":
                values[node] = node.target(*args, **kwargs)
            elif node.op == "get_attr":
                values[node] = getattr(self.net, node.target)
            elif node.op == "output":
                logits = args[0]
            arguments[node] = args
        if not isinstance(logits, Tensor) or logits.dim() < 2 or logits.shape[1] < 2:
            raise ExplainError("the model must return logits (N, K >= 2, *spatial), class 1 the lesion")
        start, explained = self._start(logits)
        relevance: dict[fx.Node, Tensor] = {self.nodes[-1].args[0]: start}
        for node in reversed(self.nodes[1:]):
            r = relevance.pop(node, None)
            if r is None:
                continue
            for source, share in self._propagate(node, arguments[node], values[node], r):
                if isinstance(source, fx.Node) and share is not None:
                    relevance[source] = relevance[source] + share if source in relevance else share
        out = relevance.get(self.nodes[0])
        out = torch.zeros_like(x) if out is None else out
        return out, logits, explained

    def _start(self, logits: Tensor) -> tuple[Tensor, Tensor]:
        """Initial relevance and explained target (:mod:`explain.targets`) without data-dependent branches."""
        lesion = logits[:, 1]
        if self.target == "map":
            mask = torch.ones_like(lesion)
        else:
            flat = (logits.argmax(dim=1) == 1).to(logits.dtype).flatten(1)
            found = flat.amax(dim=1, keepdim=True) > 0
            best = (logits[:, 1] - logits[:, 0]).flatten(1).argmax(dim=1, keepdim=True)
            positions = torch.arange(flat.shape[1], device=logits.device).unsqueeze(0)
            mask = torch.where(found, flat, (positions == best).to(logits.dtype)).reshape(lesion.shape)
        explained_map = lesion * mask
        start = torch.cat([torch.zeros_like(logits[:, :1]), explained_map.unsqueeze(1),
                           torch.zeros_like(logits[:, 2:])], dim=1)
        return start, explained_map.flatten(1).sum(dim=1)

    def _propagate(self, node: fx.Node, args: tuple, output, r: Tensor) -> list[tuple[object, Tensor | None]]:
        """``[(input node, its relevance), …]`` for one node (module docstring)."""
        sources = node.args
        if node.op == "call_function":
            if node.target is operator.getitem and isinstance(args[0], Tensor):
                return [(sources[0], _unslice(r, args[0], args[1]))]
            raise ExplainError(f"node '{node.name}' ({node.target}) receives relevance but is no tensor operation "
                               "the relevance graph knows")
        module = self.net.get_submodule(node.target)
        rule = self.rules.get(node.target)
        if rule is None:
            if isinstance(module, _MAX_POOLS):
                return [(sources[0], _winner_takes_all(module, args[0], r))]
            if isinstance(module, Concat):
                bounds = np.cumsum([0] + [int(t.shape[1]) for t in args]).tolist()
                return [(s, r[:, a:b]) for s, a, b in zip(sources, bounds[:-1], bounds[1:])]
            return [(sources[0], r)]  # identity-like
        if isinstance(rule, _FLAT_RULES):
            return [(sources[0], r)]
        if isinstance(rule, Norm):
            s = r / stabilize(output, rule.epsilon)
            return [(src, a * s) for src, a in zip(sources, args)]
        x = args[0]
        if isinstance(rule, ZPlus):
            return [(sources[0], self._zplus(node, module, rule, x, output, r, sources[0] in self._maybe_non_negative))]
        return [(sources[0], self._linear(node, module, rule, x, output, r))]

    def _zplus(self, node: fx.Node, module: nn.Module, rule: ZPlus, x: Tensor, output: Tensor, r: Tensor,
               maybe_non_negative: bool) -> Tensor:
        weight, abs_weight = self._buffer(node, 0), self._buffer(node, 1)
        z0 = output if module.bias is None else _layer(module, x, weight, None)  # as the engine: no output − bias
        abs_x = x.abs()
        b = _layer(module, abs_x, abs_weight, None)
        z_plus = (z0 + b) / 2
        dead = rule.dead(z_plus, b)
        c_b = torch.where(dead, 0.0, 0.5 / (z_plus + rule.epsilon))
        c_w = c_b + torch.where(dead, 1.0 / stabilize(z0, rule.epsilon), 0.0)
        two = x * _adjoint(module, r * c_w, weight, x) + abs_x * _adjoint(module, r * c_b, abs_weight, x)
        if not maybe_non_negative:
            return two
        one = x * _adjoint(module, r * c_b, self._buffer(node, 2), x)  # the engine's shortcut, same rounding
        # on a non-negative input with dead outputs the engine splits (explain.rules.SignSplitRule): 2W⁺ for the
        # live part, W for the dead outputs' share, no float32 cancellation between W and |W|
        split = one + x * _adjoint(module, r * (c_w - c_b), weight, x)
        return torch.where((x >= 0).all(), torch.where(dead.any(), split, one), two)

    def _linear(self, node: fx.Node, module: nn.Module, rule: LinearRule, x: Tensor, output: Tensor,
                r: Tensor) -> Tensor:
        count = sum(len(terms) for _, terms in rule.groups)
        total, k = None, 0
        for coefficient, terms in rule.groups:
            mods = []
            for t in terms:
                mods.append((t.sign, t.inputs(x), self._buffer(node, k), self._buffer(node, count + k)))
                k += 1
            z = output if rule.use_output else sum(sign * _layer(module, xm, w, b) for sign, xm, w, b in mods)
            s = r / stabilize(z, rule.epsilon)
            part = sum(sign * xm * _adjoint(module, s, w, x) for sign, xm, w, _ in mods)
            part = part * coefficient if coefficient != 1 else part
            total = part if total is None else total + part
        return total


def _layer(module: nn.Module, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """The layer's map with replaced parameters (its own stride, padding, dilation, groups)."""
    if isinstance(module, nn.Linear):
        return F.linear(x, weight, bias)
    rank = x.dim() - 2
    if isinstance(module, CONVOLUTIONS):
        if getattr(module, "padding_mode", "zeros") != "zeros":
            return module._conv_forward(x, weight, bias)
        conv = (F.conv1d, F.conv2d, F.conv3d)[rank - 1]
        return conv(x, weight, bias, module.stride, module.padding, module.dilation, module.groups)
    transposed = (F.conv_transpose1d, F.conv_transpose2d, F.conv_transpose3d)[rank - 1]
    return transposed(x, weight, bias, module.stride, module.padding, module.output_padding, module.groups,
                      module.dilation)


def _adjoint(module: nn.Module, s: Tensor, weight: Tensor, x: Tensor) -> Tensor:
    """Jᵀ s of the layer's map with ``weight`` for an input like ``x``, as forward operations."""
    if isinstance(module, nn.Linear):
        return s.matmul(weight)
    rank = s.dim() - 2
    if isinstance(module, TRANSPOSED):
        conv = (F.conv1d, F.conv2d, F.conv3d)[rank - 1]
        out = conv(s, weight, None, module.stride, module.padding, module.dilation, module.groups)
        return out[(slice(None), slice(None), *(slice(0, n) for n in x.shape[2:]))]
    if getattr(module, "padding_mode", "zeros") != "zeros" or isinstance(module.padding, str):
        raise ExplainError(f"{type(module).__name__} with padding {module.padding!r} / {module.padding_mode} has no "
                           "exported adjoint: use zero padding given as integers")
    transposed = (F.conv_transpose1d, F.conv_transpose2d, F.conv_transpose3d)[rank - 1]
    extra = tuple(s_ - 1 for s_ in module.stride)  # the largest output padding; the crop below fixes the size
    out = transposed(s, weight, None, module.stride, module.padding, extra, module.groups, module.dilation)
    return out[(slice(None), slice(None), *(slice(0, n) for n in x.shape[2:]))]


def _winner_takes_all(pool: nn.Module, x: Tensor, r: Tensor) -> Tensor:
    """Max-pooling's relevance to the winner of each window (the index autograd routes to)."""
    rank = x.dim() - 2
    function = (F.max_pool1d, F.max_pool2d, F.max_pool3d)[rank - 1]
    _, indices = function(x, pool.kernel_size, pool.stride, pool.padding, pool.dilation, ceil_mode=pool.ceil_mode,
                          return_indices=True)
    flat = torch.zeros_like(x).flatten(2)
    return flat.scatter_add(2, indices.flatten(2), r.flatten(2)).reshape(x.shape)


def _unslice(r: Tensor, full: Tensor, index) -> Tensor:
    """Relevance of a sliced tensor padded back with zeros to the tensor it was sliced from."""
    index = index if isinstance(index, tuple) else (index,)
    if Ellipsis in index or any(not isinstance(i, slice) or i.step not in (None, 1) for i in index):
        raise ExplainError(f"slicing with {index!r} is not exported: only slices with step 1 (crops)")
    pads: list = []
    for axis in reversed(range(full.dim())):
        if axis >= len(index):
            pads += [0, 0]
            continue
        start = index[axis].start or 0
        pads += [start, full.shape[axis] - start - r.shape[axis]]
    if all(isinstance(p, int) and p == 0 for p in pads):
        return r
    return F.pad(r, pads)


@dataclass
class LRPExportReport:
    """What was written and how closely onnxruntime's relevance matches ``explain.attribute``.

    Attributes:
        onnx_path: the relevance model.
        method: the LRP method.
        relative_l1: grid (DxHxW) → ``Σ|R_ort − R_torch| / Σ|R_torch|``.
        conservation: grid → (Σ R / target of onnxruntime, the same of PyTorch).
    """

    onnx_path: Path
    method: str
    relative_l1: dict[str, float] = field(default_factory=dict)
    conservation: dict[str, tuple[float, float]] = field(default_factory=dict)

    @property
    def worst(self) -> float:
        """The largest relative L1 difference over the checked grids."""
        return max(self.relative_l1.values()) if self.relative_l1 else 0.0


@contextlib.contextmanager
def _atomic(target: Path) -> Iterator[Path]:
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=f".tmp{target.suffix}", dir=target.parent)
    os.close(fd)
    try:
        yield Path(name)
        os.chmod(name, 0o644)
        os.replace(name, target)
    finally:
        Path(name).unlink(missing_ok=True)


def export_lrp_onnx(model: nn.Module, method: str, path: str | Path, example: Tensor, target: str = "lesion",
                    grids: Sequence[tuple[int, ...]] = CHECK_GRIDS, tolerance: float = 1e-4, seed: int = 0,
                    **options) -> LRPExportReport:
    """Export ``method``'s relevance of ``model`` as an ONNX model and verify it (module docstring).

    The graph has the input ``image`` (N, C, *spatial; batch and spatial axes dynamic) and the
    outputs ``relevance`` (x's shape), ``logits`` and ``target`` (N,). A JSON beside it
    (``<path>.json``) names the method, target, options and the checked differences.

    Args:
        model: the network (see :class:`LRPGraph`); not changed.
        method: the LRP method.
        path: target ``.onnx`` file.
        example: an input (1, C, *spatial) of the model (its channels; its grid is traced).
        target: ``lesion`` or ``map``.
        grids: spatial grids to compare onnxruntime with ``explain.attribute`` on (inputs uniform in
            [0, 1) shifted to mixed sign every other grid; batch 1).
        tolerance: the largest accepted relative L1 difference.
        seed: for the check inputs.
        **options: the method's options.

    Raises:
        ExplainError: the graph cannot be built or exported, or a difference exceeds ``tolerance``.
    """
    import onnx
    import onnxruntime as ort
    from torch.export import Dim

    from explain.attribution import attribute

    path = Path(path)
    example = check_input(example)
    graph = LRPGraph(model, method, example[:1], target, **options).eval()
    logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)
    report = LRPExportReport(path, method)
    dynamic = {0: Dim.AUTO, **{axis: Dim.AUTO for axis in range(2, example.dim())}}
    with _atomic(path) as tmp:
        try:
            with warnings.catch_warnings(), torch.no_grad():
                warnings.simplefilter("ignore")
                torch.onnx.export(graph, (example[:1],), str(tmp), dynamo=True, input_names=["image"],
                                  output_names=["relevance", "logits", "target"], external_data=False,
                                  verbose=False, dynamic_shapes={"x": dynamic})
            onnx.checker.check_model(str(tmp), full_check=True)
        except Exception as exc:
            raise ExplainError(f"ONNX export of {method} relevance for {type(model).__name__} failed "
                               f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})") from exc
        session = ort.InferenceSession(str(tmp), providers=["CPUExecutionProvider"])
        generator = torch.Generator().manual_seed(seed)
        reference = copy.deepcopy(model).double()  # float32 z⁺ rounds near-dead outputs (z⁺ ≈ 0) differently
        channels = example.shape[1]
        for k, grid in enumerate(grids):
            x = torch.rand(1, channels, *grid, generator=generator) - (0.25 if k % 2 else 0.0)
            expected = attribute(reference, x.double(), method, None if target == "lesion" else target, **options)
            with torch.no_grad():
                _, logits, explained = graph(x)
            relevance, _, got_target = session.run(None, {"image": x.numpy()})
            name = "x".join(map(str, grid))
            report.relative_l1[name] = relative_l1(relevance, expected.numpy())
            report.conservation[name] = (float(relevance.sum() / got_target.sum()),
                                         float(expected.sum() / explained.sum()))
            if not report.relative_l1[name] <= tolerance:
                raise ExplainError(f"onnxruntime's {method} relevance differs from explain.attribute by "
                                   f"{report.relative_l1[name]:.3g} relative L1 (> {tolerance}) on grid {grid}: "
                                   "the export is not trustworthy; report the architecture")
        with _atomic(path.with_suffix(".json")) as side:
            side.write_text(json.dumps({
                "format": "strokelens-relevance-onnx/1", "method": method, "target": target, "options": options,
                "input": "image", "outputs": ["relevance", "logits", "target"],
                "input_layout": "(N, C, D, H, W) float32, as the segmenter's input",
                "build_config": getattr(model, "build_config", {}), "relative_l1": report.relative_l1,
                "conservation": {k: list(v) for k, v in report.conservation.items()}}, indent=2) + "\n")
    return report
