"""ONNX export, the onnxruntime session, ``predict`` and the MLflow model registry."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient

import models
from benchmark.data.cases import discover, read_case
from benchmark.data.preprocessing import PreprocessConfig
from benchmark.training.loop import TrainConfig, fit, seed_everything
from models.onnx import Segmenter, export_onnx

ROOT = Path(__file__).resolve().parents[1]
CONFIG = PreprocessConfig(grid=(16, 16, 8))


@pytest.fixture(scope="module")
def checkpoint(isles_dir, tmp_path_factory):
    from benchmark.data.preprocessing import prepare

    folder = tmp_path_factory.mktemp("ckpt")
    cases = [prepare(read_case(r), CONFIG) for r in discover(isles_dir, split="train")]
    seed_everything(0)
    fit(models.build("attention_unet3d", 6, width=0.0625), cases, cases, TrainConfig(epochs=1, device="cpu"),
        checkpoint_dir=folder, progress=False)
    (folder / "preprocess.json").write_text(json.dumps(CONFIG.to_dict()))
    return folder / "best.pt"


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    seed_everything(1)
    model = models.build("resunet3d", 6, width=0.0625).eval()
    folder = tmp_path_factory.mktemp("onnx")
    return model, export_onnx(model, folder / "model.onnx", CONFIG.to_dict())


def test_export_matches_pytorch_on_several_grids(exported):
    model, report = exported
    assert report.onnx_path.is_file() and report.sidecar_path.is_file()
    assert len(report.max_abs_diff) == 3 and report.worst <= 1e-4
    meta = json.loads(report.sidecar_path.read_text())
    assert meta["preprocess"]["modalities"] == list(CONFIG.modalities) and meta["build_config"]["name"] == "resunet3d"
    segmenter = Segmenter(report.onnx_path)
    assert segmenter.provider == "CPUExecutionProvider" and segmenter.modalities == list(CONFIG.modalities)
    x = torch.rand(2, 6, 11, 30, 26)
    with torch.no_grad():
        expected = torch.softmax(model(x), 1)[:, 1].numpy()
    assert np.abs(segmenter.probability(x.numpy()) - expected).max() < 1e-5


def _predict(workdir, *args):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MLFLOW_TRACKING_URI": f"sqlite:///{workdir}/mlflow.db"}
    return subprocess.run([sys.executable, "-m", "mlproject.predict", *args], cwd=workdir, env=env,
                          capture_output=True, text=True, timeout=600)


def test_predict_writes_native_nifti_for_each_input_kind(exported, isles_dir, nnunet_dir, tmp_path):
    _, report = exported
    onnx_path = str(report.onnx_path)
    result = _predict(tmp_path, "--model", onnx_path, "--input", str(isles_dir), "--output", str(tmp_path / "all"))
    assert result.returncode == 0, result.stderr
    assert "predicted 5 cases" in result.stdout and "CPUExecutionProvider" in result.stdout
    for ref in discover(isles_dir):
        case = read_case(ref)
        mask = nib.load(tmp_path / "all" / f"{case.case_id}_lesion.nii.gz")
        prob = nib.load(tmp_path / "all" / f"{case.case_id}_probability.nii.gz")
        assert mask.shape == prob.shape == case.shape[::-1]
        assert np.allclose(mask.affine, case.affine) and set(np.unique(mask.get_fdata())) <= {0.0, 1.0}
        assert prob.get_fdata().min() >= 0.0 and prob.get_fdata().max() <= 1.0
    one = _predict(tmp_path, "--model", onnx_path, "--input", str(isles_dir / "test_1"), "--output",
                   str(tmp_path / "one"))
    assert one.returncode == 0 and (tmp_path / "one" / "test_1_lesion.nii.gz").is_file()
    images = _predict(tmp_path, "--model", onnx_path, "--input", str(nnunet_dir / "imagesTs"), "--output",
                      str(tmp_path / "set"))
    assert images.returncode == 0, images.stderr
    assert np.array_equal(nib.load(tmp_path / "set" / "test_1_probability.nii.gz").get_fdata(),
                          nib.load(tmp_path / "one" / "test_1_probability.nii.gz").get_fdata())


def test_predict_bad_input(exported, isles_dir, nnunet_dir, tmp_path):
    _, report = exported
    onnx_path = str(report.onnx_path)
    case = tmp_path / "case"
    shutil.copytree(isles_dir / "training_1", case)
    shutil.rmtree(next(case.glob("*.MR_Tmax.*")))
    images = tmp_path / "images"
    shutil.copytree(nnunet_dir / "imagesTs", images)
    shutil.copy(images / "test_1_0000.nii.gz", images / "test_1_0006.nii.gz")
    lonely = tmp_path / "lonely.onnx"
    shutil.copy(onnx_path, lonely)
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(b"not a model")
    shutil.copy(report.sidecar_path, tmp_path / "corrupt.json")
    (tmp_path / "file").write_text("x")
    cases = [
        (["--model", onnx_path, "--input", str(case)], "no Tmax file"),
        (["--model", onnx_path, "--input", str(images)], "channel 0006"),
        (["--model", "models:/nothing@champion", "--input", str(case)], "does not resolve"),
        (["--model", str(lonely), "--input", str(case)], "no preprocessing JSON"),
        (["--model", str(corrupt), "--input", str(case)], "corrupt"),
    ]
    for args, needle in cases:
        result = _predict(tmp_path, *args, "--output", str(tmp_path / "out"))
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 2 and needle in lines[-1] and "Traceback" not in result.stderr, result.stderr
        assert not (tmp_path / "out").exists()
    result = _predict(tmp_path, "--model", onnx_path, "--input", str(isles_dir / "test_1"), "--output",
                      str(tmp_path / "file"))
    assert result.returncode == 2 and "is a file" in result.stderr


def test_export_registers_the_champion_and_predict_uses_it(checkpoint, isles_dir, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/mlflow.db"}
    result = subprocess.run([sys.executable, "-m", "mlproject.export", "--model", str(checkpoint)], cwd=tmp_path,
                            env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    version = client.get_model_version_by_alias("strokelens-segmenter", "champion")
    assert str(version.version) == "1"
    run = client.get_run(version.run_id)
    assert run.data.tags["strokelens.kind"] == "export"
    assert all(v <= 1e-4 for k, v in run.data.metrics.items() if k.startswith("onnx_max_abs_diff"))
    again = subprocess.run([sys.executable, "-m", "mlproject.export", "--model", str(checkpoint), "--int8-data",
                            str(isles_dir), "--promote"], cwd=tmp_path, env=env, capture_output=True, text=True,
                           timeout=600)
    assert again.returncode == 0, again.stderr
    assert "int8 Dice change" in again.stdout
    int8_run = client.get_run(client.get_model_version("strokelens-segmenter", "2").run_id)
    assert {"val_dice_fp32", "val_dice_int8", "int8_dice_change"} <= set(int8_run.data.metrics)
    assert {a.path for a in client.list_artifacts(int8_run.info.run_id, "onnx-int8")} == {
        "onnx-int8/model_int8.onnx", "onnx-int8/model_int8.json"}
    assert str(client.get_model_version_by_alias("strokelens-segmenter", "champion").version) == "2"
    predicted = _predict(tmp_path, "--input", str(isles_dir / "test_1"), "--output", str(tmp_path / "out"))
    assert predicted.returncode == 0, predicted.stderr
    assert (tmp_path / "out" / "test_1_lesion.nii.gz").is_file()
