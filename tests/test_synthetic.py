import hashlib

import numpy as np
import pytest

from benchmark.data.cases import MODALITIES, load_cases
from benchmark.data.synthetic import generate_case, parse_shape, write_dataset
from benchmark.errors import ParameterError
from benchmark.evaluation.clinical_rules import best_combined_rule, best_single_threshold, voxel_table


def _digest(root):
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("layout", ["isles2017", "nnunet"])
def test_same_seed_gives_byte_identical_files(tmp_path, layout):
    a = write_dataset(tmp_path / "a", 2, seed=7, shapes=[(40, 40, 9)], layout=layout, progress=False)
    b = write_dataset(tmp_path / "b", 2, seed=7, shapes=[(40, 40, 9)], layout=layout, progress=False)
    c = write_dataset(tmp_path / "c", 2, seed=8, shapes=[(40, 40, 9)], layout=layout, progress=False)
    assert _digest(a) == _digest(b)
    assert _digest(a) != _digest(c)


def test_case_does_not_depend_on_how_many_cases_are_written():
    first = generate_case(5, 2, (40, 40, 9))
    again = generate_case(5, 2, (40, 40, 9))
    assert all(np.array_equal(first.maps[m], again.maps[m]) for m in MODALITIES)


def test_isles_layout_has_training_test_and_clinical_table(isles_dir):
    assert (isles_dir / "ISLES2017_Training.csv").is_file()
    assert (isles_dir / "ISLES2017_Testing.csv").is_file()
    training = sorted(p.name for p in isles_dir.glob("training_*"))
    assert training == ["training_1", "training_2", "training_3", "training_4"]
    assert list(isles_dir.glob("test_1/*.OT.*")) == []
    assert len(list(isles_dir.glob("training_1/*.OT.*/*.nii"))) == 1
    for m in MODALITIES:
        folder = next(isles_dir.glob(f"training_2/*.Brain.XX.O.MR_{m}.*"))
        assert (folder / f"{folder.name}.nii").is_file()
    prefixes = {next(isles_dir.glob(f"training_{i}/*.MR_ADC.*")).name.split(".")[0] for i in (1, 2)}
    assert prefixes == {"SMIR", "VSD"}


def test_maps_have_physical_units_and_confounders():
    case = generate_case(0, 4, (96, 96, 19))
    brain = case.maps["ADC"] > 0
    median = {m: float(np.median(case.maps[m][brain])) for m in MODALITIES}
    assert 5e-4 < median["ADC"] < 1.2e-3  # mm²/s
    assert 0.5 < median["Tmax"] < 3.0 and 3.0 < median["MTT"] < 7.0 and 7.0 < median["TTP"] < 14.0
    assert 0.3 < median["rCBF"] < 1.2 and 0.3 < median["rCBV"] < 1.2
    assert all((case.maps[m][~brain] == 0).all() for m in MODALITIES)  # skull-stripped
    lesion = case.label > 0
    # the core restricts diffusion and the lesion delays Tmax
    assert case.maps["ADC"][lesion].mean() < case.maps["ADC"][brain & ~lesion].mean()
    assert case.maps["Tmax"][lesion].mean() > 6.0
    # ventricles: high ADC and low perfusion outside the lesion, the classic confounder
    ventricles = brain & (case.maps["ADC"] > 2e-3)
    assert ventricles.sum() > 50
    assert case.maps["rCBF"][ventricles].mean() < 0.3


def test_lesions_vary_in_size_and_site_and_artefacts_occur():
    cases = [generate_case(1, i, (64, 64, 19)) for i in range(1, 25)]
    sizes = [c.clinical["size_class"] for c in cases]
    assert {"small", "medium", "large"} <= set(sizes)
    volumes = [c.clinical["lesion_ml"] for c in cases]
    assert min(volumes) < 3.0 and max(volumes) > 20.0
    sides = {int(np.sign(np.argwhere(c.label)[:, 2].mean() - 31.5)) for c in cases}
    assert sides == {-1, 1}
    assert any(c.clinical["artefact"] != "none" for c in cases)


def test_evidence_marks_what_the_lesion_changed():
    case = generate_case(2, 3, (64, 64, 19))
    lesion = case.label > 0
    union = np.any(np.stack(list(case.evidence.values())), axis=0)
    assert union[lesion].all()
    assert case.evidence["Tmax"].sum() >= lesion.sum()
    assert case.evidence["ADC"].sum() < case.evidence["Tmax"].sum()  # core is inside hypoperfusion


def test_label_needs_several_modalities(tmp_path):
    root = write_dataset(tmp_path / "d", 12, seed=0, shapes=[(64, 64, 19)], test_cases=0, progress=False)
    values, label = voxel_table(load_cases(root))
    singles = {m: best_single_threshold(values[m], label, m).dice for m in MODALITIES}
    combined = best_combined_rule(values, label).dice
    assert max(singles.values()) < 0.6
    assert combined > max(singles.values()) + 0.15


def test_parse_shape():
    assert parse_shape("192x192x19") == (192, 192, 19)
    with pytest.raises(ParameterError, match="192x192x19"):
        parse_shape("192x19")
