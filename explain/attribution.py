"""The public API: ``methods()``, ``attribute(model, x, method, target=None, **options)``, ``lrp_sweep``.

An LRP method (:mod:`explain.composites`, registered by name) runs as: the model is frozen (eval
mode, no parameter gradients), its BatchNorms are merged into the layers that feed them
(:mod:`explain.canonizers`), its structure is traced once (:mod:`explain.graph`: input and
output layers), the composite attaches a rule to every unit (:mod:`explain.core`), and one
forward pass with as many backward passes as filters need gives the input relevance. The model
is left exactly as it was afterwards. Baselines are classes in :mod:`explain.baselines`; what is
explained (``target``) is defined in :mod:`explain.targets`.

``reference_lrp`` (:data:`REFERENCE_LRP`) is the study's own propagation, reproduced exactly on its
own architecture (``unet3d_reference``) by :mod:`explain.reference` rather than by the engine: it
takes the same filters (layer-wise ones at the places the study applies them), explains what the
study explains (the whole output map, both classes; ``target=None``), and takes the options
:data:`REFERENCE_OPTIONS` with the study's defaults. :func:`unsupported` says beforehand whether
a method can explain a model.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from explain import composites
from explain.baselines import BASELINES
from explain.canonizers import canonized
from explain.core import ExplainContext, LayerBalance
from explain.errors import ExplainError
from explain.filters import RelevanceFilter
from explain.graph import trace
from explain.reference import check_architecture, reference_lrp_run
from explain.rules import Rule
from explain.targets import check_input, explained_target, frozen, initial_relevance, target_mask

Tensor = torch.Tensor

LRP_METHODS = composites.COMPOSITES.keys()
"""The engine's registered LRP method names (a live view: composites registered later are in it)."""

REFERENCE_LRP = "reference_lrp"
"""The study's own propagation on its own architecture (:mod:`explain.reference`)."""

REFERENCE_OPTIONS: tuple[str, ...] = ("first_layer", "concat_factors", "bounds", "skip_slice", "stabiliser")
"""The options of :data:`REFERENCE_LRP` (:func:`explain.reference.reference_lrp`; defaults: the study's)."""

__all__ = ["BASELINES", "LRP_METHODS", "REFERENCE_LRP", "REFERENCE_OPTIONS", "attribute", "frozen",
           "initial_relevance", "is_lrp", "lrp_sweep", "methods", "relevance_balance", "rule_map", "target_mask",
           "unsupported"]


def methods() -> list[str]:
    """Every method name ``attribute`` accepts: the registered LRP composites, ``reference_lrp``, the baselines."""
    return [*composites.COMPOSITES, REFERENCE_LRP, *BASELINES]


def is_lrp(method: str) -> bool:
    """True for the methods that propagate relevance layer by layer (the composites and ``reference_lrp``).

    They run through :func:`lrp_sweep` and take layer-wise filters; baselines take ``raw`` and post-hoc ones.
    """
    return method in composites.COMPOSITES or method == REFERENCE_LRP


def unsupported(model: nn.Module, method: str) -> str:
    """Why ``method`` cannot explain ``model`` (an empty string when it can, as far as is known before running).

    Only ``reference_lrp`` is limited to one architecture (the study's); every other method explains
    any network whose units have rules.
    """
    if method not in methods():
        return str(_unknown(method))
    if method == REFERENCE_LRP:
        try:
            check_architecture(model)
        except ExplainError as exc:
            return str(exc)
    return ""


def _unknown(method: str) -> ExplainError:
    return ExplainError(f"method '{method}' is unknown: choose one of {', '.join(methods())}")


def rule_map(model: nn.Module, x: Tensor, method: str, **options) -> dict[str, Rule]:
    """The rule each unit of ``model`` gets from an LRP method (for inspection; nothing is attached)."""
    if method == REFERENCE_LRP:
        raise ExplainError("reference_lrp has no composite: its rules are fixed, layer by layer, in explain.reference "
                           "(module docstring)")
    if method not in composites.COMPOSITES:
        raise _unknown(method)
    composite = composites.build(method, trace(model, check_input(x)), **options)
    return {name: rule for name, (_, rule) in composite.rules(model).items()}


def lrp_sweep(model: nn.Module, x: Tensor, method: str, filters: Sequence[RelevanceFilter], target=None, *,
              ledger: list[LayerBalance] | None = None, **options) -> tuple[dict[str, Tensor], Tensor]:
    """LRP for several filters from one forward pass.

    Layer-wise filters each need their own backward pass, but they share the forward pass and
    every rule's modified forward (cached per layer); post-hoc filters reuse the raw relevance.
    ``ledger``: a list that receives every unit's :class:`~explain.core.LayerBalance` of every
    backward pass (see :func:`relevance_balance`).

    ``reference_lrp`` explains the whole output map of both classes (``target`` must be None), so
    its explained target is Σ f(x) over classes and voxels; it keeps no ``ledger``.

    Returns:
        ({filter name: relevance with x's shape}, the explained target per sample (N,)).
    """
    x = check_input(x)
    if method == REFERENCE_LRP:
        return _reference_sweep(model, x, filters, target, ledger, options)
    if method not in composites.COMPOSITES:
        raise _unknown(method)
    out: dict[str, Tensor] = {}
    with frozen(model), canonized(model, x):
        composite = composites.build(method, trace(model, x), **options)
        state = ExplainContext(ledger=ledger)
        with composite.context(model, state) as hooked:
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
    return {f.name: out[f.name] for f in filters}, explained_target(logits.detach(), mask)


def _reference_sweep(model: nn.Module, x: Tensor, filters: Sequence[RelevanceFilter], target,
                     ledger: list[LayerBalance] | None, options: dict) -> tuple[dict[str, Tensor], Tensor]:
    """``reference_lrp`` through the API: the study's target only, its options only."""
    if target is not None:
        shown = repr(target) if isinstance(target, str | tuple | list) else f"a {type(target).__name__}"
        raise ExplainError(f"reference_lrp explains what the study explains, the whole output map of both classes "
                           f"(target=None), not target {shown}: use an engine method (e.g. lrp_zplus_zbox) for "
                           "other targets")
    if ledger is not None:
        raise ExplainError("reference_lrp keeps no per-layer relevance ledger (relevance_balance): use an engine "
                           "method, or compare its input relevance with the explained target of lrp_sweep")
    unknown = [k for k in options if k not in REFERENCE_OPTIONS]
    if unknown:
        raise ExplainError(f"method 'reference_lrp' takes no option {', '.join(unknown)}: its options are "
                           f"{', '.join(REFERENCE_OPTIONS)}")
    relevance, output = reference_lrp_run(model, x, list(filters), **options)
    return {f.name: relevance[f.name] for f in filters}, output.reshape(len(output), -1).sum(1)


@dataclass(frozen=True)
class RelevanceBalance:
    """Where relevance goes in one LRP explanation (sums over the batch).

    Attributes:
        target: the explained target f (:func:`explain.targets.explained_target`).
        input_relevance: ``Σ R`` at the model's input.
        layers: every unit's :class:`~explain.core.LayerBalance`, in backward order.
    """

    target: float
    input_relevance: float
    layers: tuple[LayerBalance, ...]

    @property
    def stabiliser_bound(self) -> float:
        """The sum of the layers' stabiliser bounds.

        How far ``input_relevance`` may lie from ``target`` in a network without biases when every
        rule claims conservation (plus float rounding).
        """
        return sum(layer.stabiliser_bound for layer in self.layers)


def relevance_balance(model: nn.Module, x: Tensor, method: str, target=None, **options) -> RelevanceBalance:
    """The relevance balance of an LRP method on ``model`` and ``x``: does it conserve, and where not."""
    ledger: list[LayerBalance] = []
    relevance, explained = lrp_sweep(model, x, method, [RelevanceFilter()], target, ledger=ledger, **options)
    return RelevanceBalance(float(explained.sum()), float(relevance["raw"].sum()), tuple(ledger))


def attribute(model: nn.Module, x: Tensor, method: str, target=None, *, layer_filter: RelevanceFilter | None = None,
              seed: int = 0, steps: int = 16, samples: int = 8, **options) -> Tensor:
    """Relevance of each input voxel and modality for ``target``.

    Args:
        model: any ``nn.Module`` whose units have rules (registry models, or a network made of
            :data:`explain.backend.LINEAR_LAYERS`, BatchNorms, activations, pooling and
            :mod:`explain.layers`), returning logits (N, K ≥ 2, *spatial).
        x: input (N, C, D, H, W), or any (N, C, *spatial) the model takes.
        method: one of :func:`methods`.
        target: what is explained (:mod:`explain.targets`); ``reference_lrp``: None only (the
            study's whole output map, both classes).
        layer_filter: a :class:`RelevanceFilter` (LRP variants; its mode decides where it acts;
            ``reference_lrp`` applies a layer-wise one at the study's places).
        seed: for ``random`` and ``smoothgrad``.
        steps: integrated-gradients steps.
        samples: smoothgrad samples.
        **options: options of the LRP method (built-ins: ``epsilon``, ``gamma``, ``low``, ``high``;
            ``reference_lrp``: :data:`REFERENCE_OPTIONS`, e.g. ``first_layer="published"``).

    Returns:
        Relevance with x's shape, float32 (float64 for a float64 input), detached. The model is left
        exactly as it was (parameters, buffers, mode, no hooks), also when an error is raised.

    Raises:
        ExplainError: an unknown method or option, a model the method cannot explain (``reference_lrp``
            on anything but the study's architecture), or a target the method does not take.
    """
    x = check_input(x)
    if is_lrp(method):
        chosen = layer_filter or RelevanceFilter()
        relevance, _ = lrp_sweep(model, x, method, [chosen], target, **options)
        return relevance[chosen.name]
    if method not in BASELINES:
        raise _unknown(method)
    if options:
        raise ExplainError(f"method '{method}' takes no option {', '.join(options)}")
    cls = BASELINES[method]
    accepted = inspect.signature(cls).parameters
    settings = {k: v for k, v in {"seed": seed, "steps": steps, "samples": samples}.items() if k in accepted}
    with frozen(model):
        return cls(model, **settings).attribute(x, target)
