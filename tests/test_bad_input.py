"""Every bad input named by the foundation issue: the project's error, the file named, nothing left."""

import gzip
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

import benchmark.data.synthetic as synthetic
from benchmark.data.cases import discover, load_cases, read_case
from benchmark.errors import DataError, ParameterError, StrokelensError

ROOT = Path(__file__).resolve().parents[1]


def _file(root, case, what):
    return next(root.glob(f"{case}/*.{what}.*/*.nii"))


def _cli(*args):
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)


def _assert_one_line_error(result, *needles):
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert lines[0].startswith("strokelens ") and ": error: " in lines[0]
    for needle in needles:
        assert needle in lines[0]


def test_missing_modality(data):
    folder = _file(data, "training_2", "MR_rCBV").parent
    shutil.rmtree(folder)
    with pytest.raises(DataError, match=r"training_2.*no rCBV file"):
        discover(data)
    _assert_one_line_error(_cli("mlproject.summary", "--data", str(data)), "rCBV", "training_2")


def test_corrupt_nifti(data):
    path = _file(data, "training_1", "MR_ADC")
    path.write_bytes(path.read_bytes()[:400])
    with pytest.raises(DataError, match=str(path.name)):
        load_cases(data)
    _assert_one_line_error(_cli("mlproject.summary", "--data", str(data)), path.name)


def test_non_nifti_file(data):
    path = _file(data, "training_1", "MR_Tmax")
    path.write_text("this is not an image\n")
    with pytest.raises(DataError, match=f"{path.name}.*valid .nii"):
        read_case(discover(data)[0])


def test_gzip_garbage_is_reported(tmp_path):
    from benchmark.data.nifti import read_volume

    path = tmp_path / "x.nii.gz"
    path.write_bytes(gzip.compress(b"garbage" * 100))
    with pytest.raises(DataError, match="x.nii.gz"):
        read_volume(path)


def test_4d_image_where_3d_expected(data):
    path = _file(data, "training_1", "MR_MTT")
    image = nib.load(path, mmap=False)
    nib.save(nib.Nifti1Image(np.zeros((*image.shape, 3), np.float32), image.affine), path)
    with pytest.raises(DataError, match=rf"{path.name}.*3-D volume is expected"):
        read_case(discover(data)[0])


def test_grids_differ_inside_one_case(data):
    path = _file(data, "training_1", "MR_rCBF")
    image = nib.load(path, mmap=False)
    nib.save(nib.Nifti1Image(np.zeros((32, 32, 8), np.float32), image.affine), path)
    with pytest.raises(DataError, match=rf"{path.name}.*resample"):
        read_case(discover(data)[0])


def test_affines_differ_inside_one_case(data):
    path = _file(data, "training_1", "MR_rCBF")
    image = nib.load(path, mmap=False)
    nib.save(nib.Nifti1Image(image.get_fdata(dtype=np.float32), image.affine * 2), path)
    with pytest.raises(DataError, match="different affines"):
        read_case(discover(data)[0])


def test_nan_and_inf_voxels(data):
    path = _file(data, "training_3", "MR_TTP")
    image = nib.load(path, mmap=False)
    values = np.asarray(image.dataobj).copy()
    values[0, 0, 0], values[1, 1, 1] = np.nan, np.inf
    nib.save(nib.Nifti1Image(values, image.affine, image.header), path)
    with pytest.raises(DataError, match=rf"{path.name}.*2 NaN/Inf"):
        read_case(discover(data)[2])


def test_non_binary_label(data):
    path = _file(data, "training_1", "OT")
    image = nib.load(path, mmap=False)
    values = np.asarray(image.dataobj).astype(np.uint8) * 255
    nib.save(nib.Nifti1Image(values, image.affine), path)
    with pytest.raises(DataError, match=rf"{path.name}.*not binary.*255"):
        read_case(discover(data)[0])


def test_empty_data_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="neither ISLES 2017 case folders"):
        discover(tmp_path / "empty")
    _assert_one_line_error(_cli("mlproject.summary", "--data", str(tmp_path / "empty")), "empty")


def test_missing_data_folder(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        discover(tmp_path / "nowhere")


def test_wrong_data_folder_points_to_the_right_one(isles_dir):
    with pytest.raises(DataError, match="point to the folder"):
        discover(isles_dir / "training_1")


def test_split_without_cases(data):
    for folder in data.glob("test_*"):
        shutil.rmtree(folder)
    with pytest.raises(DataError, match="no test case"):
        discover(data, split="test")


def test_unknown_modality_name(isles_dir, nnunet_dir):
    with pytest.raises(ParameterError, match="unknown modality FLAIR.*choose from"):
        discover(isles_dir, ["ADC", "FLAIR"])
    with pytest.raises(ParameterError, match="unknown modality DWI"):
        discover(nnunet_dir, ["DWI"])
    with pytest.raises(ParameterError, match="4DPWI"):
        discover(isles_dir, ["4DPWI"])


def test_nnunet_missing_channel_and_label(nnunet_dir, tmp_path):
    root = tmp_path / "Dataset501"
    shutil.copytree(nnunet_dir, root)
    (root / "imagesTr" / "training_2_0003.nii.gz").unlink()
    with pytest.raises(DataError, match=r"training_2_0003.nii.gz.*rCBV.*missing"):
        discover(root)
    shutil.copy(nnunet_dir / "imagesTr" / "training_2_0003.nii.gz", root / "imagesTr")
    (root / "labelsTr" / "training_3.nii.gz").unlink()
    with pytest.raises(DataError, match=r"training_3.nii.gz.*missing"):
        discover(root)


def test_bad_dataset_json(nnunet_dir, tmp_path):
    root = tmp_path / "Dataset501"
    shutil.copytree(nnunet_dir, root)
    (root / "dataset.json").write_text("{not json")
    with pytest.raises(DataError, match="dataset.json"):
        discover(root)


def test_interrupted_generation_leaves_nothing(tmp_path, monkeypatch):
    calls = []
    original = synthetic._write_isles_case

    def fail_on_second(root, case, n):
        calls.append(n)
        if n == 1:
            raise RuntimeError("disk full")
        original(root, case, n)

    monkeypatch.setattr(synthetic, "_write_isles_case", fail_on_second)
    with pytest.raises(RuntimeError):
        synthetic.write_dataset(tmp_path / "out", 3, shapes=[(32, 32, 8)], progress=False)
    assert calls == [0, 1]
    assert list(tmp_path.iterdir()) == []


def test_existing_output_is_kept_unless_overwrite(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    result = _cli("mlproject.synth", "--out", str(out), "--cases", "1", "--shape", "32x32x8")
    _assert_one_line_error(result, str(out), "--overwrite")
    assert (out / "keep.txt").read_text() == "mine"
    file_out = tmp_path / "file"
    file_out.write_text("x")
    with pytest.raises(ParameterError, match="is a file"):
        synthetic.write_dataset(file_out, 1, shapes=[(32, 32, 8)], progress=False)
    synthetic.write_dataset(out, 1, shapes=[(32, 32, 8)], overwrite=True, progress=False)
    assert not (out / "keep.txt").exists() and (out / "training_1").is_dir()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "out"]


@pytest.mark.parametrize("args,needle", [
    (["--cases", "0"], "cases must be at least 1"),
    (["--shape", "12x12"], "--shape"),
    (["--layout", "bids"], "--layout"),
])
def test_synth_cli_rejects_bad_parameters(tmp_path, args, needle):
    _assert_one_line_error(_cli("mlproject.synth", "--out", str(tmp_path / "o"), *args), needle)
    assert not (tmp_path / "o").exists()


def test_errors_are_one_family():
    assert issubclass(DataError, StrokelensError) and issubclass(ParameterError, StrokelensError)
