"""``reference_lrp`` as an ``explain`` method: routing, options, refusals, and the explanation stage around it.

Its numbers are proven against the study's own code in ``test_reference_parity.py``; here the API is
checked to give exactly what :mod:`explain.reference` gives, and to refuse what it cannot explain.
"""

import json

import numpy as np
import pytest
import torch

import explain
import models
from benchmark.data.preprocessing import PreprocessConfig
from benchmark.errors import ParameterError
from benchmark.stages.explanations import explain_model
from benchmark.training.loop import save_checkpoint
from explain.assessment import explain_case
from explain.attribution import REFERENCE_LRP
from explain.baselines import BASELINES
from explain.composites import COMPOSITES
from explain.errors import ExplainError
from explain.filters import RelevanceFilter, parse_filters, study_sweep
from explain.reference import reference_lrp, reference_lrp_sweep


@pytest.fixture
def reference():
    torch.manual_seed(0)
    return models.build("unet3d_reference", 3, width=0.0625).eval()


@pytest.fixture
def x():
    torch.manual_seed(1)
    return torch.rand(1, 3, 11, 16, 16)


def test_methods_list_it_between_the_composites_and_the_baselines():
    assert explain.methods() == [*COMPOSITES, REFERENCE_LRP, *BASELINES]
    assert explain.is_lrp(REFERENCE_LRP) and explain.is_lrp("lrp_zplus") and not explain.is_lrp("gradient")


def test_attribute_gives_exactly_the_reference_propagation(reference, x):
    assert torch.equal(explain.attribute(reference, x, "reference_lrp"), reference_lrp(reference, x))
    f = RelevanceFilter("clamp", 0.0, 0.2)
    ours = explain.attribute(reference, x, "reference_lrp", layer_filter=f, first_layer="published",
                             skip_slice="corrected", concat_factors=(0.3, 0.5, 0.7))
    expected = reference_lrp(reference, x, layer_filter=f, first_layer="published", skip_slice="corrected",
                             concat_factors=(0.3, 0.5, 0.7))
    assert torch.equal(ours, expected)
    assert not torch.equal(ours, explain.attribute(reference, x, "reference_lrp", layer_filter=f))


def test_the_sweep_explains_the_whole_output_map(reference, x):
    filters = study_sweep("layer") + parse_filters(["post_pass_0.2_1"])
    swept, explained = explain.lrp_sweep(reference, x, "reference_lrp", filters)
    expected = reference_lrp_sweep(reference, x, filters)
    assert list(swept) == [f.name for f in filters]
    assert all(torch.equal(swept[name], expected[name]) for name in expected)
    with torch.no_grad():
        assert torch.allclose(explained, reference(x).sum(dim=(1, 2, 3, 4)), rtol=1e-6)


def test_it_refuses_other_networks_targets_and_options(reference, x):
    unet = models.build("unet3d", 3, width=0.0625)
    with pytest.raises(ExplainError, match="study's architecture only"):
        explain.attribute(unet, x, "reference_lrp")
    assert "study's architecture only" in explain.unsupported(unet, "reference_lrp")
    assert explain.unsupported(reference, "reference_lrp") == ""
    assert explain.unsupported(unet, "lrp_zplus") == "" and "unknown" in explain.unsupported(unet, "lrp_magic")
    for target in ("map", "lesion", (1, 2, 3), np.ones((11, 16, 16), bool)):
        with pytest.raises(ExplainError, match="whole output map of both classes"):
            explain.attribute(reference, x, "reference_lrp", target=target)
    with pytest.raises(ExplainError, match="takes no option epsilon: its options are first_layer"):
        explain.attribute(reference, x, "reference_lrp", epsilon=1e-6)
    with pytest.raises(ExplainError, match="no per-layer relevance ledger"):
        explain.relevance_balance(reference, x, "reference_lrp")
    with pytest.raises(ExplainError, match="no composite"):
        explain.rule_map(reference, x, "reference_lrp")


def test_a_case_is_explained_with_layer_filters_and_metrics(reference):
    torch.manual_seed(2)
    image = torch.rand(3, 11, 16, 16).numpy()
    lesion = np.zeros((11, 16, 16), bool)
    lesion[4:7, 5:9, 5:9] = True
    results = explain_case(reference, image, lesion, None, ("ADC", "Tmax", "MTT"), "reference_lrp",
                           parse_filters(["raw", "pass_0_0.2", "post_clamp_0_0.2"]), heavy="raw")
    assert [e.filter.name for e in results] == ["raw", "pass_0_0.2", "post_clamp_0_0.2"]  # layer filters kept
    raw = results[0]
    assert np.allclose(raw.relevance, reference_lrp(reference, torch.from_numpy(image[None]))[0].numpy())
    assert {"conservation_error", "blrp_to_ot", "faithfulness", "randomisation_spearman"} <= set(raw.metrics)


def _checkpoint(folder, architecture):
    torch.manual_seed(0)
    model = models.build(architecture, 6, width=0.0625)  # random weights: what is tested is the routing
    folder.mkdir()
    path = save_checkpoint(folder / "best.pt", model, None, 0, [])
    (folder / "preprocess.json").write_text(json.dumps(PreprocessConfig(grid=(16, 16, 11)).to_dict()))
    return path


def test_the_stage_skips_it_on_other_networks_and_runs_it_on_the_reference(isles_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    monkeypatch.chdir(tmp_path)
    unet = _checkpoint(tmp_path / "unet", "unet3d")
    result = explain_model(str(unet), isles_dir, ["all"], ["raw"], ["training_2"], heavy="none")
    assert "reference_lrp" not in result.methods and "study's architecture only" in result.skipped["reference_lrp"]
    assert any(line.startswith("skipped reference_lrp: ") for line in result.lines())
    with pytest.raises(ParameterError, match="method 'reference_lrp' cannot explain this model"):
        explain_model(str(unet), isles_dir, ["reference_lrp"], ["raw"], ["training_2"], heavy="none")
    study_net = _checkpoint(tmp_path / "reference", "unet3d_reference")
    result = explain_model(str(study_net), isles_dir, ["reference_lrp", "random"], ["raw", "pass_0_0.2"],
                           ["training_2"], heavy="none")
    assert not result.skipped
    assert {(row["method"], row["filter"]) for row in result.table} == {
        ("reference_lrp", "raw"), ("reference_lrp", "pass_0_0.2"), ("random", "raw")}
