"""One explanation method on one case: relevance for each filter and its metrics.

Every filter gets the localisation metrics, ``retained_relevance`` (against the same method's
unfiltered relevance, which an LRP sweep therefore always computes) and ``faithfulness``: region
perturbation with per-modality regions (channel × 2×8×8 blocks) in :data:`FAITHFULNESS_STEPS`
steps per curve, all perturbed volumes of a curve in one batched forward pass, the unperturbed
target shared by every filter. 4 steps instead of the usual 10 cut the cost to 8 forward passes
per row (about 1.3 s for a width-0.25 U-Net at 48×48×19 on 2 CPU cores) and measure the same curve
at a coarser step (the ranking needs the metric on every row; it compares rows at one setting).
The cascading randomisation test (three more explanations per row) runs on the unfiltered
relevance only, unless ``heavy="all"``; ``heavy="none"`` skips it.

With a sliding window (a native-resolution model, ``PreprocessConfig.window()``) the case is the
whole volume at the target spacing: the explained prediction, its mask and target, every forward
pass of region perturbation and every explanation (the randomised models' too) are the
Gaussian-stitched sliding-window ones (:mod:`explain.sliding`), and every metric is computed on
that grid.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from explain import metrics as m
from explain.attribution import attribute, is_lrp, lrp_sweep
from explain.filters import RelevanceFilter
from explain.sliding import Stitched, Tiling
from explain.targets import explained_target, frozen, target_mask
from inferers import SlidingWindow

FAITHFULNESS_STEPS = 4
"""Region-perturbation steps per curve on every row (module docstring)."""
FAITHFULNESS_BLOCK = (2, 8, 8)
"""Region size (D, H, W) in voxels, per modality."""


@dataclass
class Explanation:
    """Relevance of one method and filter for one case, and its metrics."""

    case_id: str
    method: str
    filter: RelevanceFilter
    relevance: np.ndarray
    metrics: dict[str, float]


def _case_metrics(relevance: np.ndarray, x: np.ndarray, lesion: np.ndarray, evidence: np.ndarray | None,
                  modalities: Sequence[str]) -> dict[str, float]:
    out: dict[str, float] = {}
    to_ot, to_bx = m.blrp_to_ot(relevance, lesion), m.blrp_to_bx(relevance, x)
    out["blrp_to_ot"], out["blrp_to_bx"] = float(to_ot.mean()), float(to_bx.mean())
    for name, a, b in zip(modalities, to_ot, to_bx):
        out[f"blrp_to_ot_{name}"], out[f"blrp_to_bx_{name}"] = float(a), float(b)
    out["relevance_mass_accuracy"] = m.relevance_mass_accuracy(relevance, lesion)
    out["relevance_rank_accuracy"] = m.relevance_rank_accuracy(relevance, lesion)
    if evidence is not None:
        out["evidence_rank_accuracy"] = m.evidence_rank_accuracy(relevance, evidence)
    out["pointing_game"] = m.pointing_game(relevance, lesion)
    out["sparseness"] = m.sparseness(relevance)
    if evidence is not None:
        overall, per_modality = m.evidence_mass_accuracy(relevance, evidence)
        out["evidence_mass_accuracy"] = overall
        for name, value in zip(modalities, per_modality):
            out[f"evidence_mass_accuracy_{name}"] = float(value)
        out["modality_attribution_accuracy"] = m.modality_attribution_accuracy(relevance, evidence, lesion)
    return out


def assess(model: nn.Module, image: np.ndarray, relevance: np.ndarray, lesion: np.ndarray,
           evidence: np.ndarray | None, modalities: Sequence[str], raw: np.ndarray | None = None,
           mask: torch.Tensor | None = None, base: float | None = None,
           window: SlidingWindow | None = None) -> dict[str, float]:
    """Every cheap metric of one relevance map, ``retained_relevance`` and ``faithfulness``.

    Args:
        model: the explained model (left as it was).
        image: (C, D, H, W) model input.
        relevance: (C, D, H, W) relevance to assess.
        lesion: (D, H, W) bool ground truth.
        evidence: (C, D, H, W) bool synthetic evidence, or None.
        modalities: channel names.
        raw: the same method's unfiltered relevance (None: ``relevance`` is unfiltered).
        mask: the explained voxels (default: the model's predicted lesion on ``image``).
        base: the explained target on ``image`` (default: computed).
        window: the model's sliding window (None: whole volumes); its stitched prediction is perturbed.
    """
    x = torch.from_numpy(image[None]).float()
    model = model if window is None else Stitched(model, window)
    with frozen(model), torch.no_grad():
        if mask is None or base is None:
            logits = model(x)
            mask = target_mask(logits) if mask is None else mask
            base = float(explained_target(logits, mask)[0]) if base is None else base
        values = _case_metrics(relevance, image, lesion, evidence, modalities)
        values["retained_relevance"] = 1.0 if raw is None else m.retained_relevance(relevance, raw)
        perturbation = m.region_perturbation(model, x, relevance, mask, block=FAITHFULNESS_BLOCK,
                                             steps=FAITHFULNESS_STEPS, batch=FAITHFULNESS_STEPS, per_channel=True,
                                             base=base)
    values.update(perturbation)
    return values


def explain_case(model: nn.Module, image: np.ndarray, lesion: np.ndarray, evidence: np.ndarray | None,
                 modalities: Sequence[str], method: str, filters: Sequence[RelevanceFilter], case_id: str = "",
                 heavy: str = "raw", seed: int = 0, window: SlidingWindow | None = None,
                 **options) -> list[Explanation]:
    """Explain one prepared case with one method for every filter, with metrics.

    Args:
        model: the trained model.
        image: (C, D, H, W) model input.
        lesion: (D, H, W) bool ground truth at the input grid.
        evidence: (C, D, H, W) bool synthetic evidence, or None.
        modalities: channel names.
        method: an ``explain.methods()`` name.
        filters: relevance filters; baselines take ``raw`` and post-hoc filters only.
        case_id: for the results.
        heavy: where the randomisation test runs: ``raw`` (unfiltered relevance only), ``all`` or ``none``.
        seed: for random and smoothgrad baselines and the randomisation test.
        window: the model's sliding window (a native-resolution model; module docstring), None for
            whole volumes. ``reference_lrp`` takes none.
        **options: rule options of LRP variants.

    Returns:
        One :class:`Explanation` per applicable filter.
    """
    x = torch.from_numpy(image[None]).float()
    usable = list(filters) if is_lrp(method) else [f for f in filters if f.kind == "raw" or f.mode == "post"]
    if not usable:
        return []
    predictor = model if window is None else Stitched(model, window)
    with frozen(model), torch.no_grad():
        logits = predictor(x)
        mask = target_mask(logits)
        base = float(explained_target(logits, mask)[0])
    target = None if window is None else mask  # the stitched prediction's mask, not computed again
    started = time.perf_counter()
    explained = None
    if is_lrp(method):
        swept = usable if any(f.kind == "raw" for f in usable) else [RelevanceFilter(), *usable]
        relevances, explained = lrp_sweep(model, x, method, swept, target, window=window, **options)
        propagations = 1 + sum(f.mode == "layer" and f.kind != "raw" for f in usable)
    else:
        relevances = {"raw": attribute(model, x, method, target, seed=seed, window=window)}
        relevances.update({f.name: f(relevances["raw"]) for f in usable})
        propagations = 1
    seconds = (time.perf_counter() - started) / propagations
    raw = relevances["raw"][0].numpy()
    results = []
    for f in usable:
        relevance = relevances[f.name][0].numpy()
        values = assess(model, image, relevance, lesion, evidence, modalities, raw=raw, mask=mask, base=base,
                        window=window)
        values["seconds_per_volume"] = seconds
        if explained is not None:
            values["conservation_error"] = m.conservation_error(relevance, float(explained[0]))
        if heavy == "all" or (heavy == "raw" and f.kind == "raw"):
            with frozen(model):
                def again(randomised: nn.Module, f: RelevanceFilter = f) -> np.ndarray:
                    if is_lrp(method):
                        return lrp_sweep(randomised, x, method, [f], window=window, **options)[0][f.name][0].numpy()
                    return f(attribute(randomised, x, method, seed=seed, window=window))[0].numpy()

                traced = x if window is None else Tiling(x, window).example()  # the layer order, on a patch
                values["randomisation_spearman"] = m.randomisation_spearman(model, again, relevance, x=traced,
                                                                            seed=seed)
        results.append(Explanation(case_id, method, f, relevance, values))
    return results
