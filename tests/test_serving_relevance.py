"""The served model's relevance: the relevance ONNX model it ships, against explain.attribute on the same case.

A tiny unet3d is exported with its ``lrp_epsilon`` relevance graph (:mod:`explain.onnx_export`) and
saved as the registered pyfunc is logged. A request naming the method gets relevance computed by
onnxruntime on the prepared case and mapped to the input's grid; ``explain.attribute`` (float64) on
the same prepared case, mapped the same way, is the reference. A bad method name is refused in one line.
"""

import copy

import mlflow.pyfunc
import nibabel as nib
import numpy as np
import pytest
import torch

import explain
import models
from benchmark.data.cases import discover, read_case
from benchmark.data.nifti import to_xyz
from benchmark.data.preprocessing import PreprocessConfig, prepare, to_native
from benchmark.serving import Predictor, RequestError, decode_volume, encode_file
from benchmark.stages.export import PREDICTOR
from benchmark.training.loop import seed_everything
from explain.onnx_export import export_lrp_onnx, relative_l1
from explain.targets import explained_target, target_mask
from models.onnx import export_onnx
from tracking.serving import RequestRefusedError, save_pyfunc_model

CONFIG = PreprocessConfig(grid=(16, 16, 8))
CASE = "training_2"  # 48×56×10 voxels in the shared synthetic set
METHOD = "lrp_epsilon"


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """(the network, its ONNX file, the pyfunc folder shipping its lrp_epsilon relevance model)."""
    seed_everything(1)
    model = models.build("unet3d", 6, width=0.0625).eval()
    folder = tmp_path_factory.mktemp("served-relevance")
    report = export_onnx(model, folder / "model.onnx", CONFIG.to_dict())
    relevance = export_lrp_onnx(model, METHOD, folder / f"{METHOD}.onnx", torch.rand(1, 6, *CONFIG.grid_dhw),
                                grids=(CONFIG.grid_dhw,))
    pyfunc = save_pyfunc_model(folder / "pyfunc", report.onnx_path, report.sidecar_path, PREDICTOR,
                               relevance={METHOD: relevance.onnx_path})
    return model, report.onnx_path, pyfunc


@pytest.fixture(scope="module")
def case_files(isles_dir):
    return next(r for r in discover(isles_dir, CONFIG.modalities, split="train") if r.case_id == CASE)


def _expected(model, ref) -> tuple[np.ndarray, float]:
    """explain.attribute's relevance (float64) of the prepared case, mapped to the case's grid: (C, X, Y, Z)."""
    case = read_case(ref)
    x = torch.from_numpy(prepare(case, CONFIG).image[None]).double()
    reference = copy.deepcopy(model).double()
    relevance = explain.attribute(reference, x, METHOD)[0].numpy()
    with torch.no_grad():
        logits = reference(x)
    target = float(explained_target(logits, target_mask(logits)).sum())
    native = to_native(relevance.astype(np.float32), case.shape)
    return np.stack([to_xyz(v) for v in native]), target


def test_served_relevance_equals_explain_attribute_in_both_encodings(served, case_files):
    model, _, pyfunc = served
    expected, target = _expected(model, case_files)
    served_model = mlflow.pyfunc.load_model(str(pyfunc))
    arrays = {m: nib.load(p).get_fdata().tolist() for m, p in case_files.images.items()}
    zooms = nib.load(case_files.images["ADC"]).header.get_zooms()[:3]
    answer = served_model.predict(arrays | {"spacing": [float(z) for z in zooms], "relevance": METHOD})
    compact = served_model.predict({m: encode_file(p) for m, p in case_files.images.items()} | {"relevance": METHOD})
    modalities = list(CONFIG.modalities)
    for got in (np.stack([np.asarray(answer["relevance"][m]) for m in modalities]),
                np.stack([decode_volume(compact["relevance"][m]) for m in modalities])):
        assert got.shape == expected.shape == (6, 48, 56, 10)
        assert relative_l1(got, expected) <= 1e-4
    for a in (answer, compact):
        assert a["relevance_method"] == METHOD
        assert a["relevance_target"] == pytest.approx(target, rel=1e-4)
        assert sum(a["relevance_share"].values()) == pytest.approx(1.0, abs=1e-6)
        assert list(a["relevance_share"]) == modalities
    assert "relevance" not in served_model.predict({m: encode_file(p) for m, p in case_files.images.items()})


def test_a_bad_relevance_method_is_refused_naming_the_allowed_ones(served, case_files):
    _, onnx_path, pyfunc = served
    served_model = mlflow.pyfunc.load_model(str(pyfunc))
    request = {m: encode_file(p) for m, p in case_files.images.items()}
    for value, words in (("gradient", "'relevance' must be one of lrp_epsilon (got 'gradient')"),
                         (3, "'relevance' must be one of lrp_epsilon (got a int)")):
        with pytest.raises(RequestRefusedError) as caught:
            served_model.predict(request | {"relevance": value})
        assert str(caught.value) == words
    with pytest.raises(RequestError, match="ships no relevance models .*--lrp-onnx"):
        Predictor(onnx_path).predict(request | {"relevance": METHOD})


@pytest.mark.slow
def test_the_http_server_answers_relevance_and_refuses_a_bad_method(served, case_files):
    """One real server (python -m mlproject.serve): 200 with relevance equal to the pyfunc's, 400 for a bad name."""
    import json

    from benchmark.perf import post, serving

    _, _, pyfunc = served
    request = {m: encode_file(p) for m, p in case_files.images.items()}
    local = mlflow.pyfunc.load_model(str(pyfunc)).predict(request | {"relevance": METHOD})
    with serving(str(pyfunc)) as (url, _):
        status, answer, _ = post(url, json.dumps({"inputs": request | {"relevance": "lrp_gamma"}}).encode())
        assert status == 400 and json.loads(answer) == {
            "error_code": "BAD_REQUEST", "message": "'relevance' must be one of lrp_epsilon (got 'lrp_gamma')"}
        status, answer, _ = post(url, json.dumps({"inputs": request | {"relevance": METHOD}}).encode())
        assert status == 200
        remote = json.loads(answer)["predictions"]
    for m in CONFIG.modalities:
        np.testing.assert_array_equal(decode_volume(remote["relevance"][m]), decode_volume(local["relevance"][m]))
