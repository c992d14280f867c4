"""Composites registered by name: which rule each layer of a model gets (Zennit's composite pattern).

A composite factory is ``factory(structure, **options) -> Composite``: it gets the model's traced
:class:`~explain.graph.Structure` (input layers, output layer) and the method's options, and
returns a :class:`~explain.core.Composite`. :func:`register_composite` adds one under a name;
:func:`explain.methods` then lists it and ``explain.attribute(model, x, name)`` uses it::

    from explain import register_composite
    from explain.composites import LINEAR, default_rules
    from explain.core import Composite, by_name
    from explain.rules import Epsilon, Gamma, ZBox

    @register_composite("gamma_box_1")
    def gamma_box(structure, gamma=1.0):
        first = by_name(*structure.input_layers)
        return Composite([(first, ZBox), (LINEAR, lambda: Gamma(gamma))] + default_rules())

:func:`default_rules` are the rules every built-in composite shares: ``Pass`` for activations and
BatchNorms that were not merged (merged ones are identities by then), ``Norm`` for
:class:`~explain.layers.Add`, ``SignalTakesAll`` for gates (:class:`~explain.layers.Gate`), ε for
:class:`~explain.layers.Upsample`. Max-pooling, dropout, identity, reshaping and concatenation
need no rule (:data:`explain.core.NATIVE`).

The built-in LRP methods (rules in :mod:`explain.rules`; "first" are the input layers, "head" the
output layer, both from the trace):

* ``lrp_epsilon``: ε (default 1e-6, option ``epsilon``) on every layer with weights and on ``Upsample``;
* ``lrp_zplus``: z⁺ everywhere;
* ``lrp_zplus_zbox``: the study's standard: z^B first (bounds ``low``, ``high``, default [0, 1]), z⁺ elsewhere;
* ``study_published``: as ``lrp_zplus_zbox`` with the study's published z^B sign variant;
* ``epsilon_gamma_box``: z^B first, ε head (option ``epsilon``), γ = 0.25 (option ``gamma``) elsewhere;
* ``epsilon_plus_flat``: flat first, ε head, z⁺ elsewhere;
* ``alpha2beta1``: α = 2, β = 1 everywhere.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable

from torch import nn

from explain.backend import LINEAR_LAYERS
from explain.baselines import BASELINES
from explain.core import Composite, Matcher, by_name, by_type, gates
from explain.errors import ExplainError
from explain.graph import Structure
from explain.layers import Add, Upsample
from explain.rules import (
    AlphaBeta,
    Epsilon,
    Flat,
    Gamma,
    Norm,
    ParameterFreeEpsilon,
    Pass,
    SignalTakesAll,
    ZBox,
    ZPlus,
)

CompositeFactory = Callable[..., Composite]

LINEAR: Matcher = by_type(*LINEAR_LAYERS)
"""Every layer with weights (``Linear``, convolutions and transposed convolutions of any rank)."""

ACTIVATIONS: tuple[type[nn.Module], ...] = (nn.ReLU, nn.LeakyReLU, nn.ELU, nn.Sigmoid)
"""Element-wise monotonic activations: relevance passes through them unchanged."""

BATCHNORMS: tuple[type[nn.Module], ...] = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)

COMPOSITES: dict[str, CompositeFactory] = {}
"""Method name → composite factory (:func:`register_composite`)."""

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


def default_rules(epsilon: float = 1e-6) -> list[tuple[Matcher, Callable]]:
    """The rules every composite shares (module docstring); append them after the layer rules.

    Args:
        epsilon: the stabiliser of the ε rule on :class:`~explain.layers.Upsample`.
    """
    return [(by_type(*BATCHNORMS, *ACTIVATIONS), Pass), (gates(), SignalTakesAll), (by_type(Add), Norm),
            (by_type(Upsample), lambda: ParameterFreeEpsilon(epsilon))]


def register_composite(name: str, factory: CompositeFactory | None = None, *, replace: bool = False):
    """Register ``factory(structure, **options) -> Composite`` as the LRP method ``name``.

    Usable as a call or as a decorator (``@register_composite("name")``).

    Args:
        name: the method name (letters, digits, ``_``, ``.``, ``-``; it names files and runs).
        factory: the composite factory; its keyword parameters are the method's options.
        replace: allow replacing a registered composite of the same name.

    Raises:
        ExplainError: a bad name, or one already registered (without ``replace``) or used by a
            baseline attribution.
    """
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ExplainError(f"composite name {name!r} is not allowed: use letters, digits, '_', '.', '-'")
    if name in BASELINES:
        raise ExplainError(f"'{name}' is a baseline attribution: register the composite under another name")
    if name in COMPOSITES and not replace:
        raise ExplainError(f"composite '{name}' is registered already: pass replace=True to replace it")

    def register(f: CompositeFactory) -> CompositeFactory:
        COMPOSITES[name] = f
        return f

    return register if factory is None else register(factory)


def options_of(method: str) -> list[str] | None:
    """The option names a registered method takes (None: any)."""
    parameters = list(inspect.signature(COMPOSITES[method]).parameters.values())[1:]
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
        return None
    return [p.name for p in parameters]


def build(method: str, structure: Structure, **options) -> Composite:
    """The composite of the registered method for a model of this structure.

    Options that another registered method takes but this one does not are ignored (so one set of
    options serves a sweep over methods, e.g. ``epsilon``); options no method takes are an error.

    Raises:
        ExplainError: unknown method or option.
    """
    if method not in COMPOSITES:
        raise ExplainError(f"method '{method}' is not an LRP variant: choose one of {', '.join(COMPOSITES)}")
    allowed = options_of(method)
    if allowed is not None:
        known = {name for m in COMPOSITES for name in (options_of(m) or ())}
        unknown = sorted(set(options) - known - set(allowed))
        if unknown:
            raise ExplainError(f"method '{method}' takes no option {', '.join(unknown)}: "
                               f"use {', '.join(allowed) or 'none'}")
        options = {k: v for k, v in options.items() if k in allowed}
    composite = COMPOSITES[method](structure, **options)
    composite.name = method
    return composite


def _first(structure: Structure, method: str) -> Matcher:
    if not structure.input_layers:
        raise ExplainError(f"method '{method}' needs a layer with weights that reads the model's input, and the "
                           "model has none (its input first passes through another layer): use lrp_epsilon, "
                           "lrp_zplus or alpha2beta1")
    return by_name(*structure.input_layers)


def _head(structure: Structure) -> Matcher:
    return by_name(*structure.output_layers)


def _eps(epsilon: float | None) -> float:
    return 1e-6 if epsilon is None else epsilon


@register_composite("lrp_epsilon")
def lrp_epsilon(structure: Structure, epsilon: float | None = None) -> Composite:
    """ε everywhere (interpolation included)."""
    return Composite([(LINEAR, lambda: Epsilon(_eps(epsilon)))] + default_rules(_eps(epsilon)))


@register_composite("lrp_zplus")
def lrp_zplus(structure: Structure) -> Composite:
    """z⁺ everywhere."""
    return Composite([(LINEAR, ZPlus)] + default_rules())


@register_composite("lrp_zplus_zbox")
def lrp_zplus_zbox(structure: Structure, low: float = 0.0, high: float = 1.0) -> Composite:
    """z^B first, z⁺ elsewhere (the study's standard)."""
    return Composite([(_first(structure, "lrp_zplus_zbox"), lambda: ZBox(low, high)), (LINEAR, ZPlus)]
                     + default_rules())


@register_composite("study_published")
def study_published(structure: Structure, low: float = 0.0, high: float = 1.0) -> Composite:
    """The study's published z^B variant first, z⁺ elsewhere."""
    return Composite([(_first(structure, "study_published"), lambda: ZBox(low, high, study_published=True)),
                      (LINEAR, ZPlus)] + default_rules())


@register_composite("epsilon_gamma_box")
def epsilon_gamma_box(structure: Structure, epsilon: float | None = None, gamma: float = 0.25, low: float = 0.0,
                      high: float = 1.0) -> Composite:
    """z^B first, ε on the head, γ elsewhere."""
    return Composite([(_first(structure, "epsilon_gamma_box"), lambda: ZBox(low, high)),
                      (_head(structure), lambda: Epsilon(_eps(epsilon))), (LINEAR, lambda: Gamma(gamma))]
                     + default_rules())


@register_composite("epsilon_plus_flat")
def epsilon_plus_flat(structure: Structure, epsilon: float | None = None) -> Composite:
    """Flat first, ε on the head, z⁺ elsewhere."""
    return Composite([(_first(structure, "epsilon_plus_flat"), Flat),
                      (_head(structure), lambda: Epsilon(_eps(epsilon))), (LINEAR, ZPlus)] + default_rules())


@register_composite("alpha2beta1")
def alpha2beta1(structure: Structure) -> Composite:
    """α = 2, β = 1 everywhere."""
    return Composite([(LINEAR, lambda: AlphaBeta(2.0, 1.0))] + default_rules())


def conservation(method: str, **options) -> str:
    """What the method claims (:attr:`explain.core.Composite.conservation`): exact, bias or none.

    ``exact``: the input relevance sums to the explained target within the rules' stabilisers
    (:mod:`explain.rules`) whatever the biases; ``bias``: only in a network without biases (ε and
    γ give the biases their share); ``none``: no claim.
    """
    structure = Structure(input_layers=("",), output_layers=("",))
    return build(method, structure, **options).conservation
