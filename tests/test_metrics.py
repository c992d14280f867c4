"""Segmentation metrics against cases small enough to compute by hand."""

import numpy as np
import pytest

from benchmark.errors import ParameterError
from benchmark.evaluation.segmentation import METRIC_NAMES, hd95_assd, lesion_f1, segmentation_metrics


def _mask(shape=(6, 6, 8), *boxes):
    m = np.zeros(shape, bool)
    for box in boxes:
        m[box] = True
    return m


def test_shifted_cubes():
    # 2×2×2 cubes shifted by one voxel along W: 4 shared voxels, every voxel is on the surface;
    # half of each cube lies on the other's surface (distance 0), the other half one voxel away.
    p = _mask((6, 6, 8), np.s_[2:4, 2:4, 2:4])
    g = _mask((6, 6, 8), np.s_[2:4, 2:4, 3:5])
    m = segmentation_metrics(p, g, (1.0, 1.0, 1.0))
    assert m["dice"] == pytest.approx(0.5)
    assert m["precision"] == pytest.approx(0.5) and m["recall"] == pytest.approx(0.5)
    assert m["hd95"] == pytest.approx(1.0) and m["assd"] == pytest.approx(0.5)
    assert m["volume_diff_ml"] == 0.0 and m["lesion_f1"] == 1.0
    assert set(m) == set(METRIC_NAMES)


def test_distances_use_spacing_in_mm():
    p = _mask((6, 6, 8), np.s_[2:4, 2:4, 2:4])
    g = _mask((6, 6, 8), np.s_[2:4, 2:4, 3:5])
    hd95, assd = hd95_assd(p, g, (2.0, 1.0, 3.0))  # the shift is along W, 3 mm voxels
    assert hd95 == pytest.approx(3.0) and assd == pytest.approx(1.5)


def test_single_voxels_three_four_five():
    p = _mask((2, 5, 6), np.s_[0, 0, 0])
    g = _mask((2, 5, 6), np.s_[0, 3, 4])
    hd95, assd = hd95_assd(p, g, (1.0, 1.0, 1.0))
    assert hd95 == pytest.approx(5.0) and assd == pytest.approx(5.0)


def test_volume_difference_in_ml():
    p = _mask((8, 8, 8), np.s_[0:2, 0:2, 0:2])  # 8 voxels
    g = _mask((8, 8, 8), np.s_[3:6, 3:6, 3:6])  # 27 voxels
    m = segmentation_metrics(p, g, (2.0, 2.0, 2.0))  # 8 mm³ per voxel
    assert m["volume_diff_ml"] == pytest.approx(19 * 8 / 1000)
    assert m["dice"] == 0.0 and m["lesion_f1"] == 0.0


def test_lesion_wise_f1_uses_26_connectivity():
    g = _mask((8, 8, 8), np.s_[0, 0, 0], np.s_[1, 1, 1], np.s_[5:7, 5:7, 5:7])  # 2 lesions
    assert lesion_f1(g, g) == 1.0
    # finds the diagonal lesion through one voxel, misses the other, adds a false lesion
    p = _mask((8, 8, 8), np.s_[1, 1, 1], np.s_[3, 7, 0])
    assert lesion_f1(p, g) == pytest.approx(0.5)  # precision 1/2, recall 1/2


def test_empty_mask_conventions():
    empty = np.zeros((4, 5, 6), bool)
    lesion = _mask((4, 5, 6), np.s_[1:3, 1:3, 1:3])
    both = segmentation_metrics(empty, empty, (1, 1, 1))
    assert both == {"dice": 1.0, "hd95": 0.0, "assd": 0.0, "volume_diff_ml": 0.0, "precision": 1.0,
                    "recall": 1.0, "lesion_f1": 1.0}
    miss = segmentation_metrics(empty, lesion, (1.0, 2.0, 3.0))
    diagonal = np.sqrt(4**2 + 10**2 + 18**2)
    assert miss["dice"] == 0.0 and miss["precision"] == 0.0 and miss["recall"] == 0.0
    assert miss["hd95"] == pytest.approx(diagonal) and miss["assd"] == pytest.approx(diagonal)
    false_alarm = segmentation_metrics(lesion, empty, (1.0, 2.0, 3.0))
    assert false_alarm["precision"] == 0.0 and false_alarm["recall"] == 1.0
    assert false_alarm["lesion_f1"] == 0.0


def test_wrong_shapes_and_spacing_are_errors():
    with pytest.raises(ParameterError, match="same grid"):
        segmentation_metrics(np.zeros((2, 2, 2)), np.zeros((2, 2, 3)), (1, 1, 1))
    with pytest.raises(ParameterError, match="spacing"):
        segmentation_metrics(np.zeros((2, 2, 2)), np.zeros((2, 2, 2)), (1, 0, 1))
