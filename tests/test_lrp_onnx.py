"""The exported relevance graph (explain.onnx_export) against explain.attribute: PyTorch and onnxruntime."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

import explain
import models
from benchmark.data.synthetic import MODALITIES, generate_case
from benchmark.training.loop import dice_ce_loss
from explain.errors import ExplainError
from explain.onnx_export import LRPGraph, export_lrp_onnx, relative_l1

METHODS = ("lrp_epsilon", "lrp_zplus")
GRIDS_DHW = ((8, 20, 18), (7, 16, 24))


def _cases(n=2, shape_xyz=(16, 16, 8)):
    """(N, 6, D, H, W) min-max normalised synthetic cases and their lesion masks."""
    images, labels = [], []
    for i in range(n):
        case = generate_case(0, i + 1, shape_xyz)
        maps = np.stack([case.maps[m] for m in MODALITIES]).astype(np.float64)
        low, high = maps.min(axis=(1, 2, 3), keepdims=True), maps.max(axis=(1, 2, 3), keepdims=True)
        images.append((maps - low) / np.where(high > low, high - low, 1.0))
        labels.append(case.label)
    return torch.tensor(np.stack(images), dtype=torch.float32), torch.tensor(np.stack(labels), dtype=torch.float32)


def _model(name="unet3d", trained=False):
    torch.manual_seed(0)
    model = models.build(name, len(MODALITIES), width=0.125)
    if trained:  # a few Adam steps: BatchNorm statistics and weights no longer at their initial values
        x, y = _cases()
        optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
        model.train()
        for _ in range(8):
            optimizer.zero_grad()
            dice_ce_loss(model(x), y).backward()
            optimizer.step()
    return model.eval()


def _inputs(grid):
    generator = torch.Generator().manual_seed(1)
    return [torch.rand(1, len(MODALITIES), *grid, generator=generator),  # intensities in [0, 1)
            torch.rand(1, len(MODALITIES), *grid, generator=generator) - 0.3]  # mixed sign


@pytest.mark.parametrize("trained", [False, True])
@pytest.mark.parametrize("name", ["unet3d", "unet3d_lens"])
def test_graph_equals_engine(name, trained):
    """The relevance pass as forward operations gives explain.attribute's relevance and conservation."""
    model = _model(name, trained)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    for method in METHODS:
        graph = LRPGraph(model, method, _inputs(GRIDS_DHW[0])[0])
        reference = copy.deepcopy(model).double()
        for grid in GRIDS_DHW:
            for x in _inputs(grid):
                with torch.no_grad():
                    relevance, logits, target = graph(x)
                expected = explain.attribute(reference, x.double(), method)  # float64: see explain.onnx_export
                assert relevance.shape == x.shape
                assert relative_l1(relevance, expected) <= 1e-4, (name, method, grid)
                with torch.no_grad():
                    assert torch.allclose(logits, model(x), atol=1e-5)
                ratio, engine_ratio = float(relevance.sum() / target.sum()), float(expected.sum()) / float(target.sum())
                assert ratio == pytest.approx(engine_ratio, rel=1e-4, abs=1e-5)
                if method == "lrp_zplus":  # z⁺ conserves: Σ R = the explained target
                    assert ratio == pytest.approx(1.0, abs=1e-3)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())  # the model is not changed


def test_map_target_and_refusals():
    model = _model()
    x = _inputs(GRIDS_DHW[0])[1]
    with torch.no_grad():
        relevance, _, _ = LRPGraph(model, "lrp_epsilon", x, target="map")(x)
    assert relative_l1(relevance, explain.attribute(model, x, "lrp_epsilon", "map")) <= 1e-4
    with pytest.raises(ExplainError, match="alphabeta|AlphaBeta"):
        LRPGraph(model, "alpha2beta1", x)
    with pytest.raises(ExplainError, match="not an LRP|has no exported"):
        LRPGraph(model, "gradient", x)
    with pytest.raises(ExplainError, match="target"):
        LRPGraph(model, "lrp_zplus", x, target=(1, 2, 3))


@pytest.mark.slow
@pytest.mark.parametrize("trained", [False, True])
def test_onnxruntime_relevance_equals_engine(tmp_path, trained):
    """onnxruntime runs the exported graph on grids it was not traced on and matches explain.attribute."""
    import onnxruntime as ort

    model = _model("unet3d", trained)
    for method in METHODS:
        path = tmp_path / f"{method}.onnx"
        report = export_lrp_onnx(model, method, path, torch.rand(1, len(MODALITIES), 8, 16, 16),
                                 grids=((19, 48, 48), (16, 40, 32)))
        assert report.worst <= 1e-4
        for ours, engine in report.conservation.values():
            assert ours == pytest.approx(engine, rel=1e-4, abs=1e-5)
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        for x in _inputs((9, 20, 18)):
            relevance, _, target = session.run(None, {"image": x.numpy()})
            expected = explain.attribute(copy.deepcopy(model).double(), x.double(), method)
            # a small odd grid the export did not check: z⁺ in onnxruntime's float32 measured 2.7e-4 here
            # (near-dead outputs round differently, explain.onnx_export); the 1e-4 claim is on the checked grids
            assert relative_l1(relevance, expected.numpy()) <= 1e-3
            assert float(relevance.sum() / target.sum()) == pytest.approx(
                float(expected.sum()) / float(target.sum()), rel=1e-3, abs=1e-4)
        assert path.with_suffix(".json").is_file()
