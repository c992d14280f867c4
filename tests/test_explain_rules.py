"""Each rule on every layer type with weights (Linear, Conv1d/2d/3d, ConvTranspose1d/2d/3d) against a
dense reference built from the explicit matrix; the sign-aware γ rule on the issue's minimal case and
on outputs with z < 0 and near-zero denominators."""

import copy

import pytest
import torch
from torch import nn

from explain.backend import LINEAR_LAYERS, layer_adjoint, layer_forward
from explain.core import Composite, by_type
from explain.rules import AlphaBeta, Epsilon, Flat, Gamma, WSquare, ZBox, ZPlus


@pytest.fixture(autouse=True)
def float64():
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


def _matrix(layer: nn.Module, in_shape) -> torch.Tensor:
    """M with layer(x) = M x (+ bias), from the layer applied to every unit vector."""
    n = int(torch.tensor(in_shape).prod())
    basis = torch.eye(n).reshape(n, *in_shape)
    with torch.no_grad():
        bias = None if layer.bias is None else layer.bias.detach().clone()
        if bias is not None:
            layer.bias.zero_()
        columns = layer(basis).reshape(n, -1)
        if bias is not None:
            layer.bias.copy_(bias)
    return columns.T  # (out, in)


def _with_weight(layer, weight):
    clone = copy.deepcopy(layer)
    with torch.no_grad():
        clone.weight.copy_(weight)
    clone.bias = None
    return clone


def _stab(z, eps):
    return z + eps * torch.where(z >= 0, 1.0, -1.0)


def _out_channels(layer):
    return layer.out_features if isinstance(layer, nn.Linear) else layer.out_channels


def _gamma_parts(m, xv, bias, g):
    """Sign-aware γ (Montavon et al. 2019): per output j the contributions z_ij = m_ij x_i and b_j;
    z_j ≥ 0 amplifies the positive ones (z_ij + γ z_ij⁺), z_j < 0 the negative ones (z_ij + γ z_ij⁻).
    Returns the amplified contributions (out, in) and the amplified bias (out,)."""
    contrib = m * xv
    positive = (contrib.sum(1) + bias >= 0)[:, None]
    amplified = contrib + g * torch.where(positive, contrib.clamp(min=0), contrib.clamp(max=0))
    return amplified, bias + g * torch.where(positive[:, 0], bias.clamp(min=0), bias.clamp(max=0))


def _gamma_reference(m, xv, r, bias, g, eps):
    amplified, amplified_bias = _gamma_parts(m, xv, bias, g)
    return (amplified * (r / _stab(amplified.sum(1) + amplified_bias, eps))[:, None]).sum(0)


def _dense(layer, x, relevance, rule, eps):
    """The rule written out on the dense matrix (the slow, obvious way).

    A padding mode other than zeros is a padding layer (copies: the relevance of the copies is
    summed, its gradient) followed by the unpadded convolution."""
    if getattr(layer, "padding_mode", "zeros") != "zeros":
        inner = copy.deepcopy(layer)
        inner.padding_mode, inner.padding = "zeros", (0,) * len(layer.padding)
        pad = [p for p in reversed(layer.padding) for _ in range(2)]
        xg = x.clone().requires_grad_(True)
        padded = torch.nn.functional.pad(xg, pad, mode=layer.padding_mode)
        inner_relevance = _dense(inner, padded.detach(), relevance, rule, eps).reshape(padded.shape)
        return torch.autograd.grad(padded, xg, inner_relevance)[0].reshape(-1)
    shape = x.shape[1:]
    xv, r = x.reshape(-1), relevance.reshape(-1)
    w = layer.weight.detach()
    m = _matrix(layer, shape)
    mp, mn = m.clamp(min=0), m.clamp(max=0)
    xp, xn = xv.clamp(min=0), xv.clamp(max=0)
    bias = torch.zeros(m.shape[0]) if layer.bias is None else \
        layer.bias.detach().repeat_interleave(m.shape[0] // _out_channels(layer))
    if rule == "epsilon":
        contrib = m * xv
        return (contrib * (r / _stab(contrib.sum(1) + bias, eps))[:, None]).sum(0)
    if rule == "zplus":
        contrib = mp * xp + mn * xn
        dead = contrib.sum(1).abs() <= eps  # no positive contribution: fall back to the negative ones
        contrib = torch.where(dead[:, None], mn * xp + mp * xn, contrib)
        return (contrib * (r / _stab(contrib.sum(1), eps))[:, None]).sum(0)
    data = (x[0] != 0).any(0).reshape(-1).repeat(x.shape[1]).to(x.dtype)  # per input element
    if rule == "zbox":
        contrib = m * xv - mp * (-0.5 * data) - mn * (1.5 * data)  # bounds l = -0.5, h = 1.5 on data
        return (contrib * (r / _stab(contrib.sum(1), eps))[:, None]).sum(0)
    if rule == "gamma":
        return _gamma_reference(m, xv, r, bias, 0.25, eps)
    if rule == "alphabeta":
        pos, neg = mp * xp + mn * xn, mn * xp + mp * xn
        return (2 * pos * (r / _stab(pos.sum(1), eps))[:, None]).sum(0) - \
            (neg * (r / _stab(neg.sum(1), eps))[:, None]).sum(0)
    if rule == "flat":
        ones = _matrix(_with_weight(layer, torch.ones_like(w)), shape) * data
        return (ones * (r / _stab(ones.sum(1), eps))[:, None]).sum(0)
    if rule == "wsquare":
        sq = _matrix(_with_weight(layer, w * w), shape)
        return (sq * (r / _stab(sq.sum(1), eps))[:, None]).sum(0)
    raise AssertionError(rule)


RULES = {"epsilon": (lambda: Epsilon(0.1), 0.1), "zplus": (ZPlus, 1e-9),
         "zbox": (lambda: ZBox(-0.5, 1.5), 1e-9), "gamma": (lambda: Gamma(0.25, 1e-6), 1e-6),
         "alphabeta": (lambda: AlphaBeta(2.0, 1.0), 1e-9), "flat": (Flat, 1e-9), "wsquare": (WSquare, 1e-9)}
LAYERS = {  # layer, input shape without the batch axis
    "linear": (lambda: nn.Linear(6, 4), (6,)),
    "conv1d": (lambda: nn.Conv1d(2, 3, 3, padding=1), (2, 7)),
    "conv2d": (lambda: nn.Conv2d(2, 3, 3, padding=1), (2, 4, 5)),
    "conv2d_strided_dilated": (lambda: nn.Conv2d(2, 4, 3, stride=2, padding=2, dilation=2, groups=2), (2, 6, 5)),
    "conv2d_reflect": (lambda: nn.Conv2d(2, 3, 3, padding=1, padding_mode="reflect"), (2, 4, 5)),
    "conv2d_same": (lambda: nn.Conv2d(2, 3, (2, 3), padding="same"), (2, 4, 5)),
    "conv3d": (lambda: nn.Conv3d(2, 3, 3, padding=1), (2, 3, 4, 4)),
    "conv3d_strided": (lambda: nn.Conv3d(2, 3, 3, stride=2, padding=1), (2, 3, 4, 4)),
    "convtranspose1d": (lambda: nn.ConvTranspose1d(2, 3, 3, stride=2, padding=1, output_padding=1), (2, 5)),
    "convtranspose2d": (lambda: nn.ConvTranspose2d(2, 3, 2, stride=2), (2, 3, 4)),
    "convtranspose3d": (lambda: nn.ConvTranspose3d(2, 3, 2, stride=2), (2, 3, 4, 4)),
}
LINEAR = by_type(*LINEAR_LAYERS)
pytestmark = pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel")  # the asymmetric case


def _explain(layer, x, relevance_out=None, factory=Epsilon):
    model = nn.Sequential(layer)
    with Composite([(LINEAR, factory)]).context(model):
        xg = x.clone().requires_grad_(True)
        out = model(xg)
        relevance_out = torch.randn_like(out) if relevance_out is None else relevance_out
        (relevance,) = torch.autograd.grad(out, xg, relevance_out)
    assert not layer._forward_hooks and "forward" not in vars(layer)
    return relevance, relevance_out


@pytest.mark.parametrize("rule", list(RULES))
@pytest.mark.parametrize("layer_name", list(LAYERS))
@pytest.mark.parametrize("inputs", ["mixed", "non-negative"])  # z⁺ and γ take one adjoint on x ≥ 0
def test_rule_equals_dense_reference(rule, layer_name, inputs):
    torch.manual_seed(1)
    make, shape = LAYERS[layer_name]
    layer = make()
    with torch.no_grad():
        layer.bias.normal_()
    x = torch.randn(1, *shape)
    if inputs == "non-negative":
        x = x.abs()
    x[..., 0] = 0.0  # positions outside the data: no z^B bounds, no flat input
    factory, eps = RULES[rule]
    relevance, relevance_out = _explain(layer, x, factory=factory)
    expected = _dense(layer, x, relevance_out, rule, eps).reshape(x.shape)
    assert torch.allclose(relevance, expected, rtol=1e-7, atol=1e-9)


def test_gamma_minimal_case_of_the_issue():
    """Weights [1, −1], input [1, 1.249]: z = −0.249 < 0, so γ amplifies the negative contribution:
    [1, −1.249·1.25] / (1 − 1.56125) = [−1.78, 2.78]; the old rule amplified the positive one and
    divided by 1.25 − 1.249 = 0.001: [1248.7, −1247.7]."""
    x, m = torch.tensor([1.0, 1.249]), torch.tensor([[1.0, -1.0]])
    reference = _gamma_reference(m, x, torch.ones(1), torch.zeros(1), 0.25, 1e-6)
    assert torch.allclose(reference, torch.tensor([-1.0 / 0.56125, 1.56125 / 0.56125]), atol=1e-9)
    assert reference.numpy().round(2).tolist() == [-1.78, 2.78]
    layer = nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        layer.weight.copy_(m)
    relevance, _ = _explain(layer, x[None], torch.ones(1, 1), lambda: Gamma(0.25, 1e-6))
    assert torch.allclose(relevance[0], reference, atol=1e-9)


@pytest.mark.parametrize("layer_name", ["linear", "conv2d", "conv3d", "convtranspose2d"])
def test_gamma_on_negative_and_near_zero_outputs(layer_name):
    """Mixed-sign weights and inputs; outputs of both signs, some pushed to |z| = 1e-7 of either sign
    by the bias. The rule equals the reference; every input relevance stays within (1 + γ)/γ · Σ|R_j|
    (the sign-aware bound: |z^γ_j| is at least γ times its amplified side); and the layer conserves
    relevance up to the bias's share: |Σ R_in + Σ_j R_j b^γ_j / stab(z^γ_j) − Σ R_j| is within the
    stabiliser's tolerance Σ_j |R_j| ε / (|z^γ_j| + ε)."""
    torch.manual_seed(3)
    make, shape = LAYERS[layer_name] if layer_name != "linear" else (lambda: nn.Linear(6, 12), (6,))
    layer = make()
    x = torch.randn(1, *shape)
    with torch.no_grad():
        layer.bias.zero_()
        z = layer(x)
        channels = torch.arange(len(layer.bias))
        near = channels % 2 == 0
        nudge = torch.where(channels % 4 == 0, 1e-7, -1e-7)
        layer.bias.copy_(torch.where(near, -z.transpose(0, 1).reshape(len(near), -1)[:, 0] + nudge, 0.0))
        z = layer(x)
    assert (z < -1e-3).any() and (z > 1e-3).any() and (z.abs() < 2e-7).sum() >= 2
    relevance, relevance_out = _explain(layer, x, factory=lambda: Gamma(0.25, 1e-6))
    expected = _dense(layer, x, relevance_out, "gamma", 1e-6).reshape(x.shape)
    assert torch.allclose(relevance, expected, rtol=1e-7, atol=1e-9)
    r = relevance_out.reshape(-1)
    assert float(relevance.abs().max()) <= 5.0 * float(r.abs().sum())
    m = _matrix(layer, shape)
    bias = layer.bias.detach().repeat_interleave(m.shape[0] // _out_channels(layer))
    amplified, amplified_bias = _gamma_parts(m, x.reshape(-1), bias, 0.25)
    z_gamma = amplified.sum(1) + amplified_bias
    assert (z_gamma.abs() >= z.reshape(-1).abs() - 1e-12).all()  # never closer to 0 than z itself
    bias_share = float((r * amplified_bias / _stab(z_gamma, 1e-6)).sum())
    tolerance = float((r.abs() * 1e-6 / (z_gamma.abs() + 1e-6)).sum())
    assert abs(float(relevance.sum()) + bias_share - float(r.sum())) <= tolerance + 1e-9


@pytest.mark.parametrize("kwargs", [dict(kernel_size=3, padding=1), dict(kernel_size=3, padding=2, dilation=2),
                                    dict(kernel_size=(1, 3, 3), padding=(0, 1, 1)), dict(kernel_size=1),
                                    dict(kernel_size=3, padding=1, stride=2), dict(kernel_size=3, groups=2)])
def test_onednn_forward_and_adjoint_equal_pytorch(kwargs):
    torch.set_default_dtype(torch.float32)  # the oneDNN path is float32 only
    torch.manual_seed(0)
    conv = torch.nn.Conv3d(4, 6, **kwargs)
    x = torch.randn(1, 4, 7, 9, 8)
    expected = torch.nn.functional.conv3d(x, conv.weight, conv.bias, conv.stride, conv.padding, conv.dilation,
                                          conv.groups)
    assert torch.allclose(layer_forward(conv, x, conv.weight, conv.bias), expected, atol=1e-5)
    s = torch.randn_like(expected)
    reference = torch.nn.grad.conv3d_input(x.shape, conv.weight, s, conv.stride, conv.padding, conv.dilation,
                                           conv.groups)
    assert torch.allclose(layer_adjoint(conv, s, conv.weight, x.shape), reference, atol=1e-5)


@pytest.mark.parametrize("layer_name", list(LAYERS))
def test_adjoint_is_the_input_gradient(layer_name):
    torch.manual_seed(2)
    make, shape = LAYERS[layer_name]
    layer = make()
    x = torch.randn(2, *shape, requires_grad=True)
    out = layer(x)
    s = torch.randn_like(out)
    (gradient,) = torch.autograd.grad(out, x, s)
    assert torch.allclose(layer_adjoint(layer, s, layer.weight.detach(), x.shape), gradient, atol=1e-12)
    assert torch.allclose(layer_forward(layer, x.detach(), layer.weight, layer.bias, out.shape), out, atol=1e-12)
