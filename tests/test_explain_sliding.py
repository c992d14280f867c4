"""Sliding-window explanations (explain.sliding): conservation per window, one patch, pointwise models, padding,
filters, baselines on the stitched model (issue #15.4)."""

import numpy as np
import pytest
import torch
from torch import nn

import explain
import models
from benchmark.data.synthetic import MODALITIES, generate_case
from explain.errors import ExplainError
from explain.filters import RelevanceFilter, parse_filters, study_sweep
from explain.sliding import Tiling
from explain.targets import target_mask
from inferers import SlidingWindow, sliding_window

WINDOW = SlidingWindow((8, 16, 16), overlap=0.5, batch=3)


def _volume(shape_xyz=(36, 40, 12), dtype=torch.float64):
    """One (1, 6, D, H, W) min-max normalised synthetic case made by the project's generator."""
    case = generate_case(0, 1, shape_xyz)
    maps = np.stack([case.maps[m] for m in MODALITIES]).astype(np.float64)
    low, high = maps.min(axis=(1, 2, 3), keepdims=True), maps.max(axis=(1, 2, 3), keepdims=True)
    return torch.tensor((maps - low) / np.where(high > low, high - low, 1.0), dtype=dtype)[None]


def _conv_net(bias: bool):
    """A small 3×3×3 segmenter (receptive field 5 voxels), float64."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv3d(6, 4, 3, padding=1, bias=bias), nn.ReLU(),
                         nn.Conv3d(4, 4, 3, padding=1, bias=bias), nn.ReLU(),
                         nn.Conv3d(4, 2, 1, bias=bias)).double().eval()


def _pointwise():
    torch.manual_seed(1)
    return nn.Sequential(nn.Conv3d(6, 5, 1), nn.ReLU(), nn.Conv3d(5, 2, 1)).double().eval()


@pytest.fixture(scope="module")
def unet():
    torch.manual_seed(0)
    return models.build("unet3d", 6, width=0.0625).double().eval()


def _stitched_target(model, x, window, target=None):
    """Σ_v F₁(v) m(v) of the stitched prediction, computed by inferers' own stitching."""
    with torch.no_grad():
        logits = sliding_window(x, model, window)
    return float((logits[:, 1] * target_mask(logits, target)).sum())


@pytest.mark.parametrize(("method", "bias"), [("lrp_epsilon", False), ("lrp_zplus", False), ("lrp_zplus_zbox", False),
                                              ("lrp_zplus", True)])
def test_each_windows_relevance_sums_to_its_weighted_target(method, bias):
    """Σ R_w = T_w per window within the stabilisers' bound (the ledger of every window), and Σ_w T_w = Σ F₁ m.

    With biases this random network's lesion logits are negative and many z⁺ denominators vanish, so
    the bound is loose there (a few per cent); without biases it is below 1e-6 of the target."""
    model, x = _conv_net(bias), _volume((28, 28, 12))
    per_window: list = []
    ledger: list = []
    relevance, explained = explain.lrp_sweep(model, x, method, [RelevanceFilter()], window=WINDOW, ledger=ledger,
                                             per_window=per_window, epsilon=1e-12)  # ε's own leak out of the way
    bound = sum(layer.stabiliser_bound for layer in ledger)  # every window's stabilisers: ≥ any one window's leak
    tiling = Tiling(x, WINDOW)
    assert len(per_window) == len(tiling.boxes) > 4 and tiling.pads == [(0, 0)] * 3
    with torch.no_grad():
        logits = sliding_window(x, model, WINDOW)
    mask = target_mask(logits)
    for share, entry in zip(tiling.shares, per_window, strict=True):
        with torch.no_grad():
            window_logits = model(x[(slice(None), slice(None), *entry.box)])
        weighted = float((share * window_logits[0, 1] * mask[0][entry.box]).sum())  # T_w = Σ ω_w f_w,1 m
        assert entry.target == pytest.approx(weighted, rel=1e-9)
        assert abs(float(entry.relevance["raw"].sum()) - entry.target) <= bound + 1e-12
    assert bias or bound < 1e-6 * abs(float(explained[0]))
    # the windows' weighted targets add up to the stitched prediction's explained target, and so does Σ R
    assert float(explained[0]) == pytest.approx(_stitched_target(model, x, WINDOW), rel=1e-6)
    assert abs(float(relevance["raw"].sum()) - float(explained[0])) <= bound + 1e-12
    stitched = torch.zeros_like(x)
    for entry in per_window:
        stitched[(slice(None), slice(None), *entry.box)] += entry.relevance["raw"]
    torch.testing.assert_close(relevance["raw"], stitched)


def test_a_registry_unet_conserves_per_window_and_over_the_volume(unet):
    x = _volume((24, 20, 10))
    per_window: list = []
    ledger: list = []
    relevance, explained = explain.lrp_sweep(unet, x, "lrp_zplus", [RelevanceFilter()], window=WINDOW, ledger=ledger,
                                             per_window=per_window)
    bound = sum(layer.stabiliser_bound for layer in ledger)
    assert len(per_window) == 8 and len(ledger) > len(per_window)  # every window batch's units are in the ledger
    for entry in per_window:
        assert abs(float(entry.relevance["raw"].sum()) - entry.target) <= bound + 1e-12
    assert abs(float(relevance["raw"].sum()) - float(explained[0])) <= bound + 1e-12
    assert bound < 1e-2 * abs(float(explained[0]))
    assert float(explained[0]) == pytest.approx(_stitched_target(unet, x, WINDOW), rel=1e-6)


@pytest.mark.parametrize("method", ["lrp_zplus_zbox", "lrp_epsilon", "epsilon_gamma_box", "gradient_x_input",
                                    "integrated_gradients"])
def test_a_volume_of_one_patch_gives_exactly_the_whole_volume_attribution(unet, method):
    x = _volume((16, 16, 8))
    whole = explain.attribute(unet, x, method, steps=4)
    windowed = explain.attribute(unet, x, method, window=WINDOW, steps=4)
    assert torch.equal(windowed, whole)


@pytest.mark.parametrize("method", ["lrp_epsilon", "lrp_zplus", "lrp_zplus_zbox", "alpha2beta1", "gradient",
                                    "gradient_x_input", "prediction"])
@pytest.mark.parametrize("shape_xyz", [(36, 40, 12), (10, 13, 5)], ids=["larger", "smaller than the patch"])
def test_a_pointwise_models_stitched_relevance_is_its_whole_volume_relevance(method, shape_xyz):
    model, x = _pointwise(), _volume(shape_xyz)
    for target in (None, "map", (2, 3, 4)):
        whole = explain.attribute(model, x, method, target)
        windowed = explain.attribute(model, x, method, target, window=WINDOW)
        assert windowed.shape == x.shape
        torch.testing.assert_close(windowed, whole, rtol=1e-9, atol=1e-12)


def test_a_volume_smaller_than_the_patch_is_padded_and_cropped(unet):
    x = _volume((12, 10, 5))
    tiling = Tiling(x, WINDOW)
    assert tiling.pads == [(1, 2), (3, 3), (2, 2)] and len(tiling.boxes) == 1
    per_window: list = []
    relevance, explained = explain.lrp_sweep(unet, x, "lrp_zplus", [RelevanceFilter()], window=WINDOW,
                                             per_window=per_window)
    assert relevance["raw"].shape == x.shape
    # z⁺ gives the zero-padded voxels nothing, so cropping keeps all of the window's relevance
    assert float(relevance["raw"].sum()) == pytest.approx(float(per_window[0].relevance["raw"].sum()), rel=1e-12)
    assert float(explained[0]) == pytest.approx(_stitched_target(unet, x, WINDOW), rel=1e-6)
    # the same as explaining the zero-padded patch from the volume's part of its output, cropped
    pad, crop = (2, 2, 3, 3, 1, 2), (slice(None), slice(None), slice(1, 6), slice(3, 13), slice(2, 14))
    padded = torch.nn.functional.pad(x, pad)
    with torch.no_grad():
        mask = torch.nn.functional.pad(target_mask(unet(padded)[crop]), pad)
    torch.testing.assert_close(relevance["raw"], explain.attribute(unet, padded, "lrp_zplus", mask)[crop])


def test_layer_filters_act_per_window_and_post_filters_on_the_stitched_map():
    model, x = _conv_net(True), _volume((24, 20, 10))
    filters = parse_filters(["raw", "pass_0_0.2", "clamp_0.1_1", "post_clamp_0_0.2", "post_pass_0.1_1"])
    per_window: list = []
    out, _ = explain.lrp_sweep(model, x, "lrp_zplus", filters, window=WINDOW, per_window=per_window)
    assert list(out) == [f.name for f in filters]
    for f in filters[3:]:
        assert torch.equal(out[f.name], f(out["raw"]))  # post-hoc: once, on the stitched map
    assert set(per_window[0].relevance) == {"raw", "pass_0_0.2", "clamp_0.1_1"}
    tiling = Tiling(x, WINDOW)
    with torch.no_grad():
        mask = target_mask(sliding_window(x, model, WINDOW))
    for index in (0, len(per_window) // 2):  # a window's layer-wise filtered relevance is its own explanation's
        entry = per_window[index]
        share = tiling.shares[index] * mask[0][entry.box]
        alone, target = explain.lrp_sweep(model, x[(slice(None), slice(None), *entry.box)], "lrp_zplus",
                                          filters[:3], share[None])
        assert float(target[0]) == pytest.approx(entry.target, rel=1e-12)
        for name in ("raw", "pass_0_0.2", "clamp_0.1_1"):
            torch.testing.assert_close(entry.relevance[name], alone[name][0], rtol=1e-10, atol=1e-14)
    for name in ("pass_0_0.2", "clamp_0.1_1"):
        stitched = torch.zeros_like(x)
        for entry in per_window:
            stitched[(slice(None), slice(None), *entry.box)] += entry.relevance[name]
        torch.testing.assert_close(out[name], stitched)
    sweep, _ = explain.lrp_sweep(model, x, "lrp_zplus_zbox", study_sweep("layer"), window=WINDOW)
    assert len(sweep) == 16 and all(r.shape == x.shape and torch.isfinite(r).all() for r in sweep.values())


def test_gradient_baselines_explain_the_stitched_model(unet):
    x = _volume((24, 20, 10))
    xg = x.clone().requires_grad_(True)
    logits = sliding_window(xg, unet, WINDOW)  # differentiable through inferers' own stitching
    mask = target_mask(logits.detach())
    (reference,) = torch.autograd.grad(logits[:, 1], xg, mask)
    unet.zero_grad(set_to_none=True)
    torch.testing.assert_close(explain.attribute(unet, x, "gradient", window=WINDOW), reference)
    torch.testing.assert_close(explain.attribute(unet, x, "gradient_x_input", window=WINDOW), x * reference)
    probability = torch.softmax(logits.detach().double(), 1)[:, 1:2].expand_as(x)
    torch.testing.assert_close(explain.attribute(unet, x, "prediction", window=WINDOW), probability, rtol=1e-5,
                               atol=1e-6)
    smooth = explain.attribute(unet, x, "smoothgrad", window=WINDOW, samples=2)
    assert smooth.shape == x.shape and torch.isfinite(smooth).all()
    assert all(p.requires_grad for p in unet.parameters()) and not unet._forward_hooks  # left as it was


def test_reference_lrp_refuses_a_window_and_wrong_models_are_named():
    study = models.build("unet3d_reference", 6, width=0.0625).eval()
    x = torch.rand(1, 6, 11, 16, 16)
    assert "takes no sliding window" in explain.unsupported(study, "reference_lrp", WINDOW)
    assert explain.unsupported(study, "reference_lrp") == ""
    assert explain.unsupported(study, "lrp_zplus", WINDOW) == ""
    with pytest.raises(ExplainError, match="takes no sliding window"):
        explain.attribute(study, x, "reference_lrp", window=WINDOW)
    strided = nn.Sequential(nn.Conv3d(6, 2, 3, stride=2, padding=1))  # its output has half the window's grid
    for method in ("lrp_epsilon", "gradient"):
        with pytest.raises(ExplainError, match="input window's grid"):
            explain.attribute(strided, x, method, window=WINDOW)
    with pytest.raises(ExplainError, match=r"\(N, C, D, H, W\)"):
        explain.attribute(strided, x[:, :, 0], "lrp_epsilon", window=WINDOW)
    with pytest.raises(ExplainError, match="pass window= too"):
        explain.lrp_sweep(_pointwise(), x.double(), "lrp_epsilon", [RelevanceFilter()], per_window=[])


@pytest.mark.slow
def test_the_explanations_stage_explains_a_native_model_by_windows_on_the_target_spacing_grid(isles_dir, tmp_path,
                                                                                              monkeypatch):
    import json

    import nibabel as nib

    from benchmark.data.cases import discover, read_case
    from benchmark.data.preprocessing import PreprocessConfig, prepare
    from benchmark.errors import ParameterError
    from benchmark.stages.explanations import explain_model
    from benchmark.training.loop import save_checkpoint
    from explain import metrics

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    monkeypatch.chdir(tmp_path)
    case = read_case(next(r for r in discover(isles_dir, split="train") if r.case_id == "training_2"))
    spacing_xyz = (case.spacing[2] * 2, case.spacing[1] * 2, case.spacing[0])  # half the in-plane voxels
    config = PreprocessConfig(grid=(16, 16, 8), mode="native", spacing=spacing_xyz)
    torch.manual_seed(0)
    model = models.build("unet3d", 6, width=0.0625).eval()
    (tmp_path / "native").mkdir()
    checkpoint = save_checkpoint(tmp_path / "native" / "best.pt", model, None, 0, [])
    (tmp_path / "native" / "preprocess.json").write_text(json.dumps(config.to_dict()))
    with pytest.raises(ParameterError, match="takes no sliding window"):
        explain_model(str(checkpoint), isles_dir, ["reference_lrp"], ["raw"], ["training_2"], heavy="none")
    result = explain_model(str(checkpoint), isles_dir, ["lrp_zplus", "gradient_x_input"],
                           ["raw", "pass_0_0.2", "post_clamp_0_0.2"], ["training_2"], heavy="raw")
    p = prepare(case, config)
    d, h, w = case.shape
    assert p.image.shape[1:] == (d, round(h / 2), round(w / 2))  # the target-spacing grid, larger than the patch
    record = json.loads((result.folder / "training_2_lrp_zplus.json").read_text())
    raw = record["filters"]["raw"]
    swept, explained = explain.lrp_sweep(model, torch.from_numpy(p.image[None]), "lrp_zplus", [RelevanceFilter()],
                                         window=config.window())
    relevance = swept["raw"][0].numpy()
    assert raw["blrp_to_ot"] == pytest.approx(float(metrics.blrp_to_ot(relevance, p.label > 0.5).mean()))
    assert raw["relevance_mass_accuracy"] == pytest.approx(metrics.relevance_mass_accuracy(relevance, p.label > 0.5))
    assert raw["conservation_error"] == pytest.approx(metrics.conservation_error(relevance, float(explained[0])))
    assert np.isfinite(raw["randomisation_spearman"]) and np.isfinite(raw["faithfulness"])
    assert {(row["method"], row["filter"]) for row in result.table} == {
        ("lrp_zplus", "raw"), ("lrp_zplus", "pass_0_0.2"), ("lrp_zplus", "post_clamp_0_0.2"),
        ("gradient_x_input", "raw"), ("gradient_x_input", "post_clamp_0_0.2")}
    saved = nib.load(result.folder / "training_2_lrp_zplus.nii.gz")
    assert saved.shape == (w, h, d, 6)  # written back on the case's own grid


def test_bench_sliding_relevance_reports_both_methods_against_their_parts_and_a_gradient():
    from benchmark.perf import bench_sliding_relevance

    result = bench_sliding_relevance(width=0.0625, grids_xyz=((24, 20, 10), (12, 10, 5)), patch_xyz=(16, 16, 8),
                                     repeats=1)
    larger, smaller = result["results"]
    assert (larger["windows"], smaller["windows"]) == (8, 1) and result["device_info"]["cpu_count"] >= 1
    for row in result["results"]:
        assert set(row["methods"]) == {"lrp_zplus", "lrp_epsilon"} and row["full_volume_gradient_s"] > 0
        for entry in row["methods"].values():
            assert entry["windows_x_one_window_s"] == pytest.approx(row["windows"] * entry["one_window_s"])
            assert entry["ratio_to_windows_x_one_window"] == pytest.approx(
                entry["sliding_s"] / entry["windows_x_one_window_s"])
            assert entry["meets_target"] == (entry["ratio_to_windows_x_one_window"] <= 1.2)
