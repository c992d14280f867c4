"""The public API: ``methods()``, ``attribute(model, x, method, target=None, **options)``, ``lrp_sweep``.

An LRP method (:mod:`explain.composites`, registered by name) runs as: the model is frozen (eval
mode, no parameter gradients), its BatchNorms are merged into the layers that feed them
(:mod:`explain.canonizers`), its structure is traced once (:mod:`explain.graph`: input and
output layers), the composite attaches a rule to every unit (:mod:`explain.core`), and one
forward pass with as many backward passes as filters need gives the input relevance. The model
is left exactly as it was afterwards. Baselines are classes in :mod:`explain.baselines`; what is
explained (``target``) is defined in :mod:`explain.targets`.

With ``window=`` (an :class:`inferers.SlidingWindow`) every method explains a native-resolution
segmenter's Gaussian-stitched sliding-window prediction of a volume larger than its patch: LRP
window by window with each window's share of the stitched output as its start relevance, the
baselines on the stitched model; :mod:`explain.sliding` states what conservation then means.

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
from explain.sliding import Stitched, Tiling, WindowRelevance
from explain.targets import check_input, explained_target, frozen, initial_relevance, target_mask
from inferers import SlidingWindow

Tensor = torch.Tensor

LRP_METHODS = composites.COMPOSITES.keys()
"""The engine's registered LRP method names (a live view: composites registered later are in it)."""

REFERENCE_LRP = "reference_lrp"
"""The study's own propagation on its own architecture (:mod:`explain.reference`)."""

REFERENCE_OPTIONS: tuple[str, ...] = ("first_layer", "concat_factors", "bounds", "skip_slice", "stabiliser")
"""The options of :data:`REFERENCE_LRP` (:func:`explain.reference.reference_lrp`; defaults: the study's)."""

__all__ = ["BASELINES", "LRP_METHODS", "REFERENCE_LRP", "REFERENCE_OPTIONS", "REFERENCE_WINDOW", "attribute", "frozen",
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


REFERENCE_WINDOW = ("reference_lrp takes no sliding window: it reproduces the study's propagation, which starts "
                    "from the whole output map of one whole volume and has no way to start a window from its "
                    "Gaussian share of the stitched output (explain.sliding); explain a sliding-window model with an "
                    "engine method (lrp_zplus_zbox is the study's rules, corrected)")
"""Why ``reference_lrp`` refuses a window."""


def unsupported(model: nn.Module, method: str, window: SlidingWindow | None = None) -> str:
    """Why ``method`` cannot explain ``model`` (an empty string when it can, as far as is known before running).

    Only ``reference_lrp`` is limited to one architecture (the study's) and to whole volumes
    (``window`` None, :data:`REFERENCE_WINDOW`); every other method explains any network whose
    units have rules, whole or by sliding windows.
    """
    if method not in methods():
        return str(_unknown(method))
    if method == REFERENCE_LRP and window is not None:
        return REFERENCE_WINDOW
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
              window: SlidingWindow | None = None, ledger: list[LayerBalance] | None = None,
              per_window: list[WindowRelevance] | None = None, **options) -> tuple[dict[str, Tensor], Tensor]:
    """LRP for several filters from one forward pass.

    Layer-wise filters each need their own backward pass, but they share the forward pass and
    every rule's modified forward (cached per layer); post-hoc filters reuse the raw relevance.
    ``ledger``: a list that receives every unit's :class:`~explain.core.LayerBalance` of every
    backward pass (see :func:`relevance_balance`).

    ``window``: explain the Gaussian-stitched sliding-window prediction of ``x`` (N, C, D, H, W)
    (:mod:`explain.sliding`): the target mask is taken on the stitched prediction F, every window
    is explained (``window.batch`` windows per forward pass) from its share ω_w of F's explained
    logits, layer-wise filters act per window, the windows' relevances are summed into the volume,
    and post-hoc filters act on that stitched map. ``per_window``: a list that receives each
    window's :class:`~explain.sliding.WindowRelevance` (its relevance before stitching and its
    weighted target T_w, to which a conservative method's window relevance sums).

    ``reference_lrp`` explains the whole output map of both classes (``target`` must be None), so
    its explained target is Σ f(x) over classes and voxels; it keeps no ``ledger`` and takes no
    ``window`` (:data:`REFERENCE_WINDOW`).

    Returns:
        ({filter name: relevance with x's shape}, the explained target per sample (N,); with a
        window, Σ_w T_w, which equals the explained target of F up to float rounding).
    """
    x = check_input(x)
    if method == REFERENCE_LRP:
        if window is not None or per_window is not None:
            raise ExplainError(REFERENCE_WINDOW)
        return _reference_sweep(model, x, filters, target, ledger, options)
    if method not in composites.COMPOSITES:
        raise _unknown(method)
    if window is None and per_window is not None:
        raise ExplainError("per_window collects the windows of a sliding-window explanation: pass window= too")
    layered = [f for f in filters if f.mode == "layer" and f.kind != "raw"]
    passes = ([None] if any(f.kind == "raw" or f.mode == "post" for f in filters) else []) + layered
    with frozen(model):
        tiling = None if window is None else Tiling(x, window)
        example = x if tiling is None else tiling.example()
        with canonized(model, example):
            composite = composites.build(method, trace(model, example), **options)
            state = ExplainContext(ledger=ledger)
            with composite.context(model, state) as hooked:
                if tiling is None:
                    out, explained = _propagate(hooked, state, x, lambda logits: target_mask(logits, target), passes)
                else:  # F without a gradient: the rules stay idle, the convolutions run on the fast dispatch
                    mask = target_mask(tiling.stitch(hooked), target).to(device=x.device, dtype=x.dtype)
                    out, explained = _sliding_propagate(hooked, state, tiling, tiling.pad(mask.unsqueeze(1)), passes,
                                                        per_window)
    raw = out.get("raw")
    for f in filters:
        if f.kind == "raw":
            out["raw"] = raw
        elif f.mode == "post":
            out[f.name] = f(raw)
    return {f.name: out[f.name] for f in filters}, explained


def _propagate(hooked: nn.Module, state: ExplainContext, x: Tensor, mask_of, passes: list[RelevanceFilter | None]
               ) -> tuple[dict[str, Tensor], Tensor]:
    """One hooked forward pass and one backward pass per entry of ``passes`` (None: raw).

    ``mask_of(logits)`` gives the (N, *spatial) target mask, a float weight per explained logit.

    Returns:
        ({``raw`` or layer-wise filter name: input relevance}, explained target (N,)).
    """
    out: dict[str, Tensor] = {}
    xg = x.clone().requires_grad_(True)
    logits = hooked(xg)
    mask = mask_of(logits.detach())
    start = initial_relevance(logits.detach(), mask)
    for k, f in enumerate(passes):
        state.layer_filter = f
        (relevance,) = torch.autograd.grad(logits, xg, start, retain_graph=k < len(passes) - 1)
        out["raw" if f is None else f.name] = relevance.detach() if f is None else f(relevance.detach())
    return out, explained_target(logits.detach(), mask)


def _sliding_propagate(hooked: nn.Module, state: ExplainContext, tiling: Tiling, mask: Tensor,
                       passes: list[RelevanceFilter | None], per_window: list[WindowRelevance] | None
                       ) -> tuple[dict[str, Tensor], Tensor]:
    """:func:`_propagate` window by window from the shares ω_w · m, summed into the padded volume, cropped."""
    names = ["raw" if f is None else f.name for f in passes]
    padded = tiling.padded
    totals = {name: torch.zeros_like(padded) for name in names}
    explained = torch.zeros(padded.shape[0], dtype=padded.dtype, device=padded.device)
    for n, indices in tiling.batches():
        weights = tiling.gather(mask, n, indices)[:, 0] * torch.stack([tiling.shares[i] for i in indices])
        found, targets = _propagate(hooked, state, tiling.gather(padded, n, indices), lambda _, w=weights: w, passes)
        explained[n] += targets.sum()
        for j, i in enumerate(indices):
            box = (slice(None), *tiling.boxes[i])
            for name in names:
                totals[name][n][box] += found[name][j]
            if per_window is not None:
                per_window.append(WindowRelevance(n, tiling.boxes[i], {name: found[name][j] for name in names},
                                                  float(targets[j])))
    return {name: tiling.crop(total) for name, total in totals.items()}, explained


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


def relevance_balance(model: nn.Module, x: Tensor, method: str, target=None, *, window: SlidingWindow | None = None,
                      **options) -> RelevanceBalance:
    """The relevance balance of an LRP method on ``model`` and ``x``: does it conserve, and where not.

    With ``window`` the layers' entries are every window batch's, the target is Σ_w T_w and the input
    relevance that of the stitched map (:mod:`explain.sliding`).
    """
    ledger: list[LayerBalance] = []
    relevance, explained = lrp_sweep(model, x, method, [RelevanceFilter()], target, window=window, ledger=ledger,
                                     **options)
    return RelevanceBalance(float(explained.sum()), float(relevance["raw"].sum()), tuple(ledger))


def attribute(model: nn.Module, x: Tensor, method: str, target=None, *, window: SlidingWindow | None = None,
              layer_filter: RelevanceFilter | None = None, seed: int = 0, steps: int = 16, samples: int = 8,
              **options) -> Tensor:
    """Relevance of each input voxel and modality for ``target``.

    Args:
        model: any ``nn.Module`` whose units have rules (registry models, or a network made of
            :data:`explain.backend.LINEAR_LAYERS`, BatchNorms, activations, pooling and
            :mod:`explain.layers`), returning logits (N, K ≥ 2, *spatial).
        x: input (N, C, D, H, W), or any (N, C, *spatial) the model takes.
        method: one of :func:`methods`.
        target: what is explained (:mod:`explain.targets`); ``reference_lrp``: None only (the
            study's whole output map, both classes). With a window it is taken on the stitched
            prediction F (a mask or voxel on the volume's grid).
        window: an :class:`inferers.SlidingWindow` (``PreprocessConfig.window()`` of a native-mode
            model): explain the Gaussian-stitched sliding-window prediction of a volume (N, C, D, H, W)
            of any size (smaller than the patch: zero-padded). LRP explains each window from its share
            ω_w of the stitched output's explained logits and sums the windows' relevance: per window
            the input relevance sums to its weighted target ``T_w = Σ_v ω_w(v) f_w,1(v) m(v)`` and the
            stitched map to ``Σ_v F₁(v) m(v)`` (as far as the rules conserve; :mod:`explain.sliding`);
            a layer-wise filter acts per window, a post-hoc one on the stitched map. Baselines explain
            the stitched model F (:class:`explain.sliding.Stitched`). ``reference_lrp`` refuses one.
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
        relevance, _ = lrp_sweep(model, x, method, [chosen], target, window=window, **options)
        return relevance[chosen.name]
    if method not in BASELINES:
        raise _unknown(method)
    if options:
        raise ExplainError(f"method '{method}' takes no option {', '.join(options)}")
    cls = BASELINES[method]
    accepted = inspect.signature(cls).parameters
    settings = {k: v for k, v in {"seed": seed, "steps": steps, "samples": samples}.items() if k in accepted}
    explained = model if window is None else Stitched(model, window)
    with frozen(model):
        return cls(explained, **settings).attribute(x, target)
