"""Explanation rankings a degenerate explainer cannot win: one-voxel relevance, the prediction copied, random.

A segmenter whose answer is known by construction (its lesion logit is the local mean of two of
four modalities, so the evidence is those two modalities inside the lesion) is explained by LRP;
its LRP relevance, the same relevance cut down to its single strongest element, the ``prediction``
reference and the ``random`` floor are scored with the real metrics (:func:`explain.assessment.assess`)
and ranked by the leaderboard's rule. (A U-Net trained briefly on the tiny synthetic cases in the
time a test may take segments nothing, so it cannot tell explainers apart.)
"""

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

import explain
import models
from benchmark.reporting.leaderboard import StudyRuns, explanation_table, key_metrics
from explain import metrics as m
from explain.assessment import assess, explain_case
from explain.filters import RelevanceFilter


def one_voxel(relevance: np.ndarray) -> np.ndarray:
    """Only the single element with the largest |R| kept: the sparsest possible 'explanation'."""
    out = np.zeros_like(relevance)
    peak = np.unravel_index(np.abs(relevance).argmax(), relevance.shape)
    out[peak] = relevance[peak]
    return out


def test_prediction_baseline_is_the_predicted_probability_in_every_channel():
    model = models.build("unet3d", 3, width=0.0625).eval()
    x = torch.rand(1, 3, 8, 16, 16)
    relevance = explain.attribute(model, x, "prediction")
    with torch.no_grad():
        probability = torch.softmax(model(x), dim=1)[:, 1]
    assert relevance.shape == x.shape and relevance.dtype == torch.float32
    assert all(torch.allclose(relevance[:, c], probability) for c in range(3))


def test_metrics_that_rank_cannot_be_gamed_by_throwing_relevance_away():
    rng = np.random.default_rng(0)
    lesion = np.zeros((4, 8, 8), bool)
    lesion[1:3, 2:6, 2:6] = True
    evidence = np.zeros((2, 4, 8, 8), bool)
    evidence[0][lesion] = True
    relevance = rng.random((2, 4, 8, 8)) * 0.2
    relevance[0][lesion] += 1.0
    single = one_voxel(relevance)
    assert m.relevance_mass_accuracy(single, lesion) == 1.0  # mass accuracy is won by discarding relevance
    assert m.retained_relevance(single, relevance) < 0.02 and m.retained_relevance(relevance, relevance) == 1.0
    # rank accuracies count the tied zeros with their expected share: chance, not a perfect score
    chance = lesion.mean()
    assert m.relevance_rank_accuracy(single, lesion) == pytest.approx((1 + (lesion.sum() - 1) * (
        (lesion.sum() - 1) / (lesion.size - 1))) / lesion.sum())
    assert m.relevance_rank_accuracy(single, lesion) < chance + 0.05 < m.relevance_rank_accuracy(relevance, lesion)
    copied = np.repeat(lesion[None].astype(float), 2, axis=0)  # the lesion in every modality
    assert m.evidence_rank_accuracy(relevance, evidence) == 1.0
    assert m.evidence_rank_accuracy(copied, evidence) == pytest.approx(0.5)  # ties across the two modalities


def test_region_perturbation_of_a_constant_map_is_zero_whatever_the_order():
    model = models.build("unet3d", 2, width=0.0625).eval()
    x = torch.rand(1, 2, 4, 16, 16)
    mask = torch.ones(1, 4, 16, 16)
    for per_channel in (False, True):
        flat = m.region_perturbation(model, x, np.ones((2, 4, 16, 16)), mask, block=(2, 4, 4), per_channel=per_channel)
        assert flat["faithfulness"] == pytest.approx(0.0, abs=1e-9)


MODALITIES = ("ADC", "Tmax", "rCBF", "TTP")


def _segmenter() -> nn.Module:
    """Lesion logit = mean of ADC and Tmax over a 3×3×3 neighbourhood − 1; background logit 0."""
    conv = nn.Conv3d(4, 2, 3, padding=1)
    with torch.no_grad():
        conv.weight.zero_()
        conv.weight[1, :2] = 1.0 / 27
        conv.bias.copy_(torch.tensor([0.0, -1.0]))
    return nn.Sequential(conv).eval()


def _cases(count: int = 3):
    """Cases (image, lesion, evidence): a box where ADC and Tmax are high; rCBF and TTP vary everywhere."""
    rng = np.random.default_rng(4)
    out = []
    for k in range(count):
        image = rng.uniform(0.0, 0.6, (4, 8, 24, 24)).astype(np.float32)
        lesion = np.zeros((8, 24, 24), bool)
        a, b = 3 + 4 * k, 2 + 3 * k
        lesion[2:6, a:a + 8, b:b + 9] = True
        image[:2, lesion] += 1.6
        evidence = np.zeros((4, 8, 24, 24), bool)
        evidence[:2, lesion] = True
        out.append((f"case_{k}", image, lesion, evidence))
    return out


def _rows(model, cases):
    """Per-case metrics of two LRP methods, a one-voxel cut, the prediction reference and the random floor."""
    rows = []
    for case_id, image, lesion, evidence in cases:
        for method in ("lrp_zplus", "lrp_epsilon", "prediction", "random"):
            e = explain_case(model, image, lesion, evidence, MODALITIES, method, [RelevanceFilter()], heavy="none")[0]
            rows.append({"method": method, "filter": "raw", "case": case_id, **e.metrics})
            if method == "lrp_epsilon":
                cut = assess(model, image, one_voxel(e.relevance), lesion, evidence, MODALITIES, raw=e.relevance)
                rows.append({"method": "one_voxel", "filter": "raw", "case": case_id, **cut})
    return pd.DataFrame(rows)


def test_degenerate_explainers_do_not_rank_first_against_lrp():
    per_case = _rows(_segmenter(), _cases())
    means = per_case.drop(columns="case").groupby(["method", "filter"], as_index=False).mean()
    runs = StudyRuns("e", "s")
    runs.explanation_rows = means.assign(architecture="conv", filter_kind="raw", filter_mode="layer",
                                         run_id=means["method"])
    table = explanation_table(runs)
    keys = key_metrics(table.columns)
    assert keys == ["faithfulness", "evidence_rank_accuracy", "relevance_rank_accuracy"]
    ranked = list(table["method"])
    assert ranked[0] in ("lrp_zplus", "lrp_epsilon"), table[["method", "rank_score", *keys]].to_string()
    assert ranked.index("one_voxel") > ranked.index("lrp_epsilon")
    assert ranked.index("prediction") > 0
    by_method = table.set_index("method")
    one, lrp = by_method.loc["one_voxel"], by_method.loc["lrp_epsilon"]
    assert one["relevance_mass_accuracy"] >= lrp["relevance_mass_accuracy"]  # what the old rule rewarded
    assert one["retained_relevance"] < 0.01 and lrp["retained_relevance"] == 1.0
    assert by_method.loc["prediction", "evidence_rank_accuracy"] < lrp["evidence_rank_accuracy"]
    assert by_method.loc["random", "rank_score"] > lrp["rank_score"]
