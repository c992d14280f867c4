"""The served model: one case at its native grid in, the same answer as ``predict`` out; bad requests refused short.

The pyfunc (``mlflow.pyfunc.load_model(...).predict``) and one real HTTP request to
``python -m mlproject.serve`` are compared with the files ``predict`` writes for the same case.
"""

import base64
import csv
import gzip
import http.client
import json

import mlflow.pyfunc
import nibabel as nib
import numpy as np
import pytest

import models
from benchmark.data.cases import discover
from benchmark.data.preprocessing import PreprocessConfig
from benchmark.perf import post, serving
from benchmark.serving import MAX_VOXELS, decode_volume, encode_file
from benchmark.stages.export import PREDICTOR
from benchmark.stages.predict import predict_cases
from benchmark.training.loop import seed_everything
from models.onnx import export_onnx
from tracking.serving import RequestRefusedError, save_pyfunc_model

CONFIG = PreprocessConfig(grid=(16, 16, 8))
CASE = "training_2"  # 48×56×10 voxels in the shared synthetic set


@pytest.fixture(scope="module")
def pyfunc_model(tmp_path_factory):
    """A tiny exported segmenter saved as the registered pyfunc is logged (local folder, no store)."""
    seed_everything(1)
    folder = tmp_path_factory.mktemp("served")
    report = export_onnx(models.build("resunet3d", 6, width=0.0625).eval(), folder / "model.onnx", CONFIG.to_dict())
    return save_pyfunc_model(folder / "pyfunc", report.onnx_path, report.sidecar_path, PREDICTOR)


@pytest.fixture(scope="module")
def case_files(isles_dir):
    ref = next(r for r in discover(isles_dir, CONFIG.modalities, split="train") if r.case_id == CASE)
    return ref.images


@pytest.fixture(scope="module")
def predicted(pyfunc_model, case_files, tmp_path_factory):
    """What ``predict`` writes for the case: (probability, mask, lesion ml from predictions.csv)."""
    out = tmp_path_factory.mktemp("predicted")
    folder = next(iter(case_files.values())).parents[1]
    predict_cases(folder, out, str(pyfunc_model / "artifacts" / "model.onnx"))
    row = next(csv.DictReader((out / "predictions.csv").read_text().splitlines()))
    return (nib.load(out / f"{CASE}_probability.nii.gz").get_fdata(dtype=np.float32),
            np.asanyarray(nib.load(out / f"{CASE}_lesion.nii.gz").dataobj), float(row["lesion_ml"]))


def _arrays(case_files) -> dict:
    images = {m: nib.load(path) for m, path in case_files.items()}
    inputs = {m: image.get_fdata().tolist() for m, image in images.items()}
    inputs["spacing"] = [float(z) for z in images["ADC"].header.get_zooms()[:3]]
    return inputs


def _compact(case_files, compress: bool = False) -> dict:
    if not compress:
        return {m: encode_file(path) for m, path in case_files.items()}
    return {m: base64.b64encode(gzip.compress(path.read_bytes())).decode() for m, path in case_files.items()}


def _assert_equals_predict(answer: dict, predicted, compact: bool) -> None:
    probability, mask, lesion_ml = predicted
    got_probability = decode_volume(answer["probability"]) if compact else np.asarray(answer["probability"])
    got_mask = decode_volume(answer["mask"]) if compact else np.asarray(answer["mask"])
    assert got_probability.shape == probability.shape == (48, 56, 10)
    np.testing.assert_array_equal(got_probability.astype(np.float32), probability)
    np.testing.assert_array_equal(got_mask, mask)
    assert answer["lesion_ml"] == pytest.approx(lesion_ml, abs=5e-5)  # the CSV keeps 4 decimals
    assert answer["lesion_voxels"] == int(mask.sum())
    assert answer["lesion_ml"] == pytest.approx(answer["lesion_voxels"] * np.prod(answer["spacing"]) / 1000)


def test_pyfunc_answer_equals_predict_in_both_encodings(pyfunc_model, case_files, predicted):
    model = mlflow.pyfunc.load_model(str(pyfunc_model))
    _assert_equals_predict(model.predict(_arrays(case_files)), predicted, compact=False)
    for compress in (False, True):
        answer = model.predict(_compact(case_files, compress))
        assert answer["encoding"] == "nifti"
        _assert_equals_predict(answer, predicted, compact=True)
        raw = base64.b64decode(answer["mask"])
        assert (raw[:2] == b"\x1f\x8b") == compress  # the answer is compressed as the request was
        served = nib.Nifti1Image.from_bytes(gzip.decompress(raw) if compress else raw)
        np.testing.assert_allclose(served.affine, nib.load(case_files["ADC"]).affine)
    affine = nib.load(case_files["ADC"]).affine
    with_affine = {**_arrays(case_files), "affine": affine.tolist()}
    _assert_equals_predict(model.predict(with_affine), predicted, compact=False)
    del with_affine["spacing"]
    _assert_equals_predict(model.predict(with_affine), predicted, compact=False)


@pytest.mark.parametrize("change, words", [
    (lambda r: r | {"ADC": np.full((48, 56, 10), np.nan)}, "'ADC' holds 26880 NaN/Inf values"),
    (lambda r: r | {"Tmax": np.full((48, 56, 10), np.inf)}, "'Tmax' holds 26880 NaN/Inf values"),
    (lambda r: r | {"rCBV": np.full((48, 56, 10), 1e300)}, "'rCBV' holds 26880 NaN/Inf voxels"),
    (lambda r: r | {"ADC": np.zeros((48, 56))}, "must be one 3-D volume"),
    (lambda r: r | {"MTT": np.zeros((48, 56, 11))}, "'MTT' has grid (48, 56, 11)"),
    (lambda r: r | {"ADC": np.array([["a"]])}, "'ADC' must hold numbers"),
    (lambda r: {k: v for k, v in r.items() if k != "spacing"}, "'spacing' is missing"),
    (lambda r: r | {"spacing": [1, 0, 3]}, "three positive voxel sizes"),
    (lambda r: r | {"spacing": [1, 1]}, "'spacing' must have shape (3,)"),
    (lambda r: r | {"threshold": 1.5}, "strictly between 0 and 1"),
    (lambda r: {k: v for k, v in r.items() if k != "TTP"}, "missing TTP"),
    (lambda r: r | {"ADC": "aGVsbG8="}, "mixed encodings"),
    (lambda r: r | {"FLAIR": 1}, "unknown FLAIR"),
])
def test_bad_requests_are_refused_with_a_short_message(pyfunc_model, case_files, change, words):
    model = mlflow.pyfunc.load_model(str(pyfunc_model))
    request = {k: np.asarray(v) for k, v in _arrays(case_files).items()}
    with pytest.raises(RequestRefusedError) as caught:
        model.predict(change(request))
    message = str(caught.value)
    assert words in message and len(message) < 300


def test_bad_nifti_requests_and_a_gzip_bomb_are_refused(pyfunc_model, case_files):
    model = mlflow.pyfunc.load_model(str(pyfunc_model))
    good = _compact(case_files)
    bomb = base64.b64encode(gzip.compress(b"\0" * (MAX_VOXELS * 8 + 4096))).decode()  # 134 MB in ~130 kB
    for value, words in (("not base64!", "not valid base64"), (base64.b64encode(b"x" * 400).decode(), "not a NIfTI"),
                         (bomb, "inflates to more than")):
        with pytest.raises(RequestRefusedError, match=words):
            model.predict(good | {"rCBF": value})
    with pytest.raises(RequestRefusedError, match="come from the NIfTI headers"):
        model.predict(good | {"spacing": [1, 1, 1]})


def test_the_http_server_limits_size_refuses_nan_and_answers_as_predict(pyfunc_model, case_files, predicted):
    """One real server (python -m mlproject.serve): 413 over the limit, 400 for NaN, 200 equal to predict."""
    compact = json.dumps({"inputs": _compact(case_files, compress=True)}).encode()
    with serving(str(pyfunc_model), "--max-request-mb", "8") as (url, _):
        status, answer, _ = post(url, b'{"inputs": "' + b"1" * (8 * 2**20 + 10) + b'"}')
        assert status == 413 and len(answer) < 400 and b"exceeds the limit of 8388608 bytes" in answer
        connection = http.client.HTTPConnection(url.split("/")[2], timeout=60)  # a chunked body, no Content-Length
        connection.request("POST", "/invocations", body=iter([b"1" * 2**20] * 9), encode_chunked=True,
                           headers={"Content-Type": "application/json", "Transfer-Encoding": "chunked"})
        response = connection.getresponse()
        assert response.status == 413 and b"(streamed)" in response.read()
        connection.close()
        nan = _arrays(case_files)
        nan["ADC"][3][4][5] = float("nan")  # Python's json writes NaN, which JSON readers accept
        status, answer, _ = post(url, json.dumps({"inputs": nan}).encode())
        assert status == 400 and json.loads(answer) == {
            "error_code": "BAD_REQUEST", "message": "'ADC' holds 1 NaN/Inf values: replace them"}
        status, answer, _ = post(url, b'{"inputs": {"ADC": [[[0.125, 0.25' + b", 0.5" * 20000 + b"]]]}")
        assert status == 400 and len(answer) < 400 and b"0.5, 0.5" not in answer  # the payload is never echoed
        status, answer, _ = post(url, compact)
        assert status == 200
        _assert_equals_predict(json.loads(answer)["predictions"], predicted, compact=True)



def test_serve_refuses_a_missing_store_or_model_in_one_line(tmp_path, monkeypatch, capsys):
    from mlproject._cli import run
    from mlproject.serve import main

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/nothing/mlflow.db")
    assert run(main, ["--port", "1"]) == 2
    assert run(main, ["--model", str(tmp_path / "absent")]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 2 and "no MLflow store at" in lines[0] and "nor an MLflow model folder" in lines[1]
    assert not (tmp_path / "nothing").exists()  # serving never creates a store
