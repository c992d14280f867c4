"""Explanation metrics for 3-D segmentation, per case and per modality.

Notation: relevance ``R`` (C, D, H, W), input ``x`` (C, D, H, W), lesion mask ``G`` (D, H, W),
ground-truth evidence ``E`` (C, D, H, W, synthetic data), ``R⁺ = max(R, 0)`` and the voxel map
``r = Σ_c R_c``. All are computed on the model's input grid. Masks (``G``, ``E``) are bool or
0/1 arrays of exactly these shapes; anything else raises :class:`~explain.errors.ExplainError`.

* ``blrp_to_ot`` (the study's, per modality c): ``B_c = |R_c| / max|R_c| > 0.5``;
  ``|B_c ∩ G| / |G|``, the share of the lesion covered by strong relevance.
* ``blrp_to_bx`` (the study's): ``X_c = |x_c| / max|x_c| > 0.1``; ``|B_c ∩ X_c| / |X_c|``.
* ``relevance_mass_accuracy``: ``Σ_{G} R⁺ / Σ R⁺`` over all modalities (Arras, Osman and Samek
  2022, "CLEVR-XAI", Information Fusion 81; positive relevance only, as there).
* ``relevance_rank_accuracy`` (Arras et al. 2022): of the K = |G| voxels with the largest ``r``,
  the share inside G. Voxels tied at the K-th value count with their expected share (as if the
  tie were broken at random), so the score never depends on array order.
* ``evidence_rank_accuracy`` (synthetic data; Arras et al.'s rank accuracy with per-modality
  ground truth): of the K = |E| elements (channel, voxel) with the largest ``R_c``, the share inside
  E; ties count with their expected share. Relevance copied to every channel (the ``prediction``
  baseline) ties across modalities and scores the share of evidence among the tied channels.
* ``retained_relevance``: ``Σ|R_filtered| / Σ|R_raw|`` of the same method and case, the share of
  relevance a filter kept (1 for raw; a layer-wise filter changes what later layers receive, so it
  may exceed 1). Mass accuracies rise when a filter discards relevance; this says how much it discarded.
* ``pointing_game`` (Zhang et al. 2018, "Top-down neural attention by excitation backprop",
  IJCV 126, without a tolerance margin): 1 if the voxel with the largest ``r`` lies in G, else 0;
  with tied maxima, the share of them inside G.
* ``evidence_mass_accuracy``: ``Σ_c Σ_{E_c} R_c⁺ / Σ R⁺`` (per modality: within channel c).
* ``modality_attribution_accuracy``: inside the lesion, the share of positive relevance that sits
  on modalities whose evidence covers the voxel: ``Σ_{v∈G} Σ_c R_c⁺(v) E_c(v) / Σ_{v∈G} Σ_c R_c⁺(v)``.
* ``faithfulness`` (region perturbation, Samek et al. 2017, "Evaluating the visualization of what
  a deep neural network has learned", IEEE TNNLS 28, in 3-D blocks): the volume is cut into
  blocks; blocks are set to 0 in order of decreasing (MoRF) or increasing (LeRF) relevance sum,
  in L = ``steps`` equal parts; with ``f`` the explained target (sum of lesion logits over the
  explained voxels), ``AOPC = (1/L) Σ_{k=1..L} (f(x) − f(x_k)) / |f(x)|``; the score is
  ``AOPC_MoRF − AOPC_LeRF`` (higher is more faithful). Samek et al. average over k = 0..L (the
  k = 0 term is 0) and do not divide by |f(x)|: ours = (L+1)/L · AOPC_Samek / |f(x)|.
  Blocks tied in relevance are removed in one fixed random order in both curves (so a constant or
  zero map scores 0, whatever the array order). With ``per_channel`` each modality's block is a
  region of its own (channel × block): a multi-modal explanation claims which modality matters, and
  this tests that claim; relevance copied to every channel ties across modalities there.
* ``sparseness`` (Chalasani et al. 2020, "Concise explanations of neural networks using
  adversarial training", ICML): the Gini index of ``|R|`` (1: all relevance on one voxel,
  0: uniform), ``Σ_i Σ_j |a_i − a_j| / (2 n Σ a)``.
* ``randomisation_spearman`` (cascading model-parameter randomisation, Adebayo et al. 2018,
  "Sanity checks for saliency maps", NeurIPS): the parameterised layers are redrawn from the
  output towards the input in data-flow order (traced), in ``stages`` cumulative stages; the mean
  Spearman rank correlation (average ranks for ties) between the signed explanation of the original
  and of each randomised model (lower is better: the explanation depends on what the model learned).
* ``conservation_error``: ``|Σ R − f| / |f|``.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence

import numpy as np
import torch
from scipy import stats
from torch import nn

from explain.errors import ExplainError

Tensor = torch.Tensor


def _positive(a: np.ndarray) -> np.ndarray:
    return np.clip(a, 0, None)


def _ratio(num: float, den: float) -> float:
    return float(num / den) if den > 0 else 0.0


def _relevance(relevance: np.ndarray) -> np.ndarray:
    relevance = np.asarray(relevance)
    if relevance.ndim != 4:
        raise ExplainError(f"relevance must be one case's (C, D, H, W) map, got shape {relevance.shape}: "
                           "pass relevance[0] of a (1, C, D, H, W) result")
    return relevance


def as_mask(mask: np.ndarray, name: str, shape: Sequence[int]) -> np.ndarray:
    """``mask`` as a bool array, if it is a bool or 0/1 (integer or float) array of ``shape``.

    Raises:
        ExplainError: another shape, or a value other than 0 and 1 (a probability map, a label map).
    """
    a = np.asarray(mask)
    if a.shape != tuple(shape):
        raise ExplainError(f"{name} has shape {a.shape} but the relevance needs {tuple(shape)}: pass the mask "
                           "on the model's input grid")
    if a.dtype == bool:
        return a
    numeric = np.issubdtype(a.dtype, np.integer) or np.issubdtype(a.dtype, np.floating)
    if not numeric or not ((a == 0) | (a == 1)).all():
        found = np.unique(a)[:5] if numeric else a.dtype
        raise ExplainError(f"{name} must be a bool or 0/1 mask, got {a.dtype} with values {found}: pass "
                           f"{name} > 0.5 (a probability map) or {name} == label (a label map)")
    return a.astype(bool)


def _top_share(scores: np.ndarray, inside: np.ndarray, k: int) -> float:
    """Share inside of the k largest scores; voxels tied at the k-th value count with their expected share."""
    threshold = np.partition(scores, scores.size - k)[scores.size - k]
    above, tied = scores > threshold, scores == threshold
    from_tied = k - int(above.sum())
    return float((inside[above].sum() + from_tied * inside[tied].mean()) / k)


def binarised(relevance: np.ndarray, level: float = 0.5) -> np.ndarray:
    """Per channel ``|R_c| / max|R_c| > level``."""
    peak = np.abs(relevance).reshape(len(relevance), -1).max(axis=1)
    peak = np.where(peak > 0, peak, 1.0)[:, None, None, None]
    return np.abs(relevance) / peak > level


def blrp_to_ot(relevance: np.ndarray, lesion: np.ndarray) -> np.ndarray:
    """The study's lesion coverage per modality: ``|B_c ∩ G| / |G|``."""
    relevance = _relevance(relevance)
    lesion = as_mask(lesion, "lesion", relevance.shape[1:])
    b = binarised(relevance)
    return np.array([_ratio((bc & lesion).sum(), lesion.sum()) for bc in b])


def blrp_to_bx(relevance: np.ndarray, x: np.ndarray) -> np.ndarray:
    """The study's input coverage per modality: ``|B_c ∩ X_c| / |X_c|``, ``X_c = |x_c|/max > 0.1``."""
    b, xb = binarised(relevance), binarised(x, 0.1)
    return np.array([_ratio((bc & xc).sum(), xc.sum()) for bc, xc in zip(b, xb)])


def relevance_mass_accuracy(relevance: np.ndarray, lesion: np.ndarray) -> float:
    """``Σ_G R⁺ / Σ R⁺`` over all modalities (Arras et al. 2022)."""
    relevance = _relevance(relevance)
    lesion = as_mask(lesion, "lesion", relevance.shape[1:])
    p = _positive(relevance)
    return _ratio(p[:, lesion].sum(), p.sum())


def relevance_rank_accuracy(relevance: np.ndarray, lesion: np.ndarray) -> float:
    """Share of the |G| voxels with the largest ``r = Σ_c R_c`` that lie in G (Arras et al. 2022; ties fair)."""
    relevance = _relevance(relevance)
    lesion = as_mask(lesion, "lesion", relevance.shape[1:])
    k = int(lesion.sum())
    if k == 0:
        return 0.0
    return _top_share(relevance.sum(axis=0).ravel(), lesion.ravel(), k)


def pointing_game(relevance: np.ndarray, lesion: np.ndarray) -> float:
    """1.0 if the voxel with the largest ``r`` is in the lesion (Zhang et al. 2018); tied maxima share."""
    relevance = _relevance(relevance)
    lesion = as_mask(lesion, "lesion", relevance.shape[1:])
    return _top_share(relevance.sum(axis=0).ravel(), lesion.ravel(), 1)


def evidence_mass_accuracy(relevance: np.ndarray, evidence: np.ndarray) -> tuple[float, np.ndarray]:
    """(overall ``Σ_c Σ_{E_c} R_c⁺ / Σ R⁺``, per modality ``Σ_{E_c} R_c⁺ / Σ R_c⁺``)."""
    relevance = _relevance(relevance)
    evidence = as_mask(evidence, "evidence", relevance.shape)
    p = _positive(relevance)
    inside = np.where(evidence, p, 0.0).reshape(len(p), -1).sum(axis=1)
    total = p.reshape(len(p), -1).sum(axis=1)
    return _ratio(inside.sum(), total.sum()), np.array([_ratio(i, t) for i, t in zip(inside, total)])


def modality_attribution_accuracy(relevance: np.ndarray, evidence: np.ndarray, lesion: np.ndarray) -> float:
    """Inside the lesion, the share of positive relevance on modalities carrying evidence there."""
    relevance = _relevance(relevance)
    evidence = as_mask(evidence, "evidence", relevance.shape)
    lesion = as_mask(lesion, "lesion", relevance.shape[1:])
    p = _positive(relevance)[:, lesion]
    return _ratio(p[evidence[:, lesion]].sum(), p.sum())


def evidence_rank_accuracy(relevance: np.ndarray, evidence: np.ndarray) -> float:
    """Share of the |E| (channel, voxel) elements with the largest ``R_c`` that lie in E (ties fair)."""
    relevance = _relevance(relevance)
    evidence = as_mask(evidence, "evidence", relevance.shape)
    k = int(evidence.sum())
    if k == 0:
        return 0.0
    return _top_share(relevance.ravel(), evidence.ravel(), k)


def retained_relevance(filtered: np.ndarray, raw: np.ndarray) -> float:
    """``Σ|R_filtered| / Σ|R_raw|``: the share of relevance a filter kept (0 when the raw map is all zero)."""
    return _ratio(float(np.abs(filtered).sum()), float(np.abs(raw).sum()))


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
    """Spearman's rank correlation of two arrays of the same size, ties at their average rank.

    ``scipy.stats.spearmanr`` of the flattened arrays (the Pearson correlation of the average
    ranks); 0.0 when either array is constant (the correlation is undefined there).
    """
    a, b = np.ravel(a), np.ravel(b)
    if a.size != b.size:
        raise ExplainError(f"spearman needs two maps of the same size, got {a.size} and {b.size} values")
    if a.size < 2 or (a == a[0]).all() or (b == b[0]).all():
        return 0.0
    return float(stats.spearmanr(a, b).statistic)


def conservation_error(relevance: np.ndarray, target: float) -> float:
    """``|Σ R − f| / |f|``."""
    return abs(float(relevance.sum()) - target) / max(abs(target), 1e-12)


@torch.no_grad()
def region_perturbation(model: nn.Module, x: Tensor, relevance: np.ndarray, mask: Tensor,
                        block: Sequence[int] = (2, 8, 8), steps: int = 10, batch: int = 5, per_channel: bool = False,
                        base: float | None = None) -> dict[str, float]:
    """AOPC of MoRF and LeRF region perturbation and their difference (module docstring).

    Args:
        model: the explained model (eval mode).
        x: input (1, C, D, H, W).
        relevance: (C, D, H, W).
        mask: (1, D, H, W) bool or 0/1 mask of the explained voxels (fixed from the original prediction).
        block: block size (D, H, W) in voxels.
        steps: perturbation steps per curve.
        batch: perturbed volumes per forward pass.
        per_channel: regions are channel × block (each modality perturbed on its own), not blocks of every channel.
        base: the explained target of the unperturbed ``x`` when the caller has it (saves a forward pass).

    Returns:
        ``aopc_morf``, ``aopc_lerf`` and ``faithfulness`` = their difference.
    """
    model.eval()
    _, c, d, h, w = x.shape
    mask = torch.as_tensor(as_mask(torch.as_tensor(mask).cpu().numpy(), "mask", (1, d, h, w)), device=x.device)
    mask = mask.to(x.dtype)
    bd, bh, bw = block
    nd, nh, nw = -(-d // bd), -(-h // bh), -(-w // bw)
    channels = c if per_channel else 1
    r = np.zeros((channels, nd * bd, nh * bh, nw * bw))
    r[:, :d, :h, :w] = relevance if per_channel else relevance.sum(axis=0, keepdims=True)
    scores = r.reshape(channels, nd, bd, nh, bh, nw, bw).sum(axis=(2, 4, 6)).ravel()
    ties = np.random.default_rng(0).permutation(scores.size)  # one fixed order among equal scores, both curves

    def score(batch_x: Tensor) -> np.ndarray:
        return (model(batch_x)[:, 1] * mask).flatten(1).sum(1).numpy()

    base = float(score(x)[0]) if base is None else float(base)
    results = {}
    for name, order in (("morf", np.lexsort((ties, -scores))), ("lerf", np.lexsort((ties, scores)))):
        cut = np.linspace(0, len(order), steps + 1).round().astype(int)[1:]
        volumes = []
        for k in cut:
            keep = np.ones(scores.size, bool)
            keep[order[:k]] = False
            grid = keep.reshape(channels, nd, nh, nw)
            voxel = np.repeat(np.repeat(np.repeat(grid, bd, 1), bh, 2), bw, 3)[:, :d, :h, :w]
            volumes.append(x[0] * torch.from_numpy(voxel).to(x.dtype))
        values = np.concatenate([score(torch.stack(volumes[i:i + batch])) for i in range(0, steps, batch)])
        results[f"aopc_{name}"] = float(np.mean(base - values) / max(abs(base), 1e-12))
    results["faithfulness"] = results["aopc_morf"] - results["aopc_lerf"]
    return results


def _owns_state(module: nn.Module) -> bool:
    return any(True for _ in module.parameters(recurse=False)) or any(
        b.is_floating_point() for b in module.buffers(recurse=False))


@torch.no_grad()
def cascade_order(model: nn.Module, x: Tensor) -> list[str]:
    """Names of the parameterised modules from the output towards the input, in data-flow order.

    One forward pass on ``x`` (eval mode, so no running statistic moves; the model's modes are
    restored after) records with forward hooks the order in which the modules that own parameters
    or floating-point buffers finish; the order is reversed. A module run twice counts at its last
    run. Modules the forward pass never runs are left out.
    """
    finished: list[str] = []
    modes = {module: module.training for module in model.modules()}
    handles = [module.register_forward_hook(lambda *_, name=name: finished.append(name))
               for name, module in model.named_modules() if _owns_state(module)]
    try:
        model.eval()
        model(x)
    finally:
        for handle in handles:
            handle.remove()
        for module, training in modes.items():
            module.training = training
    return list(dict.fromkeys(reversed(finished)))


def cascade_stages(model: nn.Module, x: Tensor, stages: int = 3) -> list[list[str]]:
    """:func:`cascade_order` cut into ``stages`` consecutive groups of near-equal size (output first)."""
    if stages < 1:
        raise ExplainError(f"stages must be at least 1, got {stages}")
    order = cascade_order(model, x)
    if not order:
        raise ExplainError("the model has no parameterised layer that runs on x: nothing to randomise")
    bounds = np.linspace(0, len(order), min(stages, len(order)) + 1).round().astype(int)
    return [order[start:end] for start, end in zip(bounds[:-1], bounds[1:])]


@torch.no_grad()
def redraw(module: nn.Module, generator: torch.Generator) -> None:
    """Redraw every floating-point parameter and buffer a module owns (not its children's), in place.

    Each tensor t becomes ``N(0, ρ²)`` with ρ the root mean square of t (0.1 where t is all zero),
    so activations keep their trained scale; a running variance becomes ``|N(0, ρ²)|`` so it stays
    positive. This covers convolution weights and biases, normalisation weights and biases, and
    BatchNorm's running mean and variance; integer buffers (``num_batches_tracked``) are counters
    and stay.
    """
    tensors = [*module.named_parameters(recurse=False), *module.named_buffers(recurse=False)]
    for name, t in tensors:
        if not t.is_floating_point():
            continue
        scale = float(t.double().pow(2).mean().sqrt()) or 0.1
        draw = torch.randn(t.shape, generator=generator, dtype=torch.float64) * scale
        t.copy_(draw.abs() if name.endswith("running_var") else draw)


def randomisation_cascade(model: nn.Module, explain_fn: Callable[[nn.Module], np.ndarray], reference: np.ndarray,
                          *, x: Tensor, stages: int = 3, seed: int = 0) -> list[float]:
    """Spearman correlation with ``reference`` after each stage of cascading randomisation.

    Cascading model-parameter randomisation (Adebayo et al. 2018, "Sanity checks for saliency
    maps", NeurIPS): a deep copy of the model has its parameterised layers redrawn (:func:`redraw`:
    weights, biases, normalisation parameters and running statistics) from the output layer towards
    the input, in the data-flow order traced on ``x`` (:func:`cascade_order`, not registration order),
    cumulatively in ``stages`` groups (:func:`cascade_stages`). After each stage the copy is explained
    and compared with ``reference``. The model itself is left exactly as it was.

    Args:
        model: the explained model.
        explain_fn: maps a model to its explanation (same shape as ``reference``).
        reference: the explanation of the unchanged model.
        x: the explained input (1, C, D, H, W); one forward pass traces the layer order.
        stages: number of cumulative randomisation stages.
        seed: for the redrawn parameters.

    Returns:
        One Spearman correlation (:func:`spearman`) per stage, output-side stage first.
    """
    groups = cascade_stages(model, x, stages)
    randomised = copy.deepcopy(model)
    modules = dict(randomised.named_modules())
    generator = torch.Generator().manual_seed(seed)
    values = []
    for group in groups:
        for name in group:
            redraw(modules[name], generator)
        values.append(spearman(reference, explain_fn(randomised)))
    return values


def randomisation_spearman(model: nn.Module, explain_fn: Callable[[nn.Module], np.ndarray], reference: np.ndarray,
                           *, x: Tensor, stages: int = 3, seed: int = 0) -> float:
    """Mean over the stages of :func:`randomisation_cascade` (Adebayo et al. 2018; lower is better)."""
    return float(np.mean(randomisation_cascade(model, explain_fn, reference, x=x, stages=stages, seed=seed)))
