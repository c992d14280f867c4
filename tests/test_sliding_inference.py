"""Sliding-window inference of a ``native``-mode model: onnxruntime equals PyTorch, and predict, serving and
evaluate all slide the same windows."""

import json

import nibabel as nib
import numpy as np
import pytest
import torch

import models
from benchmark.data.cases import discover, read_case
from benchmark.data.preprocessing import PreprocessConfig, prepare, to_native
from benchmark.evaluation.inference import predict_probability
from benchmark.evaluation.robustness import evaluate_model
from benchmark.evaluation.segmentation import dice
from benchmark.serving import Predictor
from benchmark.stages.predict import predict_cases
from benchmark.training.loop import seed_everything
from inferers import SlidingWindow
from models.onnx import Segmenter, binding_device, check_grids, export_onnx

CASE = "training_1"  # 64×64×12 voxels of 3.4375 × 3.4375 × 10 mm in the shared synthetic set
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def native(isles_dir, tmp_path_factory):
    """A tiny ``native`` model (patch 16×16×8 at 1.5× the case's in-plane spacing), exported, and its case."""
    ref = next(r for r in discover(isles_dir, split="train") if r.case_id == CASE)
    case = read_case(ref)
    dz, dy, dx = case.spacing
    config = PreprocessConfig(normalization="robust", grid=(16, 16, 8), mode="native", spacing=(dx * 1.5, dy * 1.5, dz))
    seed_everything(1)
    model = models.build("resunet3d", 6, width=0.0625).eval()
    report = export_onnx(model, tmp_path_factory.mktemp("native") / "model.onnx", config.to_dict())
    return model, config, report, ref, case


def test_the_export_stays_a_patch_model_checked_on_its_patch_and_a_non_cubic_grid(native):
    _, config, report, _, _ = native
    assert check_grids(config.to_dict()) == ((8, 16, 16), (25, 64, 48), (7, 20, 18))
    assert set(report.max_abs_diff) == {"8x16x16", "25x64x48", "7x20x18"} and report.worst <= 1e-4
    meta = json.loads(report.sidecar_path.read_text())
    assert PreprocessConfig.from_dict(meta["preprocess"]) == config
    assert check_grids(PreprocessConfig().to_dict())[0] == (19, 48, 48)  # a seed model: the study's grid first


@pytest.mark.parametrize("grid", [(12, 40, 36), (19, 33, 17), (8, 16, 16), (5, 30, 20), (6, 12, 50)],
                         ids=["several-windows", "odd", "one-patch", "thinner-than-the-patch", "smaller-on-two-axes"])
def test_onnxruntime_and_pytorch_sliding_windows_agree(native, grid):
    model, config, report, _, _ = native
    window = SlidingWindow(config.grid_dhw, overlap=config.overlap, batch=3)  # an uneven last batch
    x = torch.randn(1, 6, *grid, generator=torch.Generator().manual_seed(sum(grid)))
    expected = predict_probability(model, x, CPU, window=window).numpy()
    got = Segmenter(report.onnx_path).probability(x.numpy(), window=window)
    assert got.shape == expected.shape == (1, *grid)
    assert np.abs(got - expected).max() <= 1e-4


def test_windows_are_bound_on_the_gpu_providers_and_binding_gives_the_same_logits(native):
    _, config, report, _, _ = native
    assert binding_device("CUDAExecutionProvider") == binding_device("TensorrtExecutionProvider") == "cuda"
    assert binding_device("CPUExecutionProvider") is None
    plain = Segmenter(report.onnx_path)
    assert plain.binding_device is None
    bound = Segmenter(report.onnx_path)
    bound.binding_device = "cpu"  # the I/O-binding path, exercised on the CPU
    x = np.random.default_rng(0).standard_normal((1, 6, 11, 27, 21)).astype(np.float32)
    done = []
    got = bound.logits(x, config.window(), progress=done.append)
    np.testing.assert_allclose(got, plain.logits(x, config.window()), atol=1e-6)
    assert sum(done) == len(config.window().windows((11, 27, 21)))


def _threshold_in_a_gap(probability: np.ndarray, gap: float = 1e-4) -> float:
    """A threshold near the median that no probability lies within ``gap`` of (so masks cannot flip by rounding)."""
    values = np.unique(probability.astype(np.float64))
    middle = int(np.searchsorted(values, np.median(values)))
    for k in sorted(range(1, len(values)), key=lambda k: abs(k - middle)):
        if values[k] - values[k - 1] > 2 * gap:
            return float((values[k] + values[k - 1]) / 2)
    raise AssertionError("no gap in the probabilities")


def test_predict_serving_and_evaluate_of_a_native_model_give_the_pytorch_mask(native, tmp_path):
    model, config, report, ref, case = native
    prepared = prepare(case, config)
    assert prepared.image.shape[1:] == (12, 43, 43)  # 64 × 3.4375 mm / 5.15625 mm: more than one patch in-plane
    image = torch.from_numpy(prepared.image[None])
    expected = to_native(predict_probability(model, image, CPU, window=config.window()), case.shape)[0]
    threshold = _threshold_in_a_gap(expected)
    torch_mask = expected > threshold
    assert 0 < torch_mask.mean() < 1

    out = tmp_path / "out"
    predict_cases(ref.images["ADC"].parents[1], out, str(report.onnx_path), threshold=threshold)
    probability = nib.load(out / f"{CASE}_probability.nii.gz").get_fdata(dtype=np.float32)
    mask = np.asanyarray(nib.load(out / f"{CASE}_lesion.nii.gz").dataobj)
    assert probability.shape == case.shape[::-1]
    assert np.abs(probability - expected.T).max() <= 1e-4  # (X, Y, Z) on disk
    np.testing.assert_array_equal(mask.T, torch_mask)

    served = Predictor(report.onnx_path).probability(case)
    np.testing.assert_array_equal(served.astype(np.float32), probability.T)

    scored = evaluate_model(model, [prepared], threshold=threshold, window=config.window())[0]
    assert scored["dice"] == pytest.approx(dice(mask.T > 0, case.label > 0))



def test_the_study_experiments_slide_windows_for_a_native_model(native, monkeypatch):
    """Dilution and defects predict (and explain) a native case window by window, as predict does."""
    import benchmark.evaluation.defect_effects as defect_effects
    import benchmark.evaluation.dilution as dilution
    from benchmark.data.defects import draw_defect
    from benchmark.data.preprocessing import brain_mask

    model, config, _, _, case = native
    prepared = prepare(case, config)
    windows = []

    def counted(*args, **kwargs):
        windows.append(kwargs.get("window"))
        return predict_probability(*args, **kwargs)

    monkeypatch.setattr(dilution, "predict_probability", counted)
    monkeypatch.setattr(defect_effects, "predict_probability", counted)
    diluted = dilution.dilution_rows(model, [prepared], {"zero": [0.0]}, draws=1, progress=False,
                                     window=config.window())
    defect = draw_defect(prepared.image, brain_mask(prepared.image), 20, np.random.default_rng(0))
    effects = defect_effects.defect_rows({"normal": model}, [prepared], {prepared.case_id: [defect]}, "lrp_epsilon",
                                         progress=False, window=config.window())
    assert windows and all(w == config.window() for w in windows)
    assert diluted[0]["dice_clean"] == 1.0  # zeroing no value predicts the clean mask again
    assert len(effects) == 1 and np.isfinite(effects[0]["defect_mass_share"])
