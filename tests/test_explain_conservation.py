"""Conservation on every registry architecture with random and briefly trained weights (issue #18.1).

A method that claims conservation (``explain.conservation``) must give input relevance that sums to
the explained target within the stabilisers' bound ``Σ_layers Σ_j |R_j| ε / |stab(z'_j)|`` (the
ledger of ``explain.relevance_balance``), and every unit must keep its own balance within its own
bound: ``exact`` methods on the networks as they are (merged BatchNorm biases included), ``bias``
methods (ε, γ) on the same networks with every bias and BatchNorm shift set to 0. Checked in float64,
where rounding is negligible, and for γ also in float32. The trained weights come from a few Adam
steps on the project's synthetic cases (the regime where the old γ rule blew up)."""

import numpy as np
import pytest
import torch
from torch import nn

import explain
import models
from benchmark.data.synthetic import MODALITIES, generate_case
from benchmark.training.loop import dice_ce_loss

CLAIMING = [m for m in explain.methods()[:7] if explain.conservation(m) != "none"]


def _cases(n=3, shape_xyz=(16, 16, 8)):
    """(N, 6, D, H, W) min-max normalised synthetic cases and their lesion masks."""
    images, labels = [], []
    for i in range(n):
        case = generate_case(0, i + 1, shape_xyz)
        maps = np.stack([case.maps[m] for m in MODALITIES]).astype(np.float64)
        low, high = maps.min(axis=(1, 2, 3), keepdims=True), maps.max(axis=(1, 2, 3), keepdims=True)
        images.append((maps - low) / np.where(high > low, high - low, 1.0))
        labels.append(case.label)
    return torch.tensor(np.stack(images), dtype=torch.float32), torch.tensor(np.stack(labels), dtype=torch.float32)


@pytest.fixture(scope="module")
def data():
    return _cases()


@pytest.fixture(scope="module")
def networks(data):
    """{architecture: {"random": state, "trained": state}}: 20 Adam steps (lr 3e-3, Dice + CE)."""
    x, y = data
    out = {}
    for name in models.available():
        torch.manual_seed(0)
        model = models.build(name, x.shape[1], width=0.125)
        random_state = {k: v.clone() for k, v in model.state_dict().items()}
        optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
        model.train()
        first = None
        for _ in range(20):
            optimizer.zero_grad()
            loss = dice_ce_loss(model(x), y)
            loss.backward()
            optimizer.step()
            first = float(loss.detach()) if first is None else first
        assert float(loss.detach()) < first  # it learned something
        out[name] = {"random": random_state, "trained": model.state_dict()}
    return out


def _model(name, state, bias_free=False, dtype=torch.float64):
    model = models.build(name, len(MODALITIES), width=0.125)
    model.load_state_dict(state)
    if bias_free:
        with torch.no_grad():
            for module in model.modules():
                if getattr(module, "bias", None) is not None:
                    module.bias.zero_()
                if isinstance(module, nn.BatchNorm3d):
                    module.running_mean.zero_()
    return model.to(dtype).eval()


def _check(balance, rounding):
    """The network's and every unit's balance within the stabiliser bounds (plus rounding)."""
    mass = balance.layers[0].mass_out
    assert abs(balance.input_relevance - balance.target) <= balance.stabiliser_bound + rounding * mass
    for layer in balance.layers:
        loss = abs(layer.relevance_in - layer.relevance_out)
        assert loss <= layer.stabiliser_bound + rounding * layer.mass_out, layer


@pytest.mark.parametrize("name", models.available())
@pytest.mark.parametrize("weights", ["random", "trained"])
def test_methods_that_claim_conservation_conserve(name, weights, networks, data):
    x = data[0][:1].double()
    for method in CLAIMING:
        bias_free = explain.conservation(method) == "bias"
        balance = explain.relevance_balance(_model(name, networks[name][weights], bias_free), x, method)
        _check(balance, rounding=1e-9)
        if bias_free:  # the bound is small: the stabilisers act only where |z'| is near ε
            assert balance.stabiliser_bound <= 0.05 * balance.layers[0].mass_out, method


@pytest.mark.parametrize("name", models.available())
def test_gamma_conserves_in_float32_on_trained_weights(name, networks, data):
    """epsilon_gamma_box in float32 on the trained, bias-free network: within the bound plus float32
    rounding; with biases the ratio Σ R / f stays of order 1 (the old rule reached 1e5-1e6 here)."""
    x = data[0][:1]
    balance = explain.relevance_balance(_model(name, networks[name]["trained"], True, torch.float32), x,
                                        "epsilon_gamma_box")
    _check(balance, rounding=1e-5)
    assert balance.input_relevance / balance.target == pytest.approx(1.0, abs=1e-3)
    with_biases = explain.relevance_balance(_model(name, networks[name]["trained"], False, torch.float32), x,
                                            "epsilon_gamma_box")
    assert abs(with_biases.input_relevance / with_biases.target) < 10
