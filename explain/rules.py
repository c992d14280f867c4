"""LRP rules: small objects of settings that one generic mechanism applies.

A rule turns the relevance ``R`` at a module's output into relevance at its inputs. Linear
layers (``Conv3d``, ``ConvTranspose3d``, interpolation) share one formula: a rule is a list of
*groups*, each a coefficient and *terms* (an input modifier and a parameter modifier); z⁺, γ and
α-β are computed faster through an identity (:class:`SignSplitRule`) but mean exactly this::

    z_g   = Σ_t sign_t · f(in_t(x); θ_t)              (f: the layer with modified parameters)
    R_in  = Σ_g coef_g · Σ_t sign_t · in_t(x) ⊙ J_tᵀ (R / stab(z_g))

where ``J_tᵀ`` is the layer's adjoint (the input gradient) with parameters ``θ_t`` and
``stab(z) = z + ε·sign(z)`` (sign(0) = 1). With that, the usual rules read:

* ε (``Epsilon``): one term (x; W, b).
* z⁺ (``ZPlus``): (x⁺; W⁺) + (x⁻; W⁻), no bias: only positive contributions count (outputs
  without any positive contribution fall back to their negative ones, which conserves relevance).
* z^B (``ZBox``, bounds l ≤ x ≤ h; [0, 0] where every channel is 0): (x; W) − (l; W⁺) − (h; W⁻).
  ``ZBox(study_published=True)`` is the study's published variant: (x; W) − (l; W⁺) − (h; W⁺),
  i.e. max(0, W) where z^B needs min(0, W).
* γ (``Gamma``): (x⁺; W + γW⁺) + (x⁻; W + γW⁻), bias b + γb⁺.
* α-β (``AlphaBeta``): α·[positive group (x⁺; W⁺) + (x⁻; W⁻)] − β·[negative group (x⁺; W⁻) + (x⁻; W⁺)].
* flat (``Flat``): (1; 1) on data voxels: relevance spread evenly over the receptive field.
* w² (``WSquare``): (1; W²).

Non-linear and combining modules have rules of their own: ``Pass`` (activations, BatchNorm that
was not merged: R_in = R), ``Norm`` for sums (R_k = x_k / stab(Σ x) · R: residual additions
split relevance in proportion to their contributions), ``SignalTakesAll`` for gates
(``signal × gate``: R_signal = R, R_gate = 0).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

Tensor = torch.Tensor


def stabilize(z: Tensor, epsilon: float) -> Tensor:
    """``z + ε·sign(z)`` with sign(0) = 1, so the division never explodes."""
    return z + epsilon * torch.where(z >= 0, 1.0, -1.0).to(z.dtype)


# ---------------------------------------------------------------- layer forward and adjoint
def _onednn(x: Tensor, padding) -> bool:
    """Whether a convolution of ``x`` can go straight to oneDNN (CPU float32, integer padding)."""
    return (x.device.type == "cpu" and x.dtype == torch.float32 and not isinstance(padding, str)
            and torch.backends.mkldnn.is_available() and hasattr(torch, "mkldnn_convolution"))


def conv3d(x: Tensor, weight: Tensor, bias: Tensor | None, stride, padding, dilation, groups: int) -> Tensor:
    """``F.conv3d``; on the CPU straight through oneDNN.

    PyTorch's CPU dispatch sends a batch-1 3-D convolution with few channels (N·C·D·H ≤ 20480,
    3-wide kernels, one group) to its native kernel, which on the study's 48×48×19 volumes is
    5–15× slower than oneDNN; the rules' own convolutions skip that choice. The results agree
    to float rounding (about 1e-6 relative).
    """
    if not _onednn(x, padding):
        return F.conv3d(x, weight, bias, stride, padding, dilation, groups)
    return torch.mkldnn_convolution(x.contiguous(), weight.contiguous(), bias, list(padding), list(stride),
                                    list(dilation), groups)


def layer_forward(module: nn.Module, x: Tensor, weight: Tensor | None, bias: Tensor | None) -> Tensor:
    """The module's linear map with replaced parameters (parameter-free modules: as they are)."""
    if isinstance(module, nn.Conv3d):
        return conv3d(x, weight, bias, module.stride, module.padding, module.dilation, module.groups)
    if isinstance(module, nn.ConvTranspose3d):
        return F.conv_transpose3d(x, weight, bias, module.stride, module.padding, module.output_padding,
                                  module.groups, module.dilation)
    raise TypeError(f"no linear forward for {type(module).__name__}")


class Adjoint:
    """Jᵀ: the input gradient of a module's linear map with parameters ``weight``, prepared once.

    For a stride-1 ``Conv3d`` with one group, Jᵀ is the convolution with the flipped, transposed
    kernel and padding d(k − 1) − p, which :func:`conv3d` runs through oneDNN; the flipped kernel
    is built here once, so a sweep's many backward passes share it.
    """

    def __init__(self, module: nn.Module, weight: Tensor):
        if not isinstance(module, nn.Conv3d | nn.ConvTranspose3d):
            raise TypeError(f"no adjoint for {type(module).__name__}")
        self.module, self.weight = module, weight
        self.flipped, self.padding = None, None
        if (isinstance(module, nn.Conv3d) and module.groups == 1 and not isinstance(module.padding, str)
                and all(v == 1 for v in module.stride)):
            padding = [d * (k - 1) - p for d, k, p in zip(module.dilation, weight.shape[2:], module.padding)]
            if min(padding) >= 0:
                self.flipped, self.padding = weight.flip(2, 3, 4).transpose(0, 1).contiguous(), padding

    def __call__(self, s: Tensor, input_shape: torch.Size) -> Tensor:
        """Jᵀ s for an input of ``input_shape`` (the batch size is taken from ``s``)."""
        module = self.module
        if isinstance(module, nn.ConvTranspose3d):
            return conv3d(s, self.weight, None, module.stride, module.padding, module.dilation, module.groups)
        shape = (s.shape[0], *input_shape[1:])
        if self.flipped is not None:
            out = conv3d(s, self.flipped, None, (1, 1, 1), self.padding, module.dilation, 1)
            if tuple(out.shape) == tuple(shape):
                return out
        return torch.nn.grad.conv3d_input(shape, self.weight, s, module.stride, module.padding,
                                          module.dilation, module.groups)


def layer_adjoint(module: nn.Module, s: Tensor, weight: Tensor, input_shape: torch.Size) -> Tensor:
    """Jᵀ s: the input gradient of the module's linear map with parameters ``weight``."""
    return Adjoint(module, weight)(s, input_shape)


def has_weights(module: nn.Module) -> bool:
    """True for the layers whose parameters the rules modify."""
    return isinstance(module, nn.Conv3d | nn.ConvTranspose3d)


@dataclass(frozen=True)
class Term:
    """One ``sign · f(in(x); θ)`` of a rule (see the module docstring)."""

    sign: float
    inputs: Callable[[Tensor], Tensor]
    weight: Callable[[Tensor], Tensor]
    bias: Callable[[Tensor | None], Tensor | None]


def _identity(t):
    return t


def _no_bias(b):
    return None


def _positive(t):
    return t.clamp(min=0)


def _negative(t):
    return t.clamp(max=0)


class Rule:
    """Base class: turns output relevance into relevance for each input (None: no relevance)."""

    name = "rule"

    def relevance(self, module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor, relevance: Tensor,
                  cache: dict) -> tuple[Tensor | None, ...]:
        """Relevance of each input, given the module's stored inputs, output and output relevance."""
        raise NotImplementedError

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
                    z = sum(sign * layer_forward(module, xm, w, t.bias(module.bias))
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
            s = relevance / stabilize(z.detach(), self.epsilon)
            (gradient,) = torch.autograd.grad(z, xg, s)
        return x * gradient

    def __repr__(self) -> str:
        return f"{type(self).__name__}(epsilon={self.epsilon})"


class Epsilon(LinearRule):
    """LRP-ε: ``R_i = Σ_j x_i w_ij / stab(z_j) · R_j`` with the layer's bias in ``z_j``."""

    name = "epsilon"

    def __init__(self, epsilon: float = 1e-6):
        super().__init__([(1.0, [Term(1.0, _identity, _identity, _identity)])], epsilon, use_output=True)


def data_mask(x: Tensor) -> Tensor:
    """(N, 1, D, H, W): 1 where any input channel is non-zero (inside the skull-stripped brain)."""
    return (x != 0).any(dim=1, keepdim=True).to(x.dtype)


class ZBox(LinearRule):
    """LRP-z^B for inputs bounded by [low, high] (the first layer); no bias.

    Voxels where every input channel is 0 (outside the skull-stripped brain) can take no other
    value, so their bounds are [0, 0] and they receive no relevance.

    Args:
        low: lower bound l of the inputs (e.g. 0 after min-max normalisation).
        high: upper bound h.
        study_published: the study's published sign variant (max(0, W) for the ``h`` term).
    """

    name = "zbox"

    def __init__(self, low: float = 0.0, high: float = 1.0, study_published: bool = False, epsilon: float = 1e-9):
        self.low, self.high, self.study_published = low, high, study_published
        high_weight = _positive if study_published else _negative
        super().__init__([(1.0, [Term(1.0, _identity, _identity, _no_bias),
                                 Term(-1.0, lambda x: low * data_mask(x).expand_as(x), _positive, _no_bias),
                                 Term(-1.0, lambda x: high * data_mask(x).expand_as(x), high_weight, _no_bias)])],
                         epsilon)

    def __repr__(self) -> str:
        return f"ZBox(low={self.low}, high={self.high}, study_published={self.study_published})"


class Flat(LinearRule):
    """LRP-flat: relevance spread evenly over each output's receptive field (weights 1).

    Inputs are 1 on data voxels and 0 where every channel is 0 (outside the brain).
    """

    name = "flat"

    def __init__(self, epsilon: float = 1e-9):
        super().__init__([(1.0, [Term(1.0, lambda x: data_mask(x).expand_as(x), torch.ones_like, _no_bias)])],
                         epsilon)


class WSquare(LinearRule):
    """LRP-w²: relevance in proportion to squared weights (inputs 1)."""

    name = "wsquare"

    def __init__(self, epsilon: float = 1e-9):
        super().__init__([(1.0, [Term(1.0, torch.ones_like, lambda w: w * w, _no_bias)])], epsilon)


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
    """

    scales: tuple[float, float] = (1.0, 1.0)

    def __init__(self, epsilon: float = 1e-9):
        self.epsilon = epsilon

    def coefficients(self, z0: Tensor, b: Tensor, bias: Tensor | None) -> tuple[Tensor, Tensor]:
        """``(c_W, c_B)``: the factors of the output relevance (the same object when equal)."""
        raise NotImplementedError

    def relevance(self, module, inputs, output, relevance, cache):
        if not has_weights(module):
            raise TypeError(f"{type(self).__name__} needs a convolution, got {type(module).__name__}")
        x = inputs[0]
        prepared = cache.get("basis")
        if prepared is None:
            prepared = cache["basis"] = self._prepare(module, x, output)
        if prepared[0] == "one":
            _, adjoint, c = prepared
            return (x * adjoint(relevance * c, x.shape),)
        _, abs_x, adjoint_w, adjoint_abs, c_w, c_b = prepared
        s_b = relevance * c_b
        out = x * adjoint_w(s_b if c_w is c_b else relevance * c_w, x.shape)
        return (out.addcmul_(abs_x, adjoint_abs(s_b, x.shape)),)

    def _prepare(self, module: nn.Module, x: Tensor, output: Tensor) -> tuple:
        """The factors and adjoints shared by every backward pass of one explanation."""
        bias = None if module.bias is None else module.bias.view(1, -1, *([1] * (output.dim() - 2)))
        z0 = output if bias is None else output - bias
        non_negative = bool((x >= 0).all())
        abs_x, abs_weight = x if non_negative else x.abs(), module.weight.abs()
        c_w, c_b = self.coefficients(z0, layer_forward(module, abs_x, abs_weight, None), bias)
        a, b = self.scales
        if c_w is c_b and non_negative:
            return ("one", Adjoint(module, a * module.weight + b * abs_weight), c_b)
        scaled_w = module.weight if a == 1 else a * module.weight
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
    negative contributions instead (then ``xW`` itself), so relevance is conserved.
    """

    name = "zplus"

    def coefficients(self, z0, b, bias):
        z_plus = (z0 + b) / 2
        dead = z_plus <= self.epsilon
        c_b = torch.where(dead, 0.0, 0.5 / (z_plus + self.epsilon))
        if not bool(dead.any()):
            return c_b, c_b
        return c_b + torch.where(dead, 1.0 / stabilize(z0, self.epsilon), 0.0), c_b


class Gamma(SignSplitRule):
    """LRP-γ: positive contributions amplified: ``xW + γ(x⁺W⁺ + x⁻W⁻)``, bias ``b + γb⁺``.

    ``z = (1 + γ/2)·z₀ + (γ/2)·B + b + γb⁺``: scales ``(1 + γ/2, γ/2)``, ``c_W = c_B = 1/stab(z)``.
    """

    name = "gamma"

    def __init__(self, gamma: float = 0.25, epsilon: float = 1e-6):
        super().__init__(epsilon)
        self.gamma = gamma
        self.scales = (1 + gamma / 2, gamma / 2)

    def coefficients(self, z0, b, bias):
        g = self.gamma
        z = (1 + g / 2) * z0 + (g / 2) * b
        if bias is not None:
            z = z + bias + g * bias.clamp(min=0)
        inverse = 1.0 / stabilize(z, self.epsilon)
        return inverse, inverse

    def __repr__(self) -> str:
        return f"Gamma(gamma={self.gamma})"


class AlphaBeta(SignSplitRule):
    """LRP-αβ: ``α R⁺ − β R⁻``; positive and negative contributions normalised apart (α − β = 1)."""

    name = "alphabeta"

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


class Pass(Rule):
    """Relevance passes unchanged (activations, unmerged BatchNorm, sigmoid)."""

    name = "pass"

    def relevance(self, module, inputs, output, relevance, cache):
        return (relevance,) + (None,) * (len(inputs) - 1)


class Norm(Rule):
    """Sums: ``R_k = x_k / stab(Σ_k x_k) · R`` (residual additions split proportionally)."""

    name = "norm"

    def __init__(self, epsilon: float = 1e-9):
        self.epsilon = epsilon

    def relevance(self, module, inputs, output, relevance, cache):
        s = relevance / stabilize(output, self.epsilon)
        return tuple(x * s for x in inputs)


class SignalTakesAll(Rule):
    """Gates ``signal × gate``: all relevance goes to the signal, none to the gate."""

    name = "signal_takes_all"

    def relevance(self, module, inputs, output, relevance, cache):
        return (relevance,) + (None,) * (len(inputs) - 1)
