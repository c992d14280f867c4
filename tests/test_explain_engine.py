"""The LRP engine on every registry architecture: G×I, conservation, canonizer, restoration, errors."""

import numpy as np
import pytest
import torch
from torch import nn

import explain
import models
from explain.canonizers import BatchNormCanonizer, canonized
from explain.errors import ExplainError
from explain.filters import RelevanceFilter, parse_filters, study_sweep
from explain.layers import Multiply


def _bias_free(name, width=0.0625, seed=0):
    """A registry model with random BatchNorm statistics but no bias anywhere (eval mode)."""
    torch.manual_seed(seed)
    model = models.build(name, 3, width=width).eval()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.Conv3d | nn.ConvTranspose3d) and module.bias is not None:
                module.bias.zero_()
            if isinstance(module, nn.BatchNorm3d):
                module.weight.uniform_(0.5, 1.5)
                module.running_var.uniform_(0.5, 2.0)
                module.running_mean.zero_()
                module.bias.zero_()
    return model


def _gates_constant(model):
    return [m.register_forward_pre_hook(lambda mod, args: (args[0], args[1].detach()))
            for m in model.modules() if isinstance(m, Multiply)]


@pytest.fixture
def x():
    torch.manual_seed(7)
    return torch.rand(1, 3, 9, 16, 16, dtype=torch.float32)


@pytest.mark.parametrize("name", models.available())
def test_epsilon_to_zero_equals_gradient_times_input(name, x):
    model = _bias_free(name)
    relevance = explain.attribute(model, x, "lrp_epsilon", epsilon=1e-12)
    handles = _gates_constant(model)  # LRP sends a gate's relevance to the signal: the gate is held constant
    try:
        xg = x.clone().requires_grad_(True)
        logits = model(xg)
        mask = (logits.argmax(1) == 1).float()
        if mask.sum() == 0:
            mask.view(-1)[int(torch.argmax(logits[0, 1] - logits[0, 0]))] = 1
        (gradient,) = torch.autograd.grad(logits[:, 1], xg, mask)
    finally:
        for h in handles:
            h.remove()
    expected = (x * gradient).detach()
    assert torch.allclose(relevance, expected, rtol=1e-3, atol=1e-4 * float(expected.abs().max()))


@pytest.mark.parametrize("name", models.available())
@pytest.mark.parametrize("method", ["lrp_zplus", "lrp_zplus_zbox", "study_published", "epsilon_plus_flat"])
def test_relevance_is_conserved_in_bias_free_networks(name, method, x):
    model = _bias_free(name, width=0.125)
    options = {"epsilon": 1e-12} if method == "epsilon_plus_flat" else {}  # its output layer is ε
    relevances, explained = explain.lrp_sweep(model, x, method, [RelevanceFilter()], **options)
    total = float(relevances["raw"].sum())
    assert total == pytest.approx(float(explained.sum()), rel=1e-4)


@pytest.mark.parametrize("target", ["map", (4, 8, 8)])
def test_conservation_for_other_targets(target, x):
    model = _bias_free("resunet3d", width=0.125)
    relevances, explained = explain.lrp_sweep(model, x, "lrp_zplus", [RelevanceFilter()], target=target)
    assert float(relevances["raw"].sum()) == pytest.approx(float(explained.sum()), rel=1e-4)


@pytest.mark.parametrize("name", models.available())
def test_batchnorm_canonizer_keeps_outputs_and_restores_the_model(name, x):
    torch.manual_seed(3)
    model = models.build(name, 3, width=0.0625)
    for _ in range(2):  # non-trivial running statistics
        model(torch.randn(2, 3, 9, 16, 16))
    model.eval()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        before = model(x)
        with canonized(model, x) as canonizer:
            assert canonizer.merged, "nothing was merged"
            merged = model(x)
        after = model(x)
    assert torch.allclose(merged, before, atol=1e-5)
    assert torch.equal(after, before)
    assert set(model.state_dict()) == set(state)
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())


def test_canonizer_refuses_training_mode(x):
    with pytest.raises(ExplainError, match="eval mode"):
        BatchNormCanonizer().apply(models.build("unet3d", 3, width=0.0625).train(), x)


def test_model_is_left_as_it_was_also_on_error(x):
    model = models.build("attention_unet3d", 3, width=0.0625).train()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ExplainError, match="target mask has shape"):
        explain.attribute(model, x, "lrp_zplus_zbox", target=np.zeros((2, 2, 2), bool))
    assert model.training
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())
    assert not any("forward" in vars(m) for m in model.modules())  # convolutions' oneDNN forward undone
    assert all(p.requires_grad for p in model.parameters())
    explain.attribute(model, x, "lrp_zplus_zbox")
    assert not any("forward" in vars(m) or m._forward_hooks for m in model.modules())


def test_every_method_returns_the_input_shape(x):
    model = models.build("unet3d_lens", 3, width=0.0625)
    reference = models.build("unet3d_reference", 3, width=0.0625)  # the only network reference_lrp explains
    for method in explain.methods():
        relevance = explain.attribute(reference if method == "reference_lrp" else model, x, method)
        assert relevance.shape == x.shape and relevance.dtype == torch.float32
        assert torch.isfinite(relevance).all()


def test_sweep_equals_one_propagation_per_filter(x):
    model = _bias_free("unet3d")
    filters = parse_filters(["raw", "pass_0_0.2", "clamp_0.1_1", "post_pass_0.2_1"])
    swept, _ = explain.lrp_sweep(model, x, "lrp_zplus_zbox", filters)
    for f in filters:
        single = explain.attribute(model, x, "lrp_zplus_zbox", layer_filter=f)
        assert torch.allclose(swept[f.name], single, rtol=1e-5, atol=1e-8), f.name
    assert not torch.allclose(swept["raw"], swept["pass_0_0.2"])


def test_filters_pass_and_clamp():
    r = torch.tensor([[0.0, 0.02, -0.1, 0.5, -1.0, 0.3]]) * 4.0
    kept = RelevanceFilter("pass", 0.05, 0.4)(r)
    assert torch.allclose(kept, torch.tensor([[0.0, 0.0, -0.1, 0.0, 0.0, 0.3]]) * 4.0)
    clamped = RelevanceFilter("clamp", 0.05, 0.4)(r)
    assert torch.allclose(clamped, torch.tensor([[0.0, 0.05, -0.1, 0.4, -0.4, 0.3]]) * 4.0)
    # one-sided intervals take shorter paths: same definitions
    assert torch.allclose(RelevanceFilter("pass", 0, 0.4)(r), torch.tensor([[0.0, 0.02, -0.1, 0.0, 0.0, 0.3]]) * 4.0)
    assert torch.allclose(RelevanceFilter("pass", 0.25, 1)(r), torch.tensor([[0.0, 0.0, 0.0, 0.5, -1.0, 0.3]]) * 4.0)
    assert torch.allclose(RelevanceFilter("clamp", 0, 0.4)(r), torch.tensor([[0.0, 0.02, -0.1, 0.4, -0.4, 0.3]]) * 4.0)
    assert torch.equal(RelevanceFilter("pass", 0, 0.4)(torch.zeros(2, 3)), torch.zeros(2, 3))
    assert [f.name for f in study_sweep()][:3] == ["raw", "pass_0_0.05", "pass_0_0.1"]
    assert len(study_sweep()) == 16


@pytest.mark.parametrize("call,match", [
    (lambda m, x: explain.attribute(m, x, "lrp_magic"), "method 'lrp_magic' is unknown"),
    (lambda m, x: parse_filters(["pass_0.5_0.2"]), r"interval \[0.5, 0.2\]"),
    (lambda m, x: parse_filters(["clamp_0_1.5"]), "within"),
    (lambda m, x: parse_filters(["blur"]), "filter 'blur' is unknown"),
    (lambda m, x: explain.attribute(m, x, "lrp_zplus", target=torch.zeros(3, 3, 3)), "target mask has shape"),
    (lambda m, x: explain.attribute(m, x, "lrp_zplus", target=(99, 0, 0)), "outside the grid"),
])
def test_bad_explain_input(call, match, x):
    with pytest.raises(ExplainError, match=match):
        call(models.build("unet3d", 3, width=0.0625), x)


def test_a_layer_without_rule_is_named():
    model = nn.Sequential(nn.Conv3d(3, 2, 1), nn.Tanh())
    with pytest.raises(ExplainError, match=r"layer '1' \(Tanh\) has no rule.*add a rule for Tanh"):
        explain.attribute(model, torch.rand(1, 3, 4, 4, 4), "lrp_zplus")


TRUE_INPUT_LAYERS = {"unet3d": ["encoders.0.conv1"], "unet3d_lens": ["encoders.0.conv1"],  # behind the lens
                     "resunet3d": ["encoders.0.conv1", "encoders.0.shortcut.0"],
                     "attention_unet3d": ["encoders.0.conv1"], "segresnet3d": ["stem"],
                     "unet3d_reference": ["encoders.0.conv1"]}


@pytest.mark.parametrize("name", models.available())
@pytest.mark.parametrize("modalities,width", [(6, 0.1875), (4, 0.125)])
def test_only_the_layers_that_read_the_input_get_the_input_rule(name, modalities, width):
    """Widths where hidden layers have as many input channels as the model has modalities (#18.2)."""
    model = models.build(name, modalities, width=width)
    hidden = [n for n, m in model.named_modules() if isinstance(m, nn.Conv3d) and m.in_channels == modalities
              and n not in TRUE_INPUT_LAYERS[name] and not n.startswith("lens.")]
    assert hidden, "no hidden layer with as many input channels as modalities: the case is not the hard one"
    x = torch.rand(1, modalities, 8, 16, 16)
    for method, rule in (("lrp_zplus_zbox", "zbox"), ("study_published", "zbox"), ("epsilon_gamma_box", "zbox"),
                         ("epsilon_plus_flat", "flat")):
        rules = explain.rule_map(model, x, method)
        assert sorted(n for n, r in rules.items() if r.name == rule) == sorted(TRUE_INPUT_LAYERS[name]), method
