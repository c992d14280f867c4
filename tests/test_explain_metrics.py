"""Explanation metrics on hand-made cases, and LRP against the random floor on a trained model."""

import numpy as np
import pytest
import torch
from scipy import stats
from torch import nn

import explain
import models
from benchmark.data.cases import discover, read_case
from benchmark.data.preprocessing import PreprocessConfig, prepare
from benchmark.training.loop import TrainConfig, fit, seed_everything
from explain import metrics as m
from explain.assessment import explain_case
from explain.errors import ExplainError
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
    assert m.randomisation_spearman(model, again, reference, x=x) < 0.9


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
    for method in [name for name in explain.methods() if not explain.unsupported(model, name)]:  # not reference_lrp
        values = []
        for case in cases:
            e = explain_case(model, case.image, case.label > 0.5, case.evidence, config.modalities, method,
                             [RelevanceFilter()], heavy="none")[0]
            values.append(e.metrics["evidence_mass_accuracy"])
        scores[method] = float(np.mean(values))
    floor = scores["random"]
    for method in explain.attribution.LRP_METHODS:
        assert scores[method] > 2 * floor, (method, scores)


def test_spearman_gives_ties_their_average_rank():
    # two independent maps sharing 80 % exact zeros: ties broken by array order gave about 0.5
    rng = np.random.default_rng(0)
    a, b = np.zeros(10_000), np.zeros(10_000)
    support = rng.permutation(10_000)[:2_000]
    a[support], b[support] = rng.normal(size=2_000), rng.normal(size=2_000)
    assert abs(m.spearman(a, b)) < 0.05
    assert m.spearman(a, b) == pytest.approx(stats.spearmanr(a, b).statistic)
    # by hand: ranks (1.5, 1.5, 3, 4) and (1, 2.5, 2.5, 4)
    ra, rb = np.array([1.5, 1.5, 3, 4]), np.array([1, 2.5, 2.5, 4])
    expected = ((ra - ra.mean()) * (rb - rb.mean())).sum() / np.sqrt(((ra - ra.mean()) ** 2).sum()
                                                                      * ((rb - rb.mean()) ** 2).sum())
    assert m.spearman(np.array([0, 0, 1, 2]), np.array([5, 7, 7, 9])) == pytest.approx(expected)
    assert m.spearman(np.zeros(10), np.arange(10.0)) == 0.0  # undefined for a constant map


def test_cascade_runs_from_the_output_head_in_data_flow_order():
    model = models.build("unet3d", 3, width=0.0625).eval()
    x = torch.rand(1, 3, 8, 16, 16)
    order = m.cascade_order(model, x)
    registered = [name for name, module in model.named_modules() if m._owns_state(module)]
    assert order[0] == "head" and sorted(order) == sorted(registered)
    # decoders[2] runs first after the bottleneck (coarsest), decoders[0] last (finest, next to the head)
    assert order.index("decoders.0.conv2") < order.index("decoders.1.conv2") < order.index("decoders.2.conv2")
    assert order.index("bottom.conv1") < order.index("encoders.2.conv1") < order.index("encoders.0.conv1")
    first = m.cascade_stages(model, x)[0]
    assert "head" in first and "decoders.0.bn2" in first and not any(n.startswith("decoders.2") for n in first)


def test_cascade_redraws_every_parameter_and_leaves_the_model_alone():
    seed_everything(0)
    model = models.build("unet3d", 3, width=0.0625)
    with torch.no_grad():  # a state that differs from a fresh build, running statistics included
        model.train()
        model(torch.rand(2, 3, 8, 16, 16))
    model.eval()
    original = {k: v.clone() for k, v in model.state_dict().items()}
    flags = [p.requires_grad for p in model.parameters()]
    x = torch.rand(1, 3, 8, 16, 16)
    stages = m.cascade_stages(model, x, stages=4)
    snapshots = []

    def explain_fn(randomised):
        snapshots.append({k: v.clone() for k, v in randomised.state_dict().items()})
        return np.random.default_rng(len(snapshots)).normal(size=50)

    values = m.randomisation_cascade(model, explain_fn, np.arange(50.0), x=x, stages=4)
    assert len(values) == len(snapshots) == 4
    for stage, state in enumerate(snapshots):
        done = {n for group in stages[:stage + 1] for n in group}
        for key, value in state.items():
            owner, leaf = key.rsplit(".", 1)
            if owner in done and value.is_floating_point():  # weights, biases, BN weight/bias/mean/var
                assert (value != original[key]).all(), (stage, key)
            else:  # later layers and the num_batches_tracked counters stay
                assert torch.equal(value, original[key]), (stage, key)
        assert (state["decoders.0.bn2.running_var"] > 0).all()
    assert all(torch.equal(v, original[k]) for k, v in model.state_dict().items())
    assert not model.training and [p.requires_grad for p in model.parameters()] == flags


def test_integer_masks_equal_bool_masks():
    relevance, lesion = _case()
    relevance = relevance + np.random.default_rng(1).normal(scale=0.1, size=relevance.shape)
    evidence = np.zeros_like(relevance, bool)
    evidence[0][lesion] = True
    evidence[1, :2] = True
    for kind in (np.uint8, np.int64, np.float32):
        le, ev = lesion.astype(kind), evidence.astype(kind)
        assert np.allclose(m.blrp_to_ot(relevance, le), m.blrp_to_ot(relevance, lesion))
        for metric in (m.relevance_mass_accuracy, m.relevance_rank_accuracy, m.pointing_game):
            assert metric(relevance, le) == metric(relevance, lesion), metric
        assert m.relevance_mass_accuracy(relevance, le) <= 1.0
        assert m.evidence_mass_accuracy(relevance, ev)[0] == m.evidence_mass_accuracy(relevance, evidence)[0]
        assert m.modality_attribution_accuracy(relevance, ev, le) == \
            m.modality_attribution_accuracy(relevance, evidence, lesion)


@pytest.mark.parametrize(("mask", "match"), [
    (lambda lesion: lesion.astype(np.int64) * 2, "lesion must be a bool or 0/1 mask"),
    (lambda lesion: lesion * 0.7, "lesion must be a bool or 0/1 mask"),
    (lambda lesion: lesion[:, :, :5], r"lesion has shape \(4, 6, 5\) but the relevance needs \(4, 6, 6\)"),
    (lambda lesion: lesion.astype(str), "lesion must be a bool or 0/1 mask"),
])
def test_other_masks_are_one_line_errors(mask, match):
    relevance, lesion = _case()
    for metric in (m.blrp_to_ot, m.relevance_mass_accuracy, m.relevance_rank_accuracy, m.pointing_game):
        with pytest.raises(ExplainError, match=match) as error:
            metric(relevance, mask(lesion))
        assert "\n" not in str(error.value)
    evidence = np.zeros_like(relevance)
    evidence[0, 0, 0, 0] = 3
    with pytest.raises(ExplainError, match="evidence must be a bool or 0/1 mask"):
        m.evidence_mass_accuracy(relevance, evidence)
    with pytest.raises(ExplainError, match="relevance must be one case's"):
        m.relevance_mass_accuracy(relevance[None], lesion)


def test_tied_scores_count_with_their_expected_share():
    _, lesion = _case()  # 8 of 144 voxels
    flat = np.zeros((2, 4, 6, 6))
    assert m.pointing_game(flat, lesion) == pytest.approx(8 / 144)
    assert m.relevance_rank_accuracy(flat, lesion) == pytest.approx(8 / 144)
    flat[0, 0, 0, 0] = 1.0  # one sure miss, then 7 picks among the 143 tied voxels (8 in the lesion)
    assert m.relevance_rank_accuracy(flat, lesion) == pytest.approx(7 * 8 / 143 / 8)
