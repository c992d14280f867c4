import shutil

import nibabel as nib
import numpy as np
import pytest

from benchmark.data.cases import MODALITIES, detect_layout, discover, load_cases, read_case
from benchmark.data.nifti import read_volume


def test_both_layouts_give_identical_cases(isles_dir, nnunet_dir):
    assert detect_layout(isles_dir) == "isles2017" and detect_layout(nnunet_dir) == "nnunet"
    a = load_cases(isles_dir, with_evidence=True)
    b = load_cases(nnunet_dir, with_evidence=True)
    assert [c.case_id for c in a] == [c.case_id for c in b] == [
        "training_1", "training_2", "training_3", "training_4", "test_1"]
    for x, y in zip(a, b):
        assert x.modalities.dtype == np.float32 and x.modalities.shape[0] == len(MODALITIES)
        assert np.array_equal(x.modalities, y.modalities)
        assert np.allclose(x.affine, y.affine) and x.spacing == y.spacing
        assert (x.label is None) == (y.label is None)
        if x.label is not None:
            assert np.array_equal(x.label, y.label)
            assert np.array_equal(x.evidence, y.evidence)
            assert x.evidence.shape == x.modalities.shape and x.evidence.dtype == bool


def test_axis_order_and_spacing_come_from_the_header(isles_dir):
    case = load_cases(isles_dir, split="train")[1]  # 48x56x10 grid
    assert case.shape == (10, 56, 48)  # (D, H, W) = (Z, Y, X)
    adc = next(isles_dir.glob("training_2/*.MR_ADC.*/*.nii"))
    image = nib.load(adc)
    zooms = image.header.get_zooms()
    assert case.spacing == pytest.approx((zooms[2], zooms[1], zooms[0]))
    assert np.array_equal(case.modalities[0], np.asarray(image.dataobj).transpose(2, 1, 0))


def test_grids_vary_between_cases(isles_dir):
    shapes = {c.shape for c in load_cases(isles_dir)}
    assert shapes == {(12, 64, 64), (10, 56, 48)}


def test_test_cases_have_no_label_and_evidence_is_opt_in(isles_dir):
    test = load_cases(isles_dir, split="test")
    assert [c.case_id for c in test] == ["test_1"] and test[0].label is None
    train = load_cases(isles_dir, split="train")
    assert all(c.label is not None and c.evidence is None for c in train)
    assert set(np.unique(train[0].label)) <= {0, 1}


def test_clinical_table_is_attached(isles_dir):
    cases = {c.case_id: c for c in load_cases(isles_dir)}
    assert set(cases["training_1"].clinical) >= {"mRS", "ttMRS", "TICI", "TSS", "TTT"}
    assert set(cases["test_1"].clinical) >= {"TICI", "TSS", "TTT"}


def test_prefix_agnostic_matching_and_4dpwi_is_skipped(isles_dir, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(isles_dir, root)
    case_dir = root / "training_1"
    for folder in list(case_dir.glob("*.Brain.*")):
        new = folder.name.replace("SMIR", "XYZ").replace("VSD", "XYZ")
        (folder / f"{folder.name}.nii").rename(folder / f"{new}.nii")
        folder.rename(case_dir / new)
    pwi = case_dir / "XYZ.Brain.XX.O.MR_4DPWI.9" / "XYZ.Brain.XX.O.MR_4DPWI.9.nii"
    pwi.parent.mkdir()
    nib.save(nib.Nifti1Image(np.zeros((64, 64, 12, 1, 5), np.int16), np.eye(4)), pwi)
    case = read_case(discover(root)[0])
    assert case.modality_names == MODALITIES
    original = read_case(discover(isles_dir)[0])
    assert np.array_equal(case.modalities, original.modalities)


def test_modality_subset_and_order(isles_dir):
    case = load_cases(isles_dir, ["Tmax", "ADC"], split="train")[0]
    full = load_cases(isles_dir, split="train")[0]
    assert case.modality_names == ("Tmax", "ADC")
    assert np.array_equal(case.modalities[1], full.modalities[0])


def test_read_volume_drops_trailing_singletons(tmp_path):
    path = tmp_path / "v.nii.gz"
    nib.save(nib.Nifti1Image(np.ones((5, 6, 7, 1), np.float32), np.diag([1.0, 2.0, 3.0, 1.0])), path)
    volume = read_volume(path)
    assert volume.data.shape == (7, 6, 5) and volume.spacing == (3.0, 2.0, 1.0)
