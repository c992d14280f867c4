import numpy as np
import pytest
import torch
from torch import nn

import models
from explain.layers import Add, Concat, Multiply, Upsample
from models.errors import ModelParameterError

SUPPORTED = (nn.Conv3d, nn.ConvTranspose3d, nn.BatchNorm3d, nn.LeakyReLU, nn.ReLU, nn.MaxPool3d,
             nn.Sigmoid, nn.Identity, Concat, Add, Multiply, Upsample)


@pytest.mark.parametrize("name", models.available())
@pytest.mark.parametrize("shape", [(1, 6, 7, 20, 18), (2, 6, 19, 48, 48), (1, 6, 8, 8, 8)])
def test_any_grid_in_same_grid_out(name, shape):
    torch.manual_seed(0)
    model = models.build(name, shape[1], width=0.0625).eval()
    out = model(torch.randn(shape))
    assert out.shape == (shape[0], 2, *shape[2:]) and out.dtype == torch.float32


@pytest.mark.parametrize("name", models.available())
def test_built_only_from_layers_the_lrp_engine_explains(name):
    model = models.build(name, 6, width=0.125)
    leaves = [m for m in model.modules() if not list(m.children())]
    unsupported = {type(m).__name__ for m in leaves if not isinstance(m, SUPPORTED)}
    assert not unsupported


def test_seed_unet_has_19_1_million_parameters_at_full_width():
    count = models.parameter_count(models.build("unet3d", 6))
    assert 19.0e6 < count < 19.2e6
    assert models.parameter_count(models.build("unet3d", 6, width=0.25)) < count / 10


def test_at_least_four_families_with_descriptions():
    names = models.available()
    assert {"unet3d", "unet3d_lens", "resunet3d", "attention_unet3d", "segresnet3d"} <= set(names)


def test_build_config_round_trip():
    model = models.build("attention_unet3d", 3, width=0.125)
    again = models.build_from_config(model.build_config)
    again.load_state_dict(model.state_dict())
    x = torch.randn(1, 3, 9, 16, 16)
    model.eval(), again.eval()
    assert torch.equal(model(x), again(x))
    assert model.build_config == {"name": "attention_unet3d", "in_channels": 3, "out_channels": 2,
                                  "width": 0.125}


def test_lens_starts_close_to_the_plain_network():
    lens = models.build("unet3d_lens", 6, width=0.125).lens
    x = torch.rand(1, 6, 4, 4, 4)
    assert np.allclose(lens(x).detach().numpy(), (x * torch.sigmoid(torch.tensor(3.0))).numpy())


@pytest.mark.parametrize("kwargs,match", [
    ({"name": "vnet"}, "architecture 'vnet' is unknown"),
    ({"name": "unet3d", "depth": 3}, "no hyper-parameter depth"),
    ({"name": "unet3d", "width": 0}, "width must be positive"),
])
def test_bad_builds_are_parameter_errors(kwargs, match):
    name = kwargs.pop("name")
    with pytest.raises(ModelParameterError, match=match):
        models.build(name, 6, **kwargs)
