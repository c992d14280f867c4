"""Suspicious data is said once per cause; one broken case never hides or blocks the others."""

import shutil
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from benchmark.data.cases import check_labels, discover, prediction_inputs, read_case
from benchmark.errors import CaseError, DataWarning

ROOT = Path(__file__).resolve().parents[1]


def _drop(root, case, modality):
    shutil.rmtree(next(root.glob(f"{case}/*.MR_{modality}.*")))


def test_a_broken_test_case_does_not_block_training_discovery(data):
    _drop(data, "test_1", "Tmax")
    train = discover(data, split="train")  # the unlabelled case is never used by training
    assert [r.case_id for r in train] == ["training_1", "training_2", "training_3", "training_4"]
    with pytest.raises(CaseError, match=r"case test_1: no Tmax file"):
        discover(data, split="test")


def test_problems_name_each_broken_case_and_its_file(data):
    _drop(data, "training_3", "ADC")
    problems = []
    refs = prediction_inputs(data, ("ADC", "MTT", "rCBF", "rCBV", "Tmax", "TTP"), problems)
    assert "training_3" not in [r.case_id for r in refs] and len(refs) == 4
    assert [p.case_id for p in problems] == ["training_3"]
    assert "no ADC file" in str(problems[0]) and "training_3" in str(problems[0])
    assert "several" not in str(problems[0])  # never blamed on the data folder


def test_nnunet_missing_channel_names_the_case(nnunet_dir, tmp_path):
    root = tmp_path / "nn"
    shutil.copytree(nnunet_dir, root)
    (root / "imagesTr" / "training_2_0004.nii.gz").unlink()
    problems = []
    refs = discover(root, problems=problems)
    assert "training_2" not in [r.case_id for r in refs]
    assert "case training_2" in str(problems[0]) and "training_2_0004.nii.gz" in str(problems[0])


def test_stray_file_all_zero_modality_and_empty_labels_warn(data):
    (data / "training_9").write_text("not a folder")
    with pytest.warns(DataWarning, match="training_9.*is a file where a case folder is expected"):
        refs = discover(data, split="train")
    path = refs[0].images["rCBF"]
    image = nib.load(path)
    nib.save(nib.Nifti1Image(np.zeros(image.shape, np.float32), image.affine, image.header), path)
    with pytest.warns(DataWarning, match="training_1: the rCBF image .* is all zero"):
        case = read_case(refs[0])
    case.label[:] = 0
    with pytest.warns(DataWarning, match="none of the 1 training cases has a lesion voxel"):
        check_labels([case])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_labels([read_case(refs[1])])  # a lesion somewhere: no warning


def test_cli_prints_a_data_warning_as_one_line(data):
    (data / "training_9").write_text("not a folder")
    result = subprocess.run([sys.executable, "-m", "mlproject.summary", "--data", str(data), "--no-rules"],
                            cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("strokelens summary: warning: ") and "training_9" in lines[0]


def test_sigterm_exits_143_with_one_line(tmp_path):
    script = ("import time\nfrom mlproject._cli import run\n"
              "def main(argv):\n    print('ready', flush=True)\n    time.sleep(60)\nrun(main)\n")
    (tmp_path / "s.py").write_text(script.replace("run(main)", "import sys\nsys.exit(run(main))"))
    child = subprocess.Popen([sys.executable, str(tmp_path / "s.py")], cwd=ROOT, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin"})
    assert child.stdout.readline().strip() == "ready"
    time.sleep(0.2)
    child.send_signal(signal.SIGTERM)
    _, err = child.communicate(timeout=60)
    assert child.returncode == 143
    assert err.strip().splitlines() == ["strokelens s: terminated (SIGTERM); run the same command again to resume"]
