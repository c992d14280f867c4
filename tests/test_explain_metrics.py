"""Explanation metrics on hand-made cases, and LRP against the random floor on a trained model."""

import numpy as np
import pytest
import torch
from torch import nn

import explain
import models
from benchmark.data.cases import discover, read_case
from benchmark.data.preprocessing import PreprocessConfig, prepare
from benchmark.training.loop import TrainConfig, fit, seed_everything
from explain import metrics as m
from explain.assessment import explain_case
from explain.filters import RelevanceFilter


def _case():
    lesion = np.zeros((4, 6, 6), bool)
    lesion[1:3, 1:3, 1:3] = True  # 8 voxels
    relevance = np.zeros((2, 4, 6, 6))
    relevance[0][lesion] = 1.0
    relevance[1, 0, 0, 0] = 3.0  # outside the lesion
    relevance[1, 3, 5, 5] = -2.0  # negative relevance is ignored by mass metrics
    return relevance, lesion


def test_seed_coverage_metrics():
    relevance, lesion = _case()
    assert np.allclose(m.blrp_to_ot(relevance, lesion), [1.0, 0.0])
    x = np.zeros((2, 4, 6, 6))
    x[:, :2] = 1.0  # slices 0 and 1 (72 voxels) are "input"
    assert np.allclose(m.blrp_to_bx(relevance, x), [4 / 72, 1 / 72])  # |R| > 0.5 max: 3.0 and -2.0


def test_mass_rank_pointing_and_evidence():
    relevance, lesion = _case()
    assert m.relevance_mass_accuracy(relevance, lesion) == pytest.approx(8 / 11)
    assert m.pointing_game(relevance, lesion) == 0.0  # the single 3.0 voxel wins
    assert m.relevance_rank_accuracy(relevance, lesion) == pytest.approx(7 / 8)
    evidence = np.zeros_like(relevance, bool)
    evidence[0][lesion] = True
    overall, per_modality = m.evidence_mass_accuracy(relevance, evidence)
    assert overall == pytest.approx(8 / 11) and np.allclose(per_modality, [1.0, 0.0])
    assert m.modality_attribution_accuracy(relevance, evidence, lesion) == pytest.approx(1.0)


def test_sparseness_and_spearman():
    one_hot = np.zeros(100)
    one_hot[3] = 5.0
    assert m.sparseness(one_hot) == pytest.approx(0.99)
    assert m.sparseness(np.ones(100)) == pytest.approx(0.0)
    a = np.arange(50.0)
    assert m.spearman(a, a * 3) == pytest.approx(1.0) and m.spearman(a, -a) == pytest.approx(-1.0)
    assert m.conservation_error(np.array([1.0, 2.0]), 4.0) == pytest.approx(0.25)


def _channel0_model():
    model = nn.Conv3d(2, 2, 1, bias=False)
    with torch.no_grad():
        model.weight.zero_()
        model.weight[1, 0] = 1.0  # lesion logit = channel 0
    return model.eval()


def test_region_perturbation_rewards_faithful_relevance():
    x = torch.full((1, 2, 4, 16, 16), 0.01)
    x[0, 0, :2, :4, :8] = 1.0  # two of 32 blocks carry most of the lesion logit
    mask = torch.ones(1, 4, 16, 16)
    faithful = m.region_perturbation(_channel0_model(), x, x[0].numpy(), mask, block=(2, 4, 4))
    inverted = m.region_perturbation(_channel0_model(), x, -x[0].numpy(), mask, block=(2, 4, 4))
    assert faithful["aopc_morf"] > faithful["aopc_lerf"] and faithful["faithfulness"] > 0.2
    assert inverted["faithfulness"] == pytest.approx(-faithful["faithfulness"], abs=0.05)


def test_randomisation_lowers_the_correlation():
    seed_everything(0)
    model = models.build("unet3d", 3, width=0.0625).eval()
    x = torch.rand(1, 3, 8, 16, 16)
    reference = explain.attribute(model, x, "lrp_epsilon")[0].numpy()

    def again(randomised):
        return explain.attribute(randomised, x, "lrp_epsilon")[0].numpy()

    assert m.spearman(reference, again(model)) == pytest.approx(1.0)
    assert m.randomisation_spearman(model, again, reference) < 0.9


@pytest.fixture(scope="module")
def trained(isles_dir):
    config = PreprocessConfig(grid=(32, 32, 12))
    cases = [prepare(read_case(r), config) for r in discover(isles_dir, split="train", with_evidence=True)]
    seed_everything(0)
    model = models.build("unet3d", 6, width=0.125)
    fit(model, cases, cases, TrainConfig(epochs=30, lr=3e-3, loss="dice_ce", augment=0.0, patience=0,
                                         device="cpu", batch_size=1), progress=False)
    return model.eval(), cases, config


def test_lrp_beats_random_on_evidence_mass_accuracy(trained):
    model, cases, config = trained
    scores = {}
    for method in explain.methods():
        values = []
        for case in cases:
            e = explain_case(model, case.image, case.label > 0.5, case.evidence, config.modalities, method,
                             [RelevanceFilter()], heavy="none")[0]
            values.append(e.metrics["evidence_mass_accuracy"])
        scores[method] = float(np.mean(values))
    floor = scores["random"]
    for method in explain.attribution.LRP_METHODS:
        assert scores[method] > 2 * floor, (method, scores)
