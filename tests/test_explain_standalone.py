"""The engine on networks defined only here (not in the registry): 2-D segmentation with a residual
Add, a gate of the gate protocol, max-pooling, Upsample, Concat and a 1×1 head; a 2-D classifier
with an input lens, Flatten, Dropout, Linear and BatchNorm1d. Every LRP method runs; conservation
holds where the method claims it; LRP-ε with ε → 0 equals gradient × input; composites registered
by a user work like the built-in ones."""

import pytest
import torch
from torch import nn

import explain
from explain.attribution import LRP_METHODS
from explain.backend import LINEAR_LAYERS
from explain.composites import COMPOSITES, LINEAR, default_rules
from explain.core import Composite, by_name
from explain.errors import ExplainError
from explain.layers import Add, Concat, Multiply, Upsample
from explain.rules import Epsilon, Gamma, ZBox
from explain.targets import initial_relevance, target_mask


class SkipGate(nn.Module):
    """signal × σ(conv1×1(context)): a gate by the protocol (relevance to the signal only)."""

    explain_gate = True

    def __init__(self, channels, context_channels):
        super().__init__()
        self.conv = nn.Conv2d(context_channels, 1, 1)
        self.sigmoid = nn.Sigmoid()
        self.upsample = Upsample()
        self.gate = Multiply()
        self.hold = False  # True: the gate value is a constant for autograd (as LRP treats it)

    def forward(self, signal, context):
        context = context.detach() if self.hold else context
        return self.gate(signal, self.upsample(self.sigmoid(self.conv(context)), signal))


class Lens(nn.Module):
    """x × σ(conv1×1(x)) on the input, like the study's input lens."""

    explain_gate = True

    def __init__(self, channels):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 1)
        self.sigmoid = nn.Sigmoid()
        self.gate = Multiply()
        self.hold = False

    def forward(self, x):
        return self.gate(x, self.sigmoid(self.conv(x.detach() if self.hold else x)))


class Residual(nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(channels, channels, 3, padding=1), nn.BatchNorm2d(channels)
        self.act1 = nn.ReLU()
        self.conv2, self.bn2 = nn.Conv2d(channels, channels, 3, padding=1), nn.BatchNorm2d(channels)
        self.add, self.act2 = Add(), nn.ReLU()

    def forward(self, x):
        return self.act2(self.add(self.bn2(self.conv2(self.act1(self.bn1(self.conv1(x))))), x))


class TinySegNet2d(nn.Module):
    """(N, 3, H, W) → (N, 2, H, W) logits."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1, bias=False), nn.BatchNorm2d(6), nn.ReLU())
        self.block = Residual(6)
        self.pool = nn.MaxPool2d(2)
        self.down = nn.Sequential(nn.Conv2d(6, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.skip_gate = SkipGate(6, 8)
        self.up = Upsample()
        self.concat = Concat()
        self.head = nn.Conv2d(14, 2, 1)

    def forward(self, x):
        skip = self.block(self.stem(x))
        deep = self.down(self.pool(skip))
        return self.head(self.concat(self.up(deep, skip), self.skip_gate(skip, deep)))


class TinyClassifier2d(nn.Module):
    """(N, 3, 8, 8) → (N, 2) logits, behind an input lens."""

    def __init__(self):
        super().__init__()
        self.lens = Lens(3)
        self.features = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2),
                                      nn.Dropout(0.2), nn.Flatten())
        self.hidden = nn.Sequential(nn.Linear(64, 10), nn.BatchNorm1d(10), nn.ReLU())
        self.head = nn.Linear(10, 2)

    def forward(self, x):
        return self.head(self.hidden(self.features(self.lens(x))))


NETWORKS = {"segmentation": (TinySegNet2d, (2, 3, 12, 12)), "classifier": (TinyClassifier2d, (3, 3, 8, 8))}


def _network(kind, bias_free=False, seed=0):
    """The network in eval mode, float64, with random BatchNorm statistics (so merging matters)."""
    torch.manual_seed(seed)
    make, shape = NETWORKS[kind]
    model = make().double().eval()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm1d | nn.BatchNorm2d):
                module.weight.uniform_(0.5, 1.5)
                module.running_var.uniform_(0.5, 2.0)
                module.running_mean.normal_(0, 0.1)
                module.bias.normal_(0, 0.1)
            if bias_free and getattr(module, "bias", None) is not None and not isinstance(module, SkipGate | Lens):
                if isinstance(module, nn.BatchNorm1d | nn.BatchNorm2d):
                    module.running_mean.zero_()
                module.bias.zero_()
    x = torch.rand(shape, dtype=torch.float64) * 0.9 + 0.05
    return model, x


@pytest.mark.parametrize("kind", list(NETWORKS))
def test_structure_is_traced(kind):
    model, x = _network(kind)
    rules = explain.rule_map(model, x, "epsilon_gamma_box")
    first = "stem.0" if kind == "segmentation" else "features.0"
    assert [n for n, r in rules.items() if isinstance(r, ZBox)] == [first]  # behind the lens: still the input layer
    assert [n for n, r in rules.items() if isinstance(r, Epsilon) and n != "up"] == ["head"]
    gate = "skip_gate" if kind == "segmentation" else "lens"
    assert rules[gate].name == "signal_takes_all"
    assert not any(n.startswith(gate + ".") for n in rules)  # the gating branch gets no rule
    inner = [n for n, m in model.named_modules() if isinstance(m, LINEAR_LAYERS) and n not in (first, "head")
             and not n.startswith(gate + ".")]
    assert inner and all(isinstance(rules[n], Gamma) for n in inner)


@pytest.mark.parametrize("kind", list(NETWORKS))
@pytest.mark.parametrize("method", list(LRP_METHODS))
def test_every_lrp_method_conserves_where_it_claims(kind, method):
    claim = explain.conservation(method)
    model, x = _network(kind, bias_free=claim == "bias")
    state = {k: v.clone() for k, v in model.state_dict().items()}
    balance = explain.relevance_balance(model, x, method)
    relevance = explain.attribute(model, x, method)
    assert relevance.shape == x.shape and torch.isfinite(relevance).all()
    assert float(relevance.sum()) == pytest.approx(balance.input_relevance, rel=1e-12)
    if claim != "none":
        mass = balance.layers[0].mass_out
        assert abs(balance.input_relevance - balance.target) <= balance.stabiliser_bound + 1e-10 * mass
        assert balance.stabiliser_bound <= 1e-3 * mass
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    assert not any(m._forward_hooks or "forward" in vars(m) for m in model.modules())


@pytest.mark.parametrize("kind", list(NETWORKS))
def test_epsilon_to_zero_equals_gradient_times_input(kind):
    model, x = _network(kind, bias_free=True)
    relevance = explain.attribute(model, x, "lrp_epsilon", epsilon=1e-14)
    for module in model.modules():
        if isinstance(module, SkipGate | Lens):
            module.hold = True
    expected = explain.attribute(model, x, "gradient_x_input")
    # up to the stabiliser of Add's Norm rule (ε = 1e-9 on sums of size ~1e-3)
    assert torch.allclose(relevance, expected, rtol=1e-6, atol=1e-5 * float(expected.abs().max()))


def test_a_registered_composite_is_a_method():
    @explain.register_composite("test_gamma_one_box")
    def gamma_one_box(structure, gamma=1.0):
        return Composite([(by_name(*structure.input_layers), ZBox), (LINEAR, lambda: Gamma(gamma))] + default_rules())

    try:
        assert "test_gamma_one_box" in explain.methods() and "test_gamma_one_box" in LRP_METHODS
        model, x = _network("segmentation", bias_free=True)
        relevance = explain.attribute(model, x, "test_gamma_one_box", target="map")
        balance = explain.relevance_balance(model, x, "test_gamma_one_box", target="map", gamma=2.0)
        assert abs(balance.target - balance.input_relevance) <= balance.stabiliser_bound + 1e-10 * abs(balance.target)
        assert not torch.allclose(relevance, explain.attribute(model, x, "test_gamma_one_box", target="map", gamma=2.0))
        assert explain.conservation("test_gamma_one_box") == "bias"
        with pytest.raises(ExplainError, match="registered already"):
            explain.register_composite("test_gamma_one_box", gamma_one_box)
        with pytest.raises(ExplainError, match="takes no option alpha"):
            explain.attribute(model, x, "test_gamma_one_box", alpha=1.0)
        with pytest.raises(ExplainError, match="baseline"):
            explain.register_composite("smoothgrad", gamma_one_box)
        with pytest.raises(ExplainError, match="not allowed"):
            explain.register_composite("../evil", gamma_one_box)
    finally:
        COMPOSITES.pop("test_gamma_one_box", None)
    assert "test_gamma_one_box" not in explain.methods()


@pytest.mark.parametrize("shape", [(2, 2), (2, 2, 7), (2, 2, 5, 6), (2, 3, 3, 4, 5)])
def test_targets_for_any_spatial_rank(shape):
    torch.manual_seed(0)
    logits = torch.randn(shape)
    mask = target_mask(logits)
    assert mask.shape == (shape[0], *shape[2:])
    assert torch.equal(mask.bool().reshape(shape[0], -1).any(1), torch.ones(shape[0], dtype=torch.bool))
    relevance = initial_relevance(logits, mask)
    assert torch.equal(relevance[:, 1], logits[:, 1] * mask) and not relevance[:, 0].any()
    if len(shape) > 2:
        voxel = tuple(s - 1 for s in shape[2:])
        assert target_mask(logits, voxel).sum() == shape[0]
        assert torch.equal(target_mask(logits, torch.ones(shape[2:], dtype=torch.bool)), torch.ones(mask.shape))
    with pytest.raises(ExplainError, match="K >= 2"):
        target_mask(logits[:, :1])


def test_a_model_whose_input_meets_no_layer_first_is_named():
    model = nn.Sequential(nn.BatchNorm2d(3), nn.Conv2d(3, 2, 1)).eval()
    with pytest.raises(ExplainError, match="reads the model's input"):
        explain.attribute(model, torch.rand(1, 3, 4, 4), "lrp_zplus_zbox")
    assert explain.attribute(model, torch.rand(1, 3, 4, 4), "lrp_zplus").shape == (1, 3, 4, 4)
