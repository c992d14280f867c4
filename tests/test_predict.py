"""``predict``: bad cases isolated, outputs complete or absent, reruns skip, nnU-Net naming, the volume CSV."""

import csv
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

import models
from benchmark.data.cases import discover, read_case
from benchmark.data.preprocessing import PreprocessConfig
from benchmark.errors import DataWarning
from benchmark.stages.predict import predict_cases
from benchmark.training.loop import seed_everything
from mlproject._cli import run
from mlproject.predict import main
from models.onnx import export_onnx

ROOT = Path(__file__).resolve().parents[1]
CONFIG = PreprocessConfig(grid=(16, 16, 8))


@pytest.fixture(scope="module")
def onnx_model(tmp_path_factory):
    """A tiny exported segmenter (as tests/test_export.py makes one)."""
    seed_everything(1)
    model = models.build("resunet3d", 6, width=0.0625).eval()
    return str(export_onnx(model, tmp_path_factory.mktemp("onnx") / "model.onnx", CONFIG.to_dict()).onnx_path)


@pytest.fixture
def damaged(isles_dir, tmp_path):
    """The 5 synthetic cases with training_3's ADC corrupt and training_2's label unreadable."""
    data = tmp_path / "data"
    shutil.copytree(isles_dir, data)
    next((data / "training_3").rglob("*.MR_ADC.*.nii*")).write_bytes(b"not a nifti file")
    next((data / "training_2").rglob("*.OT.*.nii*")).write_bytes(b"broken label")
    return data


def _predict(capsys, *args):
    code = run(main, [str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, [line for line in err.splitlines() if line.startswith("strokelens ")]


def _outputs(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if not p.name.startswith("."))


def test_bad_cases_are_reported_and_the_rest_written(onnx_model, damaged, tmp_path, capsys):
    out = tmp_path / "out"
    code, stdout, lines = _predict(capsys, "-m", onnx_model, "-i", damaged, "-o", out)
    assert code == 2
    assert "predicted 4 of 5 cases" in stdout and "1 failed: training_3" in stdout
    failed = [line for line in lines if "failed:" in line]
    assert len(failed) == 1 and "case training_3" in failed[0] and "cannot read" in failed[0]
    assert "1 of 5 cases failed (training_3)" in lines[-1]
    good = ["training_1", "training_2", "training_4", "test_1"]  # training_2's broken label is never read
    assert _outputs(out) == sorted([f"{c}_{k}.nii.gz" for c in good for k in ("lesion", "probability")]
                                   + ["predictions.csv"])
    rows = {r["case"]: r for r in csv.DictReader((out / "predictions.csv").read_text().splitlines())}
    assert {c: r["status"] for c, r in rows.items()} == {**dict.fromkeys(good, "ok"), "training_3": "failed"}
    assert "cannot read" in rows["training_3"]["cause"] and rows["training_1"]["provider"] == "CPUExecutionProvider"


def test_missing_modality_nan_and_mismatched_grid_each_name_their_case(onnx_model, isles_dir, tmp_path, capsys):
    data = tmp_path / "data"
    shutil.copytree(isles_dir, data)
    shutil.rmtree(next((data / "test_1").glob("*.MR_Tmax.*")))
    adc = next((data / "training_1").rglob("*.MR_ADC.*.nii*"))
    image = nib.load(adc)
    values = image.get_fdata()
    values[0, 0, 0] = np.nan
    nib.save(nib.Nifti1Image(values, image.affine), adc)
    mtt = next((data / "training_4").rglob("*.MR_MTT.*.nii*"))
    nib.save(nib.Nifti1Image(np.ones((9, 9, 5), np.float32), nib.load(mtt).affine), mtt)
    code, stdout, lines = _predict(capsys, "-m", onnx_model, "-i", data, "-o", tmp_path / "out")
    assert code == 2 and "predicted 2 of 5 cases" in stdout and "3 failed: test_1, training_1, training_4" in stdout
    failed = {line.split("case ")[1].split(" failed")[0]: line for line in lines if " failed: " in line}
    assert sorted(failed) == ["test_1", "training_1", "training_4"]
    assert "no Tmax file" in failed["test_1"] and "NaN/Inf" in failed["training_1"]
    assert "resample the case's files to one grid" in failed["training_4"]
    assert _outputs(tmp_path / "out") == sorted([f"training_{n}_{k}.nii.gz" for n in (2, 3)
                                                 for k in ("lesion", "probability")] + ["predictions.csv"])


def test_volumes_in_the_csv_are_mask_voxels_times_voxel_volume(onnx_model, isles_dir, tmp_path, capsys):
    out = tmp_path / "out"
    code, stdout, _ = _predict(capsys, "-m", onnx_model, "-i", isles_dir, "-o", out, "--threshold", "0.4")
    assert code == 0 and "predicted 5 cases" in stdout and "s per case" in stdout
    rows = {r["case"]: r for r in csv.DictReader((out / "predictions.csv").read_text().splitlines())}
    for ref in discover(isles_dir):
        case = read_case(ref)
        mask = np.asanyarray(nib.load(out / f"{case.case_id}_lesion.nii.gz").dataobj)
        probability = np.asanyarray(nib.load(out / f"{case.case_id}_probability.nii.gz").dataobj)
        assert np.array_equal(mask, (probability > 0.4).astype(np.uint8))
        row = rows[case.case_id]
        assert int(row["lesion_voxels"]) == int(mask.sum())
        assert float(row["lesion_ml"]) == pytest.approx(mask.sum() * np.prod(case.spacing) / 1000.0, abs=1e-4)
        assert float(row["seconds"]) > 0 and row["status"] == "ok"


def test_empty_mask_warns(onnx_model, isles_dir, tmp_path):
    with pytest.warns(DataWarning, match="case test_1: the predicted lesion mask is empty"):
        result = predict_cases(isles_dir / "test_1", tmp_path / "out", onnx_model, threshold=0.999999)
    assert result.cases == ["test_1"] and result.outcomes[0].lesion_voxels == 0


def test_rerun_skips_overwrite_redoes_and_temporary_files_are_removed(onnx_model, isles_dir, tmp_path, capsys):
    out = tmp_path / "out"
    assert _predict(capsys, "-m", onnx_model, "-i", isles_dir, "-o", out)[0] == 0
    before = {p.name: p.stat().st_mtime_ns for p in out.glob("*.nii.gz")}
    leftover = out / ".training_1_lesion.nii.gz.ab12cd_9.tmp.nii.gz"  # what a SIGKILL during a write leaves
    leftover.write_bytes(b"\x1f\x8b half")
    users = [out / ".my_notes.txt", out / "notes.tmp.nii.gz"]
    for path in users:
        path.write_text("mine")
    code, stdout, _ = _predict(capsys, "-m", onnx_model, "-i", isles_dir, "-o", out)
    assert code == 0 and "predicted 0 cases" in stdout and "skipped 5" in stdout and "removed 1 temporary" in stdout
    assert not leftover.exists() and all(p.read_text() == "mine" for p in users)
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("*.nii.gz") if p not in users} == before
    rows = list(csv.DictReader((out / "predictions.csv").read_text().splitlines()))
    assert len(rows) == 5 and {r["status"] for r in rows} == {"skipped"} and all(r["lesion_ml"] for r in rows)
    (out / "test_1_probability.nii.gz").unlink()  # an incomplete case is redone
    code, stdout, _ = _predict(capsys, "-m", onnx_model, "-i", isles_dir, "-o", out)
    assert "predicted 1 cases" in stdout and "skipped 4" in stdout
    code, stdout, _ = _predict(capsys, "-m", onnx_model, "-i", isles_dir, "-o", out, "--overwrite")
    assert code == 0 and "predicted 5 cases" in stdout and "skipped" not in stdout
    assert all(p.stat().st_mtime_ns > before[p.name] for p in out.glob("*.nii.gz") if p.name in before)


def test_nnunet_naming(onnx_model, nnunet_dir, tmp_path, capsys):
    out, probabilities = tmp_path / "out", tmp_path / "prob"
    assert _predict(capsys, "-m", onnx_model, "-i", nnunet_dir / "imagesTs", "-o", out, "--naming", "nnunet")[0] == 0
    assert _outputs(out) == ["predictions.csv", "test_1.nii.gz"]
    assert _predict(capsys, "-m", onnx_model, "-i", nnunet_dir, "-o", probabilities, "--naming", "nnunet",
                    "--save-probabilities")[0] == 0
    cases = [r.case_id for r in discover(nnunet_dir)]
    assert _outputs(probabilities) == sorted([f"{c}.nii.gz" for c in cases] + [f"{c}_probability.nii.gz" for c in cases]
                                             + ["predictions.csv"])
    mask = nib.load(probabilities / "test_1.nii.gz")
    assert mask.get_data_dtype() == np.uint8 and mask.shape == read_case(discover(nnunet_dir)[-1]).shape[::-1]


@pytest.mark.parametrize("threshold", ["nan", "inf", "0", "1", "-0.5", "1.5"])
def test_bad_threshold_is_one_line(onnx_model, isles_dir, tmp_path, capsys, threshold):
    code, _, lines = _predict(capsys, "-m", onnx_model, "-i", isles_dir, "-o", tmp_path / "out",
                              f"--threshold={threshold}")
    assert code == 2 and len(lines) == 1 and "threshold" in lines[0] and "between 0 and 1" in lines[0]
    assert not (tmp_path / "out").exists()


def test_unwritable_output_is_one_line(onnx_model, isles_dir, tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    code, _, lines = _predict(capsys, "-m", onnx_model, "-i", isles_dir / "test_1", "-o", tmp_path / "file" / "out")
    assert code == 2 and len(lines) == 1 and "lies under the file" in lines[0]
    if os.geteuid() != 0:  # root writes anywhere
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o555)
        code, _, lines = _predict(capsys, "-m", onnx_model, "-i", isles_dir / "test_1", "-o", locked / "out")
        assert code == 2 and len(lines) == 1 and "read-only" in lines[0]


def test_onnx_model_creates_no_mlflow_store(onnx_model, isles_dir, tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    result = subprocess.run([sys.executable, "-m", "mlproject.predict", "-m", onnx_model, "-i",
                             str(isles_dir / "test_1"), "-o", "out"], cwd=tmp_path,
                            env={**env, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_isles2017_naming_is_the_challenge_submission(onnx_model, isles_dir, nnunet_dir, tmp_path, capsys):
    out = tmp_path / "submission"
    code, _, _ = _predict(capsys, "-m", onnx_model, "-i", isles_dir, "-o", out, "--naming", "isles2017",
                          "--submission", "strokelens_run1")
    assert code == 0
    expected = {}
    for ref in discover(isles_dir):  # <id>: the number after MR_MTT. in the case's MTT file (the study's smir_id)
        mtt = next((isles_dir / ref.case_id).rglob("*.MR_MTT.*.nii"))
        expected[f"SMIR.strokelens_run1.{mtt.name.split('.')[-2]}.nii"] = ref
    assert _outputs(out) == sorted([*expected, "predictions.csv"])
    for name, ref in expected.items():
        mask = nib.load(out / name)  # uncompressed NIfTI-1 on the case's grid, as the challenge reads it
        assert (out / name).read_bytes()[344:348] == b"n+1\0" and mask.get_data_dtype() == np.uint8
        assert mask.shape == read_case(ref).shape[::-1] and np.allclose(mask.affine, read_case(ref).affine)
    # MTT need not be an input of the model: the id is found in the case folder
    adc_only = tmp_path / "adc"
    model = models.build("resunet3d", 1, width=0.0625).eval()
    config = PreprocessConfig(modalities=("ADC",), grid=(16, 16, 8)).to_dict()
    one = str(export_onnx(model, tmp_path / "adc.onnx", config).onnx_path)
    assert _predict(capsys, "-m", one, "-i", isles_dir / "training_1", "-o", adc_only, "--naming", "isles2017")[0] == 0
    assert [n for n in _outputs(adc_only) if n.startswith("SMIR.")] == [
        n.replace("strokelens_run1", "strokelens") for n in expected if expected[n].case_id == "training_1"]
    code, _, lines = _predict(capsys, "-m", onnx_model, "-i", nnunet_dir / "imagesTs", "-o", tmp_path / "nn",
                              "--naming", "isles2017")
    assert code == 2 and any("needs the SMIR id of the case's MTT file" in line for line in lines)
    code, _, lines = _predict(capsys, "-m", onnx_model, "-i", isles_dir, "-o", tmp_path / "bad", "--naming",
                              "isles2017", "--submission", "my.run")
    assert code == 2 and "submission name 'my.run' must be letters" in lines[0]
