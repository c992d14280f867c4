"""Metrics against reference implementations and published definitions.

Segmentation: Dice, HD95 and ASSD against MONAI 1.6 (``monai.metrics``) and MedPy 0.5
(``medpy.metric.binary``), both conventions of each, on the project generator's lesions, random
blobs and hand-made masks with anisotropic spacing. MedPy 0.4's ASSD is written out below.

Explanations: each metric of :mod:`explain.metrics` against its published definition written out
slowly (loops over voxels, as Quantus states them), on random 3-D inputs.
"""

import copy
import itertools

import medpy.metric.binary as medpy
import numpy as np
import pytest
import torch
from monai.metrics import compute_average_surface_distance, compute_dice, compute_hausdorff_distance
from scipy import ndimage
from torch import nn

from benchmark.data.synthetic import generate_case
from benchmark.evaluation.segmentation import assd, dice, hd95, hd95_assd, segmentation_metrics
from explain import metrics as m

# MONAI 1.6's own compute_* functions pass an argument it has deprecated
pytestmark = pytest.mark.filterwarnings("ignore:.*always_return_as_numpy.*:FutureWarning")

# ---------------------------------------------------------------- segmentation: the mask pairs


def _generated_pairs():
    """Label and evidence masks of the project's synthetic cases: real lesion shapes, 5.5 × 5.5 × 12 mm voxels."""
    pairs = []
    for index in (1, 2):
        case = generate_case(3, index, (48, 48, 12))
        spacing = tuple(float(s) for s in np.abs(np.diag(case.affine))[:3][::-1])  # (D, H, W)
        label = case.label > 0
        pairs.append((f"generated{index}-label-rCBF", label, case.evidence["rCBF"], spacing))
        pairs.append((f"generated{index}-rCBF-Tmax", case.evidence["rCBF"], case.evidence["Tmax"], spacing))
    return pairs


def _blob(rng, shape, level):
    return ndimage.gaussian_filter(rng.normal(size=shape), 1.5) > level


def _random_pairs():
    rng = np.random.default_rng(7)
    pairs = []
    for i, spacing in enumerate([(3.0, 0.8, 1.1), (5.0, 0.9, 0.9), (1.0, 2.5, 0.7)]):
        shape = (10, 24, 20)
        pairs.append((f"random{i}", _blob(rng, shape, 0.15), _blob(rng, shape, 0.2), spacing))
    return pairs


def _box(shape, *boxes):
    mask = np.zeros(shape, bool)
    for box in boxes:
        mask[box] = True
    return mask


def _ball(shape, centre, radius, spacing):
    grid = np.stack(np.meshgrid(*[np.arange(n) * s for n, s in zip(shape, spacing)], indexing="ij"))
    return (((grid - np.reshape(np.multiply(centre, spacing), (3, 1, 1, 1))) ** 2).sum(0)) <= radius ** 2


def _hand_made_pairs():
    shape = (12, 20, 20)
    spacing = (4.0, 1.0, 1.5)
    big = _ball(shape, (6, 10, 10), 7.5, spacing)
    far = _box(shape, np.s_[1:3, 16:19, 16:19])  # 18 surface voxels; the lesion has 214
    return [
        ("shifted cubes", _box(shape, np.s_[3:7, 4:9, 4:9]), _box(shape, np.s_[4:8, 5:10, 6:11]), spacing),
        ("ball in ball", _ball(shape, (6, 10, 10), 4.0, spacing), big, spacing),
        # a lesion plus a distant false positive with 8 % of the prediction's surface but 4 % of both: the directed
        # P95 (MONAI) sees it, the pooled P95 (MedPy) does not
        ("lesion plus far blob", big | far, big, spacing),
        ("touches the border", _box(shape, np.s_[0:5, 0:6, 12:20]), _box(shape, np.s_[0:4, 0:8, 14:20]), spacing),
        ("two components", _box(shape, np.s_[2:4, 2:5, 2:5], np.s_[8:11, 14:18, 14:18]),
         _box(shape, np.s_[2:5, 3:6, 2:5]), spacing),
    ]


PAIRS = _generated_pairs() + _random_pairs() + _hand_made_pairs()


def _monai(p, g):
    return torch.from_numpy(p[None, None].astype(np.float32)), torch.from_numpy(g[None, None].astype(np.float32))


def _medpy04_assd(p, g, spacing):
    """MedPy 0.4.0's assd (medpy/metric/binary.py), the mean of the two directed mean surface distances:

    ``assd = numpy.mean((asd(result, reference, voxelspacing, connectivity),
    asd(reference, result, voxelspacing, connectivity)))``; ``asd`` is unchanged in 0.5.
    """
    return np.mean((medpy.asd(p, g, voxelspacing=spacing), medpy.asd(g, p, voxelspacing=spacing)))


def test_pairs_are_non_trivial():
    for name, p, g, _ in PAIRS:
        assert p.any() and g.any() and (p != g).any(), name


@pytest.mark.parametrize(("name", "p", "g", "spacing"), PAIRS, ids=[pair[0] for pair in PAIRS])
def test_dice_hd95_assd_equal_monai_and_medpy(name, p, g, spacing):
    y_pred, y = _monai(p, g)
    assert dice(p, g) == pytest.approx(float(compute_dice(y_pred, y, include_background=True)[0, 0]), abs=1e-6)
    assert dice(p, g) == pytest.approx(medpy.dc(p, g), abs=1e-12)

    # HD95, directed (default): MONAI's percentile=95 form
    monai_hd95 = float(compute_hausdorff_distance(y_pred, y, include_background=True, percentile=95,
                                                  spacing=list(spacing))[0, 0])
    assert hd95(p, g, spacing) == pytest.approx(monai_hd95, rel=1e-5, abs=1e-5)
    # HD95, pooled: MedPy's hd95
    assert hd95(p, g, spacing, pooled=True) == pytest.approx(medpy.hd95(p, g, voxelspacing=spacing), rel=1e-9)

    # ASSD, directed (default): MedPy 0.4
    assert assd(p, g, spacing) == pytest.approx(_medpy04_assd(p, g, spacing), rel=1e-9)
    # ASSD, pooled: MONAI symmetric=True and MedPy 0.5
    monai_assd = float(compute_average_surface_distance(y_pred, y, include_background=True, symmetric=True,
                                                        spacing=list(spacing))[0, 0])
    assert assd(p, g, spacing, pooled=True) == pytest.approx(monai_assd, rel=1e-5, abs=1e-5)
    assert assd(p, g, spacing, pooled=True) == pytest.approx(medpy.assd(p, g, voxelspacing=spacing), rel=1e-9)

    # the combined call and segmentation_metrics report the defaults
    both = hd95_assd(p, g, spacing, hd95_pooled=True, assd_pooled=True)
    assert both == (hd95(p, g, spacing, pooled=True), assd(p, g, spacing, pooled=True))
    reported = segmentation_metrics(p, g, spacing)
    assert (reported["hd95"], reported["assd"]) == (hd95(p, g, spacing), assd(p, g, spacing))


def test_the_conventions_differ_where_they_should():
    cases = {name: (p, g, spacing) for name, p, g, spacing in PAIRS}
    p, g, spacing = cases["lesion plus far blob"]
    assert hd95(p, g, spacing) > 10.0 and hd95(p, g, spacing, pooled=True) == pytest.approx(0.0)
    p, g, spacing = cases["ball in ball"]  # |∂P| < |∂G|: the pooled mean weighs the larger surface more
    assert abs(assd(p, g, spacing) - assd(p, g, spacing, pooled=True)) > 0.1


# ---------------------------------------------------------------- explanations: written-out definitions


def _voxels(shape):
    return list(itertools.product(*[range(n) for n in shape]))


def _random_case(seed, shape=(3, 5, 7, 6), lesion_share=0.2):
    rng = np.random.default_rng(seed)
    relevance = rng.normal(size=shape) + 0.3
    lesion = rng.random(shape[1:]) < lesion_share
    evidence = rng.random(shape) < 0.3
    return relevance, lesion, evidence


def _mass_accuracy(relevance, lesion):
    """Arras, Osman and Samek 2022 (CLEVR-XAI, Inf. Fusion 81, eq. 1), positive relevance, all channels."""
    inside = total = 0.0
    for c in range(relevance.shape[0]):
        for v in _voxels(lesion.shape):
            value = max(relevance[(c, *v)], 0.0)
            total += value
            if lesion[v]:
                inside += value
    return inside / total


def _rank_accuracy(relevance, lesion):
    """Arras et al. 2022 (eq. 2): K = |GT|; the share of the K highest-ranked voxels that lie in GT."""
    scores = {v: sum(relevance[(c, *v)] for c in range(relevance.shape[0])) for v in _voxels(lesion.shape)}
    ranked = sorted(scores, key=lambda v: scores[v], reverse=True)
    k = sum(bool(lesion[v]) for v in ranked)
    return sum(bool(lesion[v]) for v in ranked[:k]) / k


def _pointing_game(relevance, lesion):
    """Zhang et al. 2018 (IJCV 126), as Quantus' PointingGame: a hit if the maximum lies in the mask."""
    scores = {v: sum(relevance[(c, *v)] for c in range(relevance.shape[0])) for v in _voxels(lesion.shape)}
    return 1.0 if lesion[max(scores, key=scores.get)] else 0.0


def _gini(relevance):
    """Chalasani et al. 2020 (ICML), as Quantus' Sparseness: the Gini index of |R|, here as the mean
    absolute difference over all pairs divided by twice the mean, Σ_i Σ_j |a_i − a_j| / (2 n² ā)."""
    a = np.abs(relevance).ravel()
    n = a.size
    pairs = sum(abs(a[i] - a[j]) for i in range(n) for j in range(n))
    return pairs / (2 * n * n * a.mean())


def _evidence_mass(relevance, evidence):
    inside = total = 0.0
    for index in _voxels(relevance.shape):
        value = max(relevance[index], 0.0)
        total += value
        inside += value if evidence[index] else 0.0
    return inside / total


def _coverage(relevance, lesion):
    """The study's BLRP-to-OT per channel: voxels with |R_c| > 0.5 max|R_c| inside the lesion, over |lesion|."""
    out = []
    for c in range(relevance.shape[0]):
        peak = max(abs(relevance[(c, *v)]) for v in _voxels(lesion.shape))
        hits = sum(1 for v in _voxels(lesion.shape) if lesion[v] and abs(relevance[(c, *v)]) > 0.5 * peak)
        out.append(hits / lesion.sum())
    return out


@pytest.mark.parametrize("seed", range(4))
def test_localisation_and_sparseness_equal_their_definitions(seed):
    relevance, lesion, evidence = _random_case(seed)
    assert m.relevance_mass_accuracy(relevance, lesion) == pytest.approx(_mass_accuracy(relevance, lesion))
    assert m.relevance_rank_accuracy(relevance, lesion) == pytest.approx(_rank_accuracy(relevance, lesion))
    assert m.pointing_game(relevance, lesion) == _pointing_game(relevance, lesion)
    assert m.sparseness(relevance) == pytest.approx(_gini(relevance))
    assert m.evidence_mass_accuracy(relevance, evidence)[0] == pytest.approx(_evidence_mass(relevance, evidence))
    assert np.allclose(m.blrp_to_ot(relevance, lesion), _coverage(relevance, lesion))


def test_pointing_game_hits_when_the_maximum_is_in_the_lesion():
    for seed in range(20):  # about a fifth hit: both outcomes are exercised
        relevance, lesion, _ = _random_case(100 + seed)
        relevance[0][lesion] += 0.5 * (seed % 2)
        assert m.pointing_game(relevance, lesion) == _pointing_game(relevance, lesion)


class _Net(nn.Module):
    """Registered output-first, so registration order and data-flow order disagree."""

    def __init__(self):
        super().__init__()
        self.last = nn.Conv3d(4, 2, 1)
        self.norm = nn.BatchNorm3d(4)
        self.first = nn.Conv3d(2, 4, 3, padding=1)

    def forward(self, x):
        return self.last(torch.relu(self.norm(self.first(x))))


def _trained_net():
    torch.manual_seed(0)
    net = _Net().double()
    with torch.no_grad():
        net.train()
        net(torch.rand(2, 2, 4, 8, 8, dtype=torch.float64))  # running statistics off their defaults
    return net.eval()


def _target(net, x):
    return net(x)[:, 1].sum()


def _gradient_x_input(net, x):
    x = x.clone().requires_grad_(True)
    _target(net, x).backward()
    return (x.grad * x)[0].detach().numpy()


def _average_ranks(values):
    order = sorted(range(len(values)), key=lambda i: values[i])
    ranks = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for t in range(i, j + 1):
            ranks[order[t]] = (i + j) / 2 + 1  # positions i..j share their mean rank (1-based)
        i = j + 1
    return ranks


def _spearman(a, b):
    ra, rb = np.array(_average_ranks(list(np.ravel(a)))), np.array(_average_ranks(list(np.ravel(b))))
    ra, rb = ra - ra.mean(), rb - rb.mean()
    return (ra * rb).sum() / np.sqrt((ra * ra).sum() * (rb * rb).sum())


def test_randomisation_cascade_equals_adebayo_definition():
    """Adebayo et al. 2018 (NeurIPS), cascading randomisation: the top layer first, then each layer below
    cumulatively; Spearman rank correlation of the original and the randomised explanation after each step."""
    net = _trained_net()
    x = torch.rand(1, 2, 4, 8, 8, dtype=torch.float64)
    x[0, :, 0] = 0.0  # a slab of exact zeros: tied relevance
    reference = _gradient_x_input(net, x)
    original = copy.deepcopy(net.state_dict())
    seen = []

    def explain_fn(randomised):
        seen.append(copy.deepcopy(randomised))
        return _gradient_x_input(randomised, x)

    values = m.randomisation_cascade(net, explain_fn, reference, x=x, stages=3)
    assert m.cascade_order(net, x) == ["last", "norm", "first"]
    for stage, (randomised, value) in enumerate(zip(seen, values)):
        changed = [name for name, module in (("last", randomised.last), ("norm", randomised.norm),
                                             ("first", randomised.first))
                   if any(not torch.equal(t, original[f"{name}.{k}"])
                          for k, t in module.state_dict().items() if t.is_floating_point())]
        assert changed == ["last", "norm", "first"][:stage + 1]
        assert value == pytest.approx(_spearman(reference, _gradient_x_input(randomised, x)), abs=1e-12)
    assert m.randomisation_spearman(net, explain_fn, reference, x=x, stages=3) == pytest.approx(np.mean(values))
    assert all(torch.equal(v, original[k]) for k, v in net.state_dict().items())


def _aopc_samek(net, x, relevance, mask, block, most_relevant_first):
    """Samek et al. 2017 (IEEE TNNLS 28), region perturbation, one block per step with L = all blocks:
    AOPC = 1/(L+1) Σ_{k=0..L} (f(x⁽⁰⁾) − f(x⁽ᵏ⁾)), x⁽ᵏ⁾ = x with the k first blocks of the ordering removed
    (set to 0 here; Samek et al. draw uniform noise)."""
    _, _, d, h, w = x.shape
    bd, bh, bw = block
    blocks = []
    for i in range(0, d, bd):
        for j in range(0, h, bh):
            for k in range(0, w, bw):
                score = float(relevance[:, i:i + bd, j:j + bh, k:k + bw].sum())
                blocks.append((score, (slice(i, i + bd), slice(j, j + bh), slice(k, k + bw))))
    blocks.sort(key=lambda item: item[0], reverse=most_relevant_first)

    def f(volume):
        with torch.no_grad():
            return float((net(volume)[0, 1] * mask[0]).sum())

    perturbed = x.clone()
    base = f(x)
    total = 0.0  # the k = 0 term is f(x) − f(x) = 0
    for _, where in blocks:
        perturbed[(0, slice(None), *where)] = 0.0
        total += base - f(perturbed)
    return total / (len(blocks) + 1), base


def test_region_perturbation_equals_samek_aopc():
    net = _trained_net()
    rng = np.random.default_rng(3)
    x = torch.from_numpy(rng.random((1, 2, 4, 8, 8)))
    relevance = rng.normal(size=(2, 4, 8, 8))
    mask = torch.from_numpy(rng.random((1, 4, 8, 8)) < 0.5).double()
    block = (2, 4, 4)  # 8 blocks; steps = 8 removes one block per step, as Samek et al.
    ours = m.region_perturbation(net, x, relevance, mask, block=block, steps=8, batch=3)
    for key, first in (("aopc_morf", True), ("aopc_lerf", False)):
        aopc, base = _aopc_samek(net, x, relevance, mask, block, first)
        assert ours[key] == pytest.approx(9 / 8 * aopc / abs(base), rel=1e-9)
    assert ours["faithfulness"] == pytest.approx(ours["aopc_morf"] - ours["aopc_lerf"])
