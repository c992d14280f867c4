"""The public API: ``methods()`` and ``attribute(model, x, method, target=None, **options)``.

What is explained (``target``), as the relevance put on the output logits before propagation:

* ``None`` / ``"lesion"`` (default): the lesion-class logits at the voxels predicted as lesion
  (argmax); when a sample has no predicted lesion voxel, its most lesion-like voxel;
* ``"map"``: the lesion-class logits of the whole output map (the study's choice);
* a boolean mask (D, H, W) or (N, D, H, W): the lesion-class logits inside it;
* a voxel ``(d, h, w)``: that voxel's lesion-class logit.

LRP variants (composites; rules in :mod:`explain.rules`; BatchNorm merged into convolutions
first; activations and unmerged BatchNorm ``Pass``; additions ``Norm``; gates
``SignalTakesAll``; interpolation ε):

* ``lrp_epsilon``: ε (default 1e-6, option ``epsilon``) on every convolution;
* ``lrp_zplus``: z⁺ on every convolution;
* ``lrp_zplus_zbox``: the study's standard: z^B on the first convolution (bounds ``low``, ``high``,
  default [0, 1]), z⁺ elsewhere;
* ``study_published``: as ``lrp_zplus_zbox`` with the study's published z^B sign variant;
* ``epsilon_gamma_box``: z^B first, γ = 0.25 (option ``gamma``) on convolutions, ε on the output layer;
* ``epsilon_plus_flat``: flat first, z⁺ on convolutions, ε on the output layer;
* ``alpha2beta1``: α = 2, β = 1 on every convolution.

Baselines: ``gradient`` (∂f/∂x), ``gradient_x_input``, ``integrated_gradients`` (zero baseline,
option ``steps`` = 16), ``smoothgrad`` (mean gradient over ``samples`` = 8 noisy copies,
σ = 0.15 × the input range), and ``random`` (uniform noise, the floor every method must beat).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence

import numpy as np
import torch
from torch import nn

from explain.core import Composite, ExplainContext, by_name, by_type, canonized
from explain.errors import ExplainError
from explain.filters import RelevanceFilter
from explain.rules import AlphaBeta, Epsilon, Flat, Gamma, Norm, Pass, SignalTakesAll, ZBox, ZPlus
from models.blocks import Add, AttentionGate, InputLens, Multiply, Upsample

Tensor = torch.Tensor

LRP_METHODS = ("lrp_epsilon", "lrp_zplus", "lrp_zplus_zbox", "study_published", "epsilon_gamma_box",
               "epsilon_plus_flat", "alpha2beta1")
BASELINES = ("gradient", "gradient_x_input", "integrated_gradients", "smoothgrad", "random")


def methods() -> list[str]:
    """Every method name ``attribute`` accepts: LRP variants, then baselines."""
    return [*LRP_METHODS, *BASELINES]


def _conv_names(model: nn.Module) -> list[str]:
    gates = [name for name, m in model.named_modules() if isinstance(m, InputLens | AttentionGate)]
    return [name for name, m in model.named_modules()
            if isinstance(m, nn.Conv3d | nn.ConvTranspose3d)
            and not any(name.startswith(g + ".") for g in gates)]


def input_layers(model: nn.Module) -> list[str]:
    """The convolutions that read the input modalities (gating branches excluded).

    They get the input-layer rule (z^B, flat): e.g. a residual block's first convolution and
    its projection shortcut both read the input.
    """
    names = _conv_names(model)
    if not names:
        raise ExplainError("the model has no convolution: LRP needs at least one Conv3d")
    modules = dict(model.named_modules())
    channels = getattr(modules[names[0]], "in_channels", None)
    return [n for n in names if isinstance(modules[n], nn.Conv3d) and modules[n].in_channels == channels][:2]


def output_layer(model: nn.Module) -> str:
    """The last convolution (the 1×1×1 head that gives the logits)."""
    return _conv_names(model)[-1]


def _common() -> list:
    return [(by_type(nn.BatchNorm3d, nn.LeakyReLU, nn.ReLU, nn.Sigmoid), Pass),
            (by_type(Add), Norm), (by_type(Multiply), SignalTakesAll), (by_type(Upsample), Epsilon)]


def composite(model: nn.Module, method: str, epsilon: float | None = None, gamma: float = 0.25,
              low: float = 0.0, high: float = 1.0) -> Composite:
    """The composite of an LRP variant for ``model`` (see the module docstring)."""
    conv = by_type(nn.Conv3d, nn.ConvTranspose3d)
    first, head = by_name(*input_layers(model)), by_name(output_layer(model))
    eps = 1e-6 if epsilon is None else epsilon
    table: dict[str, list] = {
        "lrp_epsilon": [(conv, lambda: Epsilon(eps))],
        "lrp_zplus": [(conv, ZPlus)],
        "lrp_zplus_zbox": [(first, lambda: ZBox(low, high)), (conv, ZPlus)],
        "study_published": [(first, lambda: ZBox(low, high, study_published=True)), (conv, ZPlus)],
        "epsilon_gamma_box": [(first, lambda: ZBox(low, high)), (head, lambda: Epsilon(eps)),
                              (conv, lambda: Gamma(gamma))],
        "epsilon_plus_flat": [(first, Flat), (head, lambda: Epsilon(eps)), (conv, ZPlus)],
        "alpha2beta1": [(conv, lambda: AlphaBeta(2.0, 1.0))],
    }
    if method not in table:
        raise ExplainError(f"method '{method}' is not an LRP variant: choose one of {', '.join(table)}")
    return Composite(table[method] + _common(), name=method)


def target_mask(logits: Tensor, target=None) -> Tensor:
    """(N, D, H, W) float mask of the lesion-class logits to explain (see the module docstring)."""
    n, _, d, h, w = logits.shape
    if target is None or (isinstance(target, str) and target == "lesion"):
        mask = (logits.argmax(dim=1) == 1).float()
        for i in range(n):
            if mask[i].sum() == 0:
                flat = int(torch.argmax(logits[i, 1] - logits[i, 0]))
                mask[i].view(-1)[flat] = 1.0
        return mask
    if isinstance(target, str):
        if target == "map":
            return torch.ones(n, d, h, w, dtype=logits.dtype)
        raise ExplainError(f"target '{target}' is unknown: use lesion, map, a mask or a voxel (d, h, w)")
    if isinstance(target, tuple | list) and len(target) == 3 and all(isinstance(v, int | np.integer) for v in target):
        if not all(0 <= v < s for v, s in zip(target, (d, h, w))):
            raise ExplainError(f"target voxel {tuple(target)} lies outside the grid {(d, h, w)}")
        mask = torch.zeros(n, d, h, w, dtype=logits.dtype)
        mask[:, target[0], target[1], target[2]] = 1.0
        return mask
    mask = torch.as_tensor(np.asarray(target) if not isinstance(target, Tensor) else target)
    if mask.dim() == 3:
        mask = mask.unsqueeze(0).expand(n, -1, -1, -1)
    if tuple(mask.shape) != (n, d, h, w):
        raise ExplainError(f"target mask has shape {tuple(mask.shape)} but the output grid is {(n, d, h, w)} "
                             "(or (D, H, W)): give a mask on the model's input grid")
    return mask.to(logits.dtype)


def initial_relevance(logits: Tensor, mask: Tensor) -> Tensor:
    """Relevance on the output: the lesion logit inside the mask, zero elsewhere and on class 0."""
    relevance = torch.zeros_like(logits)
    relevance[:, 1] = logits[:, 1] * mask
    return relevance


@contextlib.contextmanager
def frozen(model: nn.Module) -> Iterator[nn.Module]:
    """Eval mode and no parameter gradients for the block; the model's state comes back after."""
    training = model.training
    flags = [p.requires_grad for p in model.parameters()]
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    try:
        yield model
    finally:
        for p, flag in zip(model.parameters(), flags):
            p.requires_grad_(flag)
        model.train(training)


def _check_input(x: Tensor) -> Tensor:
    if not isinstance(x, Tensor) or x.dim() != 5:
        raise ExplainError(f"x must be a (N, C, D, H, W) tensor, got {getattr(x, 'shape', type(x))}")
    return x.detach() if x.dtype in (torch.float32, torch.float64) else x.detach().float()


def lrp_sweep(model: nn.Module, x: Tensor, method: str, filters: Sequence[RelevanceFilter], target=None,
              **options) -> tuple[dict[str, Tensor], Tensor]:
    """LRP for several filters from one forward pass.

    Layer-wise filters each need their own backward pass, but they share the forward pass and
    every rule's modified forward (cached per layer); post-hoc filters reuse the raw relevance.

    Returns:
        ({filter name: relevance with x's shape}, the explained target per sample (N,)).
    """
    x = _check_input(x)
    if method not in LRP_METHODS:
        raise ExplainError(f"method '{method}' is unknown: choose one of {', '.join(methods())}")
    out: dict[str, Tensor] = {}
    with frozen(model), canonized(model, x):
        comp = composite(model, method, **options)
        state = ExplainContext()
        with comp.context(model, state) as hooked:
            xg = x.clone().requires_grad_(True)
            logits = hooked(xg)
            mask = target_mask(logits.detach(), target)
            start = initial_relevance(logits.detach(), mask)
            needs = [f for f in filters if f.mode == "layer" and f.kind != "raw"]
            raw_needed = any(f.kind == "raw" or f.mode == "post" for f in filters)
            passes = ([None] if raw_needed else []) + needs
            for k, f in enumerate(passes):
                state.layer_filter = f
                (relevance,) = torch.autograd.grad(logits, xg, start, retain_graph=k < len(passes) - 1)
                if f is None:
                    raw = relevance.detach()
                else:
                    out[f.name] = f(relevance.detach())
    for f in filters:
        if f.kind == "raw":
            out["raw"] = raw
        elif f.mode == "post":
            out[f.name] = f(raw)
    return {f.name: out[f.name] for f in filters}, (logits.detach()[:, 1] * mask).flatten(1).sum(1)


def _gradient(model: nn.Module, x: Tensor, mask_fn: Callable[[Tensor], Tensor]) -> Tensor:
    xg = x.clone().requires_grad_(True)
    logits = model(xg)
    mask = mask_fn(logits.detach())
    (gradient,) = torch.autograd.grad(logits[:, 1], xg, mask)
    return gradient


def attribute(model: nn.Module, x: Tensor, method: str, target=None, *, layer_filter: RelevanceFilter | None = None,
              seed: int = 0, steps: int = 16, samples: int = 8, **options) -> Tensor:
    """Relevance of each input voxel and modality for ``target``.

    Args:
        model: a registry model (any ``nn.Module`` whose layers have rules).
        x: input (N, C, D, H, W).
        method: one of :func:`methods`.
        target: what is explained (module docstring).
        layer_filter: a :class:`RelevanceFilter` (LRP variants; its mode decides where it acts).
        seed: for ``random`` and ``smoothgrad``.
        steps: integrated-gradients steps.
        samples: smoothgrad samples.
        **options: rule options of LRP variants (``epsilon``, ``gamma``, ``low``, ``high``).

    Returns:
        Relevance with x's shape (N, C, D, H, W), float32, detached. The model is left exactly as
        it was (parameters, buffers, mode, no hooks), also when an error is raised.
    """
    x = _check_input(x)
    if method in LRP_METHODS:
        chosen = layer_filter or RelevanceFilter()
        relevance, _ = lrp_sweep(model, x, method, [chosen], target, **options)
        return relevance[chosen.name]
    if method not in BASELINES:
        raise ExplainError(f"method '{method}' is unknown: choose one of {', '.join(methods())}")
    if options:
        raise ExplainError(f"method '{method}' takes no option {', '.join(options)}")
    generator = torch.Generator().manual_seed(seed)
    with frozen(model):
        if method in ("gradient", "gradient_x_input"):  # the target from the same forward pass
            gradient = _gradient(model, x, lambda logits: target_mask(logits, target)).detach()
            return gradient if method == "gradient" else x * gradient
        with torch.no_grad():
            mask = target_mask(model(x), target)

        def fixed(_logits):
            return mask

        if method == "random":
            return torch.rand(x.shape, generator=generator)
        if method == "integrated_gradients":
            total = torch.zeros_like(x)
            for k in range(1, steps + 1):
                total += _gradient(model, x * (k / steps), fixed)
            return (x * total / steps).detach()
        sigma = 0.15 * float(x.max() - x.min())
        total = torch.zeros_like(x)
        for _ in range(samples):
            total += _gradient(model, x + sigma * torch.randn(x.shape, generator=generator), fixed)
        return (total / samples).detach()
