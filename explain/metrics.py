"""Explanation metrics for 3-D segmentation, per case and per modality.

Notation: relevance ``R`` (C, D, H, W), input ``x`` (C, D, H, W), lesion mask ``G`` (D, H, W),
ground-truth evidence ``E`` (C, D, H, W, synthetic data), ``R⁺ = max(R, 0)`` and the voxel map
``r = Σ_c R_c``. All are computed on the model's input grid.

* ``blrp_to_ot`` (the study's, per modality c): ``B_c = |R_c| / max|R_c| > 0.5``;
  ``|B_c ∩ G| / |G|``, the share of the lesion covered by strong relevance.
* ``blrp_to_bx`` (the study's): ``X_c = |x_c| / max|x_c| > 0.1``; ``|B_c ∩ X_c| / |X_c|``.
* ``relevance_mass_accuracy``: ``Σ_{G} R⁺ / Σ R⁺`` (Arras et al.; over all modalities).
* ``relevance_rank_accuracy``: of the K = |G| voxels with the largest ``r``, the share inside G.
* ``pointing_game``: 1 if the voxel with the largest ``r`` lies in G, else 0.
* ``evidence_mass_accuracy``: ``Σ_c Σ_{E_c} R_c⁺ / Σ R⁺`` (per modality: within channel c).
* ``modality_attribution_accuracy``: inside the lesion, the share of positive relevance that sits
  on modalities whose evidence covers the voxel: ``Σ_{v∈G} Σ_c R_c⁺(v) E_c(v) / Σ_{v∈G} Σ_c R_c⁺(v)``.
* ``faithfulness`` (region perturbation in 3-D blocks): the volume is cut into blocks; blocks are
  set to 0 in order of decreasing (MoRF) or increasing (LeRF) relevance sum, in ``steps`` equal
  parts; with ``f`` the explained target (sum of lesion logits over the explained voxels),
  ``AOPC = mean_k (f(x) − f(x_k)) / |f(x)|``; the score is ``AOPC_MoRF − AOPC_LeRF`` (higher is
  more faithful).
* ``sparseness``: the Gini index of ``|R|`` (1: all relevance on one voxel, 0: uniform).
* ``randomisation_spearman`` (cascading model-parameter randomisation, Adebayo et al.): the
  layers are re-initialised from the output towards the input in ``stages`` cumulative stages;
  the mean Spearman rank correlation between the explanation of the original and of each
  randomised model (lower is better: the explanation depends on what the model learned).
* ``conservation_error``: ``|Σ R − f| / |f|``.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import nn

Tensor = torch.Tensor


def _positive(a: np.ndarray) -> np.ndarray:
    return np.clip(a, 0, None)


def _ratio(num: float, den: float) -> float:
    return float(num / den) if den > 0 else 0.0


def binarised(relevance: np.ndarray, level: float = 0.5) -> np.ndarray:
    """Per channel ``|R_c| / max|R_c| > level``."""
    peak = np.abs(relevance).reshape(len(relevance), -1).max(axis=1)
    peak = np.where(peak > 0, peak, 1.0)[:, None, None, None]
    return np.abs(relevance) / peak > level


def blrp_to_ot(relevance: np.ndarray, lesion: np.ndarray) -> np.ndarray:
    """The study's lesion coverage per modality: ``|B_c ∩ G| / |G|``."""
    b = binarised(relevance)
    return np.array([_ratio((bc & lesion).sum(), lesion.sum()) for bc in b])


def blrp_to_bx(relevance: np.ndarray, x: np.ndarray) -> np.ndarray:
    """The study's input coverage per modality: ``|B_c ∩ X_c| / |X_c|``, ``X_c = |x_c|/max > 0.1``."""
    b, xb = binarised(relevance), binarised(x, 0.1)
    return np.array([_ratio((bc & xc).sum(), xc.sum()) for bc, xc in zip(b, xb)])


def relevance_mass_accuracy(relevance: np.ndarray, lesion: np.ndarray) -> float:
    """``Σ_G R⁺ / Σ R⁺`` over all modalities."""
    p = _positive(relevance)
    return _ratio(p[:, lesion].sum(), p.sum())


def relevance_rank_accuracy(relevance: np.ndarray, lesion: np.ndarray) -> float:
    """Share of the |G| voxels with the largest ``r = Σ_c R_c`` that lie in G."""
    k = int(lesion.sum())
    if k == 0:
        return 0.0
    r = relevance.sum(axis=0).ravel()
    top = np.argpartition(-r, k - 1)[:k]
    return float(lesion.ravel()[top].mean())


def pointing_game(relevance: np.ndarray, lesion: np.ndarray) -> float:
    """1.0 if the voxel with the largest ``r`` is in the lesion."""
    return float(lesion.ravel()[int(np.argmax(relevance.sum(axis=0)))])


def evidence_mass_accuracy(relevance: np.ndarray, evidence: np.ndarray) -> tuple[float, np.ndarray]:
    """(overall ``Σ_c Σ_{E_c} R_c⁺ / Σ R⁺``, per modality ``Σ_{E_c} R_c⁺ / Σ R_c⁺``)."""
    p = _positive(relevance)
    inside = (p * evidence).reshape(len(p), -1).sum(axis=1)
    total = p.reshape(len(p), -1).sum(axis=1)
    return _ratio(inside.sum(), total.sum()), np.array([_ratio(i, t) for i, t in zip(inside, total)])


def modality_attribution_accuracy(relevance: np.ndarray, evidence: np.ndarray, lesion: np.ndarray) -> float:
    """Inside the lesion, the share of positive relevance on modalities carrying evidence there."""
    p = _positive(relevance)[:, lesion]
    return _ratio((p * evidence[:, lesion]).sum(), p.sum())


def sparseness(relevance: np.ndarray) -> float:
    """Gini index of ``|R|``: ``Σ_i (2i − n − 1) a_(i) / (n Σ a)`` with a sorted ascending."""
    a = np.sort(np.abs(relevance).ravel()).astype(np.float64)
    n = a.size
    total = a.sum()
    if total == 0:
        return 0.0
    i = np.arange(1, n + 1)
    return float(((2 * i - n - 1) * a).sum() / (n * total))


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation of two arrays (ties broken by order)."""
    ra = np.empty(a.size)
    rb = np.empty(b.size)
    ra[np.argsort(a.ravel(), kind="stable")] = np.arange(a.size)
    rb[np.argsort(b.ravel(), kind="stable")] = np.arange(b.size)
    if ra.std() == 0 or rb.std() == 0:
        return 0.0
    return float(np.corrcoef(ra, rb)[0, 1])


def conservation_error(relevance: np.ndarray, target: float) -> float:
    """``|Σ R − f| / |f|``."""
    return abs(float(relevance.sum()) - target) / max(abs(target), 1e-12)


@torch.no_grad()
def region_perturbation(model: nn.Module, x: Tensor, relevance: np.ndarray, mask: Tensor,
                        block: Sequence[int] = (2, 8, 8), steps: int = 10, batch: int = 5) -> dict[str, float]:
    """AOPC of MoRF and LeRF region perturbation and their difference (module docstring).

    Args:
        model: the explained model (eval mode).
        x: input (1, C, D, H, W).
        relevance: (C, D, H, W).
        mask: (1, D, H, W) explained voxels (fixed from the original prediction).
        block: block size (D, H, W) in voxels.
        steps: perturbation steps per curve.
        batch: perturbed volumes per forward pass.
    """
    model.eval()
    _, c, d, h, w = x.shape
    bd, bh, bw = block
    nd, nh, nw = -(-d // bd), -(-h // bh), -(-w // bw)
    r = np.zeros((nd * bd, nh * bh, nw * bw))
    r[:d, :h, :w] = relevance.sum(axis=0)
    scores = r.reshape(nd, bd, nh, bh, nw, bw).sum(axis=(1, 3, 5)).ravel()

    def score(batch_x: Tensor) -> np.ndarray:
        return (model(batch_x)[:, 1] * mask).flatten(1).sum(1).numpy()

    base = float(score(x)[0])
    results = {}
    for name, order in (("morf", np.argsort(-scores, kind="stable")), ("lerf", np.argsort(scores, kind="stable"))):
        cut = np.linspace(0, len(order), steps + 1).round().astype(int)[1:]
        volumes = []
        for k in cut:
            keep = np.ones(nd * nh * nw, bool)
            keep[order[:k]] = False
            voxel = np.repeat(np.repeat(np.repeat(keep.reshape(nd, nh, nw), bd, 0), bh, 1), bw, 2)[:d, :h, :w]
            volumes.append(x[0] * torch.from_numpy(voxel).to(x.dtype))
        values = np.concatenate([score(torch.stack(volumes[i:i + batch])) for i in range(0, steps, batch)])
        results[f"aopc_{name}"] = float(np.mean(base - values) / max(abs(base), 1e-12))
    results["faithfulness"] = results["aopc_morf"] - results["aopc_lerf"]
    return results


def randomisation_spearman(model: nn.Module, explain_fn: Callable[[nn.Module], np.ndarray],
                           reference: np.ndarray, stages: int = 3, seed: int = 0) -> float:
    """Mean Spearman correlation over cascading randomisation stages (module docstring)."""
    layers = [m for m in model.modules() if isinstance(m, nn.Conv3d | nn.ConvTranspose3d)][::-1]
    randomised = copy.deepcopy(model)
    copies = [m for m in randomised.modules() if isinstance(m, nn.Conv3d | nn.ConvTranspose3d)][::-1]
    generator = torch.Generator().manual_seed(seed)
    bounds = np.linspace(0, len(layers), stages + 1).round().astype(int)
    values = []
    for stage in range(stages):
        with torch.no_grad():
            for original, layer in zip(layers[bounds[stage]:bounds[stage + 1]],
                                       copies[bounds[stage]:bounds[stage + 1]]):
                std = float(original.weight.std()) or 0.1
                layer.weight.copy_(torch.randn(layer.weight.shape, generator=generator) * std)
        values.append(spearman(reference, explain_fn(randomised)))
    return float(np.mean(values))
