"""The data set's fingerprint and plan: nnU-Net's target-spacing rule, the memory rule, plan.json, the CLI."""

import json
import math

import numpy as np
import pytest
import torch
from torch import nn

from benchmark.data.cases import discover, read_case
from benchmark.data.planning import (
    BYTES_PER_ELEMENT,
    Plan,
    activations_per_voxel,
    downsampling_factor,
    fingerprint,
    make_plan,
    memory_budget,
    memory_bytes,
    plan_patch,
    target_spacing,
)
from benchmark.data.synthetic import write_dataset
from benchmark.errors import DataError, ParameterError
from mlproject.plan import main as plan_main
from models.registry import available, build
from tests.conftest import SHAPES

FOV_MM = {"X": 220.0, "Y": 220.0, "Z": 120.0}  # the generator's field of view (benchmark/data/synthetic.py)


def test_median_spacing_when_not_anisotropic():
    spacings = np.array([[1.0, 1.0, 2.0], [1.2, 1.2, 2.5], [0.8, 0.8, 3.5]])
    shapes = np.array([[200, 200, 60], [180, 180, 50], [220, 220, 40]])
    spacing, info = target_spacing(spacings, shapes)
    assert spacing == pytest.approx((1.0, 1.0, 2.5))
    assert not info["applied"] and info["axis"] == "Z" and info["ratio"] == pytest.approx(2.5)


def test_anisotropic_axis_takes_its_tenth_percentile():
    spacings = np.array([[1.0, 1.0, 3.0], [1.0, 1.0, 5.0], [1.0, 1.0, 6.0], [1.0, 1.0, 6.0], [1.0, 1.0, 6.0]])
    shapes = np.array([[200, 200, 20]] * 5)
    spacing, info = target_spacing(spacings, shapes)
    # median Z 6 > 3 × 1 and 20 · 3 < 200: the 10th percentile of (3, 5, 6, 6, 6) is 3 + 0.4 · (5 − 3) = 3.8
    assert info["applied"] and info["axis"] == "Z"
    assert spacing == pytest.approx((1.0, 1.0, 3.8))


def test_anisotropic_spacing_alone_keeps_the_median():
    # the low-resolution axis also has many voxels: nnU-Net needs both conditions
    spacings = np.array([[1.0, 1.0, 4.0], [1.0, 1.0, 5.0], [1.0, 1.0, 6.0]])
    shapes = np.array([[200, 200, 100]] * 3)
    spacing, info = target_spacing(spacings, shapes)
    assert not info["applied"] and spacing == pytest.approx((1.0, 1.0, 5.0))


def test_low_resolution_axis_never_finer_than_the_others():
    spacings = np.array([[2.0, 2.0, 1.0], [2.0, 2.0, 7.0], [2.0, 2.0, 7.0], [2.0, 2.0, 7.0], [2.0, 2.0, 7.0]])
    shapes = np.array([[100, 100, 10]] * 5)
    spacing, info = target_spacing(spacings, shapes)
    assert info["applied"]  # 10th percentile 1 + 0.4 · 6 = 3.4 ≥ 2: kept
    assert spacing[2] == pytest.approx(3.4)
    spacings[:2, 2] = 1.0  # now the 10th percentile is 1 < 2: clipped to the largest other spacing
    spacing, _ = target_spacing(spacings, shapes)
    assert spacing[2] == pytest.approx(2.0 + 1e-5)


def test_fingerprint_reads_known_spacings_sizes_and_volumes(isles_dir):
    found = fingerprint(isles_dir, progress=False)
    refs = discover(isles_dir, split="train")
    assert [c.case_id for c in found.cases] == [r.case_id for r in refs]
    for n, (c, ref) in enumerate(zip(found.cases, refs, strict=True)):
        shape = SHAPES[n % len(SHAPES)]
        assert c.shape == shape
        assert c.spacing == pytest.approx(tuple(FOV_MM[a] / s for a, s in zip("XYZ", shape)), rel=1e-5)
        case = read_case(ref)
        voxel_ml = np.prod([FOV_MM[a] / s for a, s in zip("XYZ", shape)]) / 1000
        assert c.lesion_ml == pytest.approx(case.label.sum() * voxel_ml, rel=1e-5)
        assert 0 < c.lesion_ml < c.brain_ml
    for stats in found.intensity.values():
        assert stats["p00_5"] <= stats["median"] <= stats["p99_5"] and stats["std"] > 0


def test_plan_on_synthetic_data_with_known_spacings(isles_dir, tmp_path):
    plan = make_plan(isles_dir, progress=False)
    spacings = np.array([[FOV_MM[a] / s for a, s in zip("XYZ", shape)] for shape in SHAPES * 2])
    assert plan.spacing == pytest.approx(tuple(np.median(spacings, 0)))  # ratio < 3: the median everywhere
    expected = [[round(n * s / t) for n, s, t in zip(shape, row, plan.spacing)]
                for shape, row in zip(SHAPES * 2, spacings)]
    assert plan.median_shape == tuple(int(round(v)) for v in np.median(expected, 0))
    assert all(p % 8 == 0 and p <= max(8, m) for p, m in zip(plan.patch, plan.median_shape))
    config = plan.preprocess()
    assert config.mode == "native" and config.grid == plan.patch and config.spacing == plan.spacing
    assert config.normalization == "robust"
    path = plan.save(tmp_path / "plan.json")
    assert Plan.load(path) == plan
    assert json.loads(path.read_text())["preprocess"] == config.to_dict()
    assert not list(tmp_path.glob(".*tmp*"))  # atomic: no temporary left


def test_plan_on_anisotropic_synthetic_data(tmp_path):
    shapes = [(64, 64, 8), (64, 64, 12)]  # Z spacing 15 and 10 mm against 3.4 mm in plane: 12.5 / 3.4 > 3
    data = write_dataset(tmp_path / "aniso", 4, seed=1, shapes=shapes, progress=False)
    plan = make_plan(data, progress=False)
    assert plan.anisotropy["applied"] and plan.anisotropy["axis"] == "Z"
    assert plan.spacing[2] == pytest.approx(np.percentile([15, 10, 15, 10], 10))
    assert plan.median_shape[2] == 12


def test_memory_rule_formula_and_patch_search():
    per_voxel, params = 300.0, 1_000_000
    assert memory_bytes(1000, 2, per_voxel, params) == 2 * 2 * 1000 * per_voxel * BYTES_PER_ELEMENT + 16 * params
    median = (128, 128, 25)
    # a huge budget: the median shape rounded down to multiples of 8; the batch is the data set cap (at least 2)
    patch, batch = plan_patch(median, 1e15, per_voxel, params, 8, dataset_voxels=10 * 128 * 128 * 25)
    assert patch == (128, 128, 24) and batch == 2
    patch, batch = plan_patch(median, 1e15, per_voxel, params, 8, dataset_voxels=1000 * 128 * 128 * 25)
    assert batch == round(0.05 * 1000 * 128 * 128 * 25 / (128 * 128 * 24))
    budget = 300e6
    patch, batch = plan_patch(median, budget, per_voxel, params, 8, dataset_voxels=1e12)
    assert memory_bytes(math.prod(patch), 2, per_voxel, params) <= budget
    assert all(p % 8 == 0 and p <= m for p, m in zip(patch, median))
    assert batch == (budget - 16 * params) // (2 * math.prod(patch) * per_voxel * BYTES_PER_ELEMENT)
    # the loop shrinks the axis largest relative to the median, so no axis is more than a step ahead of another
    ratios = [p / m for p, m in zip(patch, median)]
    assert all(ratios[i] <= (patch[j] + 8) / median[j] for i in range(3) for j in range(3))
    assert memory_bytes(math.prod(patch) // patch[2] * (patch[2] + 8), 2, per_voxel, params) > budget
    with pytest.raises(ParameterError, match="smaller width or on a GPU"):
        plan_patch(median, 1e6, per_voxel, params, 8, dataset_voxels=1e9)


def test_activations_are_counted_per_input_voxel():
    model = nn.Sequential(nn.Conv3d(2, 4, 3, padding=1), nn.ReLU(), nn.Conv3d(4, 3, 1))
    assert activations_per_voxel(model, 2) == pytest.approx(4 + 4 + 3)
    pooled = nn.Sequential(nn.Conv3d(1, 8, 1), nn.MaxPool3d(2))
    assert activations_per_voxel(pooled, 1) == pytest.approx(8 + 8 / 8)


@pytest.mark.parametrize("name", available())
def test_every_network_downsamples_by_eight_and_keeps_divisible_patches(name):
    model = build(name, 6, width=0.125)
    assert downsampling_factor(model) == 8
    with torch.no_grad():
        assert model.eval()(torch.zeros(1, 6, 8, 16, 24)).shape == (1, 2, 8, 16, 24)


def test_budgets():
    assert 0 < memory_budget("cpu") <= 2 * 1024**3
    if not torch.cuda.is_available():
        with pytest.raises(ParameterError, match="no CUDA GPU"):
            memory_budget("cuda")
    with pytest.raises(ParameterError, match="unknown"):
        memory_budget("tpu")


def test_bad_plans_name_the_file(tmp_path):
    with pytest.raises(DataError, match="does not exist: write one with python -m mlproject.plan"):
        Plan.load(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text('{"spacing": [1, 1, 1]}')
    with pytest.raises(DataError, match="lacks patch"):
        Plan.load(tmp_path / "bad.json")


def test_plan_command_writes_the_plan_and_prints_a_summary(isles_dir, tmp_path, capsys):
    out = tmp_path / "plan.json"
    assert plan_main(["--data", str(isles_dir), "--out", str(out), "--normalization", "minmax"]) == 0
    printed = capsys.readouterr().out
    assert "target spacing" in printed and "patch" in printed and str(out) in printed
    plan = Plan.load(out)
    assert plan.preprocess().normalization == "minmax" and plan.memory["device"] == "cpu"
    assert plan.memory["width"] == 0.25
