"""Each rule on Conv3d and ConvTranspose3d against a dense reference built from the explicit matrix."""

import pytest
import torch
from torch import nn

from explain.core import Composite, by_type
from explain.rules import AlphaBeta, Epsilon, Flat, Gamma, WSquare, ZBox, ZPlus, layer_adjoint, layer_forward


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
    clone = type(layer)(layer.in_channels, layer.out_channels, layer.kernel_size, stride=layer.stride,
                        padding=layer.padding, bias=False)
    with torch.no_grad():
        clone.weight.copy_(weight)
    return clone


def _stab(z, eps):
    return z + eps * torch.where(z >= 0, 1.0, -1.0)


def _dense(layer, x, relevance, rule, eps):
    """The rule written out on the dense matrix (the slow, obvious way)."""
    shape = x.shape[1:]
    xv, r = x.reshape(-1), relevance.reshape(-1)
    w = layer.weight.detach()
    m = _matrix(layer, shape)
    mp, mn = m.clamp(min=0), m.clamp(max=0)
    xp, xn = xv.clamp(min=0), xv.clamp(max=0)
    bias = torch.zeros(m.shape[0]) if layer.bias is None else \
        layer.bias.detach().repeat_interleave(m.shape[0] // layer.out_channels)
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
        g = 0.25
        contrib = (m + g * mp) * xp + (m + g * mn) * xn
        return (contrib * (r / _stab(contrib.sum(1) + bias + g * bias.clamp(min=0), eps))[:, None]).sum(0)
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
LAYERS = {
    "conv3d": lambda: nn.Conv3d(2, 3, 3, padding=1, bias=True),
    "conv3d_strided": lambda: nn.Conv3d(2, 3, 3, stride=2, padding=1, bias=True),
    "convtranspose3d": lambda: nn.ConvTranspose3d(2, 3, 2, stride=2, bias=True),
}


@pytest.mark.parametrize("rule", list(RULES))
@pytest.mark.parametrize("layer_name", list(LAYERS))
@pytest.mark.parametrize("inputs", ["mixed", "non-negative"])  # z⁺ and γ take one adjoint on x ≥ 0
def test_rule_equals_dense_reference(rule, layer_name, inputs):
    torch.manual_seed(1)
    layer = LAYERS[layer_name]()
    with torch.no_grad():
        layer.bias.normal_()
    x = torch.randn(1, 2, 3, 4, 4)
    if inputs == "non-negative":
        x = x.abs()
    x[..., 0, 0] = 0.0  # voxels outside the data: no z^B bounds, no flat input
    factory, eps = RULES[rule]
    model = nn.Sequential(layer)
    composite = Composite([(by_type(nn.Conv3d, nn.ConvTranspose3d), factory)])
    with composite.context(model):
        xg = x.clone().requires_grad_(True)
        out = model(xg)
        relevance_out = torch.randn_like(out)
        (relevance,) = torch.autograd.grad(out, xg, relevance_out)
    expected = _dense(layer, x, relevance_out, rule, eps).reshape(x.shape)
    assert torch.allclose(relevance, expected, rtol=1e-7, atol=1e-9)
    assert not layer._forward_hooks


@pytest.mark.parametrize("kwargs", [dict(kernel_size=3, padding=1), dict(kernel_size=3, padding=2, dilation=2),
                                    dict(kernel_size=(1, 3, 3), padding=(0, 1, 1)), dict(kernel_size=1),
                                    dict(kernel_size=3, padding=1, stride=2), dict(kernel_size=3, groups=2)])
def test_onednn_forward_and_adjoint_equal_pytorch(kwargs):
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
