"""The benchmark's convolution arithmetic count: hand-computed layers and the LRP floors it proves."""

import pytest
import torch
from torch import nn

import explain
import explain.filters
import models
from benchmark.perf import conv_flops
from explain.attribution import frozen, target_mask
from explain.rules import conv3d


def test_conv_flops_counts_forward_adjoint_and_onednn():
    torch.manual_seed(0)
    conv = nn.Conv3d(2, 3, 3, padding=1, bias=False).requires_grad_(False)
    x = torch.rand(1, 2, 4, 5, 6)
    forward = 2 * 3 * 2 * 27 * (4 * 5 * 6)  # 2 · C_out · C_in · k³ · output voxels
    assert conv_flops(lambda: conv(x)) == forward
    assert conv_flops(lambda: conv3d(x, conv.weight, None, (1, 1, 1), (1, 1, 1), (1, 1, 1), 1)) == forward
    xg = x.clone().requires_grad_(True)
    assert conv_flops(lambda: torch.autograd.grad(conv(xg).sum(), xg)) == 2 * forward  # + input gradient
    up = nn.ConvTranspose3d(2, 3, 2, stride=2, bias=False)
    assert conv_flops(lambda: up(x)) == 2 * 2 * 3 * 8 * (4 * 5 * 6)  # every input voxel meets the kernel
    assert conv_flops(lambda: torch.relu(x)) == 0


def test_lrp_costs_its_arithmetic_floor():
    """ε: one forward and one adjoint per layer (as a gradient); z⁺: one more forward and one more
    adjoint (2× a gradient) plus, on layers with a bias, z₀ = Wx from a bias-free forward (float32
    z₀ = output − bias loses Wx where |Wx| ≪ |bias|, explain.rules.ZPlus): 5 units against the
    gradient's 2 on this unet3d (every convolution has a bias once BatchNorms are merged); the study
    sweep: 2 adjoints per filtered pass."""
    torch.manual_seed(0)
    model = models.build("unet3d", 6, width=0.25).eval()
    x = torch.rand(1, 6, 8, 16, 16)

    def gradient():
        with frozen(model):
            xg = x.clone().requires_grad_(True)
            logits = model(xg)
            torch.autograd.grad(logits[:, 1], xg, target_mask(logits.detach()))

    reference = conv_flops(gradient)
    explain.attribute(model, x, "lrp_epsilon")  # the first call traces the BatchNorm pairs once
    assert conv_flops(lambda: explain.attribute(model, x, "lrp_epsilon")) / reference == pytest.approx(1.0, abs=0.01)
    assert conv_flops(lambda: explain.attribute(model, x, "lrp_zplus")) / reference == pytest.approx(2.5, abs=0.05)
    one = conv_flops(lambda: explain.attribute(model, x, "lrp_zplus_zbox"))
    sweep = conv_flops(lambda: explain.lrp_sweep(model, x, "lrp_zplus_zbox", explain.filters.study_sweep()))
    assert sweep / one == pytest.approx((3 + 16 * 2) / 5, abs=0.3)  # 16 passes share the three forwards


def test_bench_lrp_reports_times_and_floors_for_every_method():
    from benchmark.perf import bench_lrp

    result = bench_lrp(widths=(0.0625,), grid_xyz=(16, 16, 8), repeats=1)
    (row,) = result["results"]
    assert set(row["methods"]) == set(explain.methods()) - {"reference_lrp"}  # it explains unet3d_reference only
    zplus = row["methods"]["lrp_zplus"]
    assert zplus["seconds"] > 0 and zplus["conv_flop_ratio_to_gradient"] == pytest.approx(2.5, abs=0.05)  # see above
    assert zplus["arithmetic_allows_target"] is False  # 1.5× is below exact z⁺'s arithmetic on LeakyReLU inputs
    assert row["methods"]["epsilon_gamma_box"]["arithmetic_allows_target"] is True
    assert row["study_sweep"]["filters"] == 16 and row["study_sweep"]["seconds"] > 0


def test_bench_sliding_times_both_backends_on_every_grid():
    from benchmark.perf import bench_sliding

    result = bench_sliding(width=0.0625, patch_xyz=(16, 16, 8), grids_xyz=((40, 36, 12), (12, 20, 5)), repeats=1)
    big, small = result["results"]
    assert big["windows"] == 4 * 4 * 2 and small["windows"] == 2  # window_starts per axis; a thin volume is padded
    for row in (big, small):
        assert row["max_abs_probability_difference"] <= 1e-4
        for name in ("pytorch", "onnxruntime"):
            timing = row[name]
            assert timing["seconds_per_volume"] > 0 and timing["outside_the_network_share"] < 1
            assert timing["windows_per_s"] == pytest.approx(row["windows"] / timing["seconds_per_volume"])
        assert row["onnx_over_pytorch"] == pytest.approx(row["onnxruntime"]["seconds_per_volume"]
                                                         / row["pytorch"]["seconds_per_volume"])
    assert result["patch_xyz"] == [16, 16, 8] and result["onnx_provider"] == "CPUExecutionProvider"
