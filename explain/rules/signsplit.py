"""z⁺, γ and α-β through the sign-split identity (one extra forward, shared per-output factors)."""

from __future__ import annotations

import torch
from torch import nn

from explain.backend import Adjoint, bias_view, has_weights, layer_forward
from explain.rules.base import Rule, stabilize

Tensor = torch.Tensor


class SignSplitRule(Rule):
    """Rules whose contributions mix ``x_i w_ij`` and ``|x_i||w_ij|`` (z⁺, γ, α-β).

    Since ``x⁺W⁺ + x⁻W⁻ = (xW + |x||W|) / 2`` and ``x⁺W⁻ + x⁻W⁺ = (xW − |x||W|) / 2``, these rules
    need the layer's own output ``z₀ = Wx`` (from the forward pass, bias removed), one extra
    forward ``B = |W| ∗ |x|`` and two adjoints::

        R_in = x ⊙ (a·W)ᵀ (c_W ⊙ R)  +  |x| ⊙ (b·|W|)ᵀ (c_B ⊙ R)

    with the rule's scalars ``(a, b)`` (:attr:`scales`) and per-output factors ``(c_W, c_B)``
    (:meth:`coefficients`, from ``z₀`` and ``B``), prepared once per explanation and shared by
    every backward pass of a sweep. When ``c_W = c_B`` and the layer's input is non-negative
    (after ReLU, or image intensities), ``|x| = x`` and the two adjoints are one, with the
    weight ``a·W + b·|W|`` (z⁺: ``2W⁺``): then z⁺ costs one extra forward and one adjoint.

    A rule with :attr:`split_non_negative` (z⁺) keeps that combined adjoint on a non-negative input
    even where ``c_W ≠ c_B`` and adds the difference through one more adjoint:
    ``R_in = x ⊙ (a·W + b·|W|)ᵀ(c_B ⊙ R) + x ⊙ (a·W)ᵀ((c_W − c_B) ⊙ R)`` (the same sum, since
    ``|x| = x``). The two-adjoint form subtracts ``x ⊙ Wᵀ(c_B R)`` from ``x ⊙ |W|ᵀ(c_B R)`` to get
    the positive contributions; where ``c_B`` is large (outputs whose ``z⁺`` is small against their
    magnitude) float32 rounding of that difference is spread over every input of the output, which
    made float32 z⁺ on segresnet3d differ from float64 by tens of percent. Such a rule also takes
    ``z₀ = Wx`` from one more forward without the bias rather than as ``output − bias``: where
    ``|Wx| ≪ |bias|`` (inputs near 0 after a ReLU) the subtraction leaves only float32 rounding of
    the bias, and a dead output divides by it (51 % relative L1 between float32 and float64 z⁺ on an
    untrained segresnet3d of width 1/16 at 48×48×19, 0.8 % with the bias-free forward).
    """

    scales: tuple[float, float] = (1.0, 1.0)
    split_non_negative: bool = False

    def __init__(self, epsilon: float = 1e-9):
        self.epsilon = epsilon

    def coefficients(self, z0: Tensor, b: Tensor, bias: Tensor | None) -> tuple[Tensor, Tensor]:
        """``(c_W, c_B)``: the factors of the output relevance (the same object when equal)."""
        raise NotImplementedError

    def inverse_denominator(self, c_w: Tensor, c_b: Tensor) -> Tensor:
        """``1 / |stab(z'_j)|`` from the factors (for :meth:`stabiliser_bound`)."""
        raise NotImplementedError

    def stabiliser_bound(self, relevance, cache):
        if self.conservation == "none":
            return float("inf")
        prepared = cache["basis"]
        if prepared[0] == "one":
            c_w = c_b = prepared[2]
        else:
            c_w, c_b = prepared[-2:]
        return self.epsilon * float((relevance * self.inverse_denominator(c_w, c_b)).abs().sum())

    def relevance(self, module, inputs, output, relevance, cache):
        if not has_weights(module):
            raise TypeError(f"{type(self).__name__} needs a layer with weights, got {type(module).__name__}")
        x = inputs[0]
        prepared = cache.get("basis")
        if prepared is None:
            prepared = cache["basis"] = self._prepare(module, x, output)
        if prepared[0] == "one":
            _, adjoint, c = prepared
            return (x * adjoint(relevance * c, x.shape),)
        if prepared[0] == "split":
            _, combined, adjoint_w, c_dead, _, c_b = prepared
            out = x * combined(relevance * c_b, x.shape)
            return (out.addcmul_(x, adjoint_w(relevance * c_dead, x.shape)),)
        _, abs_x, adjoint_w, adjoint_abs, c_w, c_b = prepared
        s_b = relevance * c_b
        out = x * adjoint_w(s_b if c_w is c_b else relevance * c_w, x.shape)
        return (out.addcmul_(abs_x, adjoint_abs(s_b, x.shape)),)

    def _prepare(self, module: nn.Module, x: Tensor, output: Tensor) -> tuple:
        """The factors and adjoints shared by every backward pass of one explanation."""
        bias = None if module.bias is None else bias_view(module, module.bias, output.dim())
        if bias is not None and self.split_non_negative:  # z⁺: see the class docstring
            z0 = layer_forward(module, x, module.weight, None, output.shape)
        else:
            z0 = output if bias is None else output - bias
        non_negative = bool((x >= 0).all())
        abs_x, abs_weight = x if non_negative else x.abs(), module.weight.abs()
        c_w, c_b = self.coefficients(z0, layer_forward(module, abs_x, abs_weight, None, output.shape), bias)
        a, b = self.scales
        if c_w is c_b and non_negative:
            return ("one", Adjoint(module, a * module.weight + b * abs_weight), c_b)
        scaled_w = module.weight if a == 1 else a * module.weight
        if non_negative and self.split_non_negative:
            return ("split", Adjoint(module, a * module.weight + b * abs_weight), Adjoint(module, scaled_w),
                    c_w - c_b, c_w, c_b)
        scaled_abs = abs_weight if b == 1 else b * abs_weight
        return ("two", abs_x, Adjoint(module, scaled_w), Adjoint(module, scaled_abs), c_w, c_b)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(epsilon={self.epsilon})"


def _reciprocal(z: Tensor, epsilon: float) -> Tensor:
    """``1 / stab(z)`` where ``|z| > ε``, 0 where a group has no contribution to distribute."""
    return torch.where(z.abs() <= epsilon, 0.0, 1.0 / stabilize(z, epsilon))


class ZPlus(SignSplitRule):
    """LRP-z⁺: only positive contributions ``x⁺W⁺ + x⁻W⁻ = (xW + |x||W|)/2`` (no bias).

    ``R_i = Σ_j (x_i w_ij)⁺ / z⁺_j · R_j``. An output with no positive contribution at all
    (possible when inputs are mixed-sign, e.g. after LeakyReLU) sends its relevance back along its
    negative contributions instead (then ``xW`` itself), so relevance is conserved (``exact``,
    within ``Σ_j |R_j| ε / (z⁺_j + ε)`` per layer).

    "No positive contribution" is decided relative to the output's own magnitude: output ``j`` is
    *dead* when ``z⁺_j ≤ ε + τ·B_j`` with ``B_j = Σ_i |x_i||w_ij|`` (the one extra forward) and
    ``τ = relative`` (default 1e-5). ``z⁺ = (z₀ + B)/2`` is computed by a cancellation whose
    rounding error is of order ``u·B_j`` (``u`` the unit roundoff: 6e-8 in float32, 1e-16 in
    float64, times the number of summed terms at worst), so an absolute threshold alone lets float32
    treat rounding noise as a positive contribution and divide by it, while float64 calls the same
    output dead; with ``τ`` well above float32's rounding both precisions decide alike. An output
    whose positive share ``z⁺_j / B_j`` is below ``τ`` loses nothing measurable by being routed
    along ``xW`` (its positive part is ``≤ τ`` of its mass).

    Args:
        epsilon: the absolute stabiliser ε.
        relative: ``τ``, the dead-output threshold relative to ``B_j``.
    """

    name = "zplus"
    conservation = "exact"
    split_non_negative = True

    def __init__(self, epsilon: float = 1e-9, relative: float = 1e-5):
        super().__init__(epsilon)
        if not 0.0 <= relative < 1.0:
            raise ValueError(f"relative must be in [0, 1), got {relative}")
        self.relative = relative

    def dead(self, z_plus: Tensor, b: Tensor) -> Tensor:
        """Outputs without a resolvable positive contribution: ``z⁺ ≤ ε + τ·B`` (class docstring)."""
        return z_plus <= self.epsilon + self.relative * b

    def coefficients(self, z0, b, bias):
        z_plus = (z0 + b) / 2
        dead = self.dead(z_plus, b)
        c_b = torch.where(dead, 0.0, 0.5 / (z_plus + self.epsilon))
        if not bool(dead.any()):
            return c_b, c_b
        return c_b + torch.where(dead, 1.0 / stabilize(z0, self.epsilon), 0.0), c_b

    def inverse_denominator(self, c_w, c_b):
        return 2 * c_b + (c_w - c_b).abs()  # live: 1/(z⁺ + ε); dead: 1/|stab(z₀)|

    def __repr__(self) -> str:
        return f"ZPlus(epsilon={self.epsilon}, relative={self.relative})"


class Gamma(SignSplitRule):
    """LRP-γ, sign-aware (Montavon et al. 2019, sec. 10.2.3; as Zennit's ``Gamma``).

    With ``s_j = sign(z_j)`` of the layer's output (bias included; sign(0) = 1)::

        z^γ_j = Σ_i (z_ij + γ z_ij^(s_j)) + b_j + γ b_j^(s_j),   R_i = Σ_j (z_ij + γ z_ij^(s_j)) / stab(z^γ_j) · R_j

    where ``t^(+) = max(t, 0)`` and ``t^(−) = min(t, 0)``: a positive output amplifies its positive
    contributions, a negative output its negative ones, so ``|z^γ_j| ≥ |z_j|`` and sign(z^γ_j) =
    s_j: the denominators are never closer to 0 than the ε rule's. In the split form
    (:class:`SignSplitRule`) ``z_ij + γ z_ij^(s) = (1 + γ/2) x_i w_ij + s (γ/2) |x_i||w_ij|``:
    scales ``(1 + γ/2, γ/2)``, ``c_W = 1/stab(z^γ)``, ``c_B = s·c_W`` (one adjoint on non-negative
    inputs when no output is negative). The bias is one more contribution (a constant input 1),
    amplified like the others; Zennit adds the modified bias once per sign term instead.

    Conservation ``bias``: without biases, per layer
    ``|Σ_i R_i − Σ_j R_j| ≤ Σ_j |R_j| ε / (|z^γ_j| + ε) ≤ Σ_j |R_j| ε / (|z_j| + ε)``.
    """

    name = "gamma"
    conservation = "bias"

    def __init__(self, gamma: float = 0.25, epsilon: float = 1e-6):
        if gamma < 0:
            raise ValueError(f"gamma must be >= 0, got {gamma}")
        super().__init__(epsilon)
        self.gamma = gamma
        self.scales = (1 + gamma / 2, gamma / 2)

    def coefficients(self, z0, b, bias):
        g = self.gamma  # bias β: β^(s) = (β + s|β|)/2, so z^γ = (1 + γ/2)(z₀ + β) + s(γ/2)(B + |β|)
        z, b = (z0, b) if bias is None else (z0 + bias, b + bias.abs())
        if not bool((z < 0).any()):
            inverse = 1.0 / stabilize((1 + g / 2) * z + (g / 2) * b, self.epsilon)
            return inverse, inverse
        s = torch.where(z < 0, -1.0, 1.0).to(z.dtype)
        inverse = 1.0 / stabilize((1 + g / 2) * z + (g / 2) * s * b, self.epsilon)
        return inverse, s * inverse

    def inverse_denominator(self, c_w, c_b):
        return c_w.abs()

    def __repr__(self) -> str:
        return f"Gamma(gamma={self.gamma})"


class AlphaBeta(SignSplitRule):
    """LRP-αβ: ``α R⁺ − β R⁻``; positive and negative contributions normalised apart (α − β = 1).

    Conservation ``none``: an output whose negative group is empty hands on ``α R_j``.
    """

    name = "alphabeta"
    conservation = "none"

    def __init__(self, alpha: float = 2.0, beta: float = 1.0, epsilon: float = 1e-9):
        if abs(alpha - beta - 1.0) > 1e-9:
            raise ValueError(f"alpha - beta must be 1 (got alpha={alpha}, beta={beta})")
        super().__init__(epsilon)
        self.alpha, self.beta = alpha, beta

    def coefficients(self, z0, b, bias):
        c_pos = _reciprocal((z0 + b) / 2, self.epsilon)  # a group without contributions distributes nothing
        c_neg = _reciprocal((z0 - b) / 2, self.epsilon)
        return (self.alpha * c_pos - self.beta * c_neg) / 2, (self.alpha * c_pos + self.beta * c_neg) / 2

    def __repr__(self) -> str:
        return f"AlphaBeta(alpha={self.alpha}, beta={self.beta})"


