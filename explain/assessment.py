"""One explanation method on one case: relevance for each filter and its metrics.

Cheap metrics are computed for every filter; region perturbation and the cascading
randomisation test cost many forward passes and run on the unfiltered (``raw``) relevance
only, unless ``heavy="all"``.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from explain import metrics as m
from explain.attribution import attribute, frozen, is_lrp, lrp_sweep, target_mask
from explain.filters import RelevanceFilter


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
    out["pointing_game"] = m.pointing_game(relevance, lesion)
    out["sparseness"] = m.sparseness(relevance)
    if evidence is not None:
        overall, per_modality = m.evidence_mass_accuracy(relevance, evidence)
        out["evidence_mass_accuracy"] = overall
        for name, value in zip(modalities, per_modality):
            out[f"evidence_mass_accuracy_{name}"] = float(value)
        out["modality_attribution_accuracy"] = m.modality_attribution_accuracy(relevance, evidence, lesion)
    return out


def explain_case(model: nn.Module, image: np.ndarray, lesion: np.ndarray, evidence: np.ndarray | None,
                 modalities: Sequence[str], method: str, filters: Sequence[RelevanceFilter], case_id: str = "",
                 heavy: str = "raw", seed: int = 0, **options) -> list[Explanation]:
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
        heavy: ``raw`` (faithfulness and randomisation on raw relevance only), ``all`` or ``none``.
        seed: for random and smoothgrad baselines and the randomisation test.
        **options: rule options of LRP variants.

    Returns:
        One :class:`Explanation` per applicable filter.
    """
    x = torch.from_numpy(image[None]).float()
    usable = list(filters) if is_lrp(method) else [f for f in filters if f.kind == "raw" or f.mode == "post"]
    if not usable:
        return []
    with frozen(model), torch.no_grad():
        mask = target_mask(model(x))
    started = time.perf_counter()
    explained = None
    if is_lrp(method):
        relevances, explained = lrp_sweep(model, x, method, usable, **options)
        propagations = 1 + sum(f.mode == "layer" and f.kind != "raw" for f in usable)
    else:
        raw = attribute(model, x, method, seed=seed)
        relevances = {f.name: f(raw) for f in usable}
        propagations = 1
    seconds = (time.perf_counter() - started) / propagations
    results = []
    for f in usable:
        relevance = relevances[f.name][0].numpy()
        values = _case_metrics(relevance, image, lesion, evidence, modalities)
        values["seconds_per_volume"] = seconds
        if explained is not None:
            values["conservation_error"] = m.conservation_error(relevance, float(explained[0]))
        if heavy == "all" or (heavy == "raw" and f.kind == "raw"):
            with frozen(model):
                values.update(m.region_perturbation(model, x, relevance, mask))

                def again(randomised: nn.Module, f: RelevanceFilter = f) -> np.ndarray:
                    if is_lrp(method):
                        return lrp_sweep(randomised, x, method, [f], **options)[0][f.name][0].numpy()
                    return f(attribute(randomised, x, method, seed=seed))[0].numpy()

                values["randomisation_spearman"] = m.randomisation_spearman(model, again, relevance, x=x, seed=seed)
        results.append(Explanation(case_id, method, f, relevance, values))
    return results
