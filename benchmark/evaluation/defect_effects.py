"""The defect experiment's measurements: what a lesion-like defect does to a prediction and its relevance.

For each case and defect (:mod:`benchmark.data.defects`) and each model, with ``P₀`` the
prediction on the clean input ``x`` and ``P₁`` on ``x + defect`` (native grid, probability > 0.5):

* ``dice_clean`` = Dice(P₁, P₀) (the study's score, ``pipeline/evaluation_dilute_compare_diffgen.py``);
* ``dice_truth`` = Dice(P₁, G) and ``dice_truth_clean`` = Dice(P₀, G), G the ground truth;
* ``volume_change_ml`` = |P₁| − |P₀| in ml;
* ``defect_detected`` = share of the defect's voxels that P₁ marks as lesion (model grid):
  a model trained on defect data should mark them, one trained on normal data should not;
* relevance (one LRP method, raw) on ``x + defect`` and, for reference, on ``x``, summarised by
  :func:`benchmark.evaluation.relevance.region_relevance` over the defect inside the brain:
  ``defect_mass_share``, ``defect_positive_share``, ``defect_density_ratio`` and the same on the
  clean input (``clean_…``: what the same voxels drew before the defect), and ``defect_volume_share``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torch import nn

from benchmark.data.defects import Defect
from benchmark.data.preprocessing import PreparedCase, brain_mask, to_native
from benchmark.errors import DataError
from benchmark.evaluation.inference import predict_probability
from benchmark.evaluation.relevance import region_relevance
from benchmark.evaluation.segmentation import dice
from explain.attribution import attribute
from inferers import SlidingWindow


def defect_rows(models: Mapping[str, nn.Module], cases: Sequence[PreparedCase],
                defects: Mapping[str, Sequence[Defect]], method: str, threshold: float = 0.5,
                progress: bool = True, window: SlidingWindow | None = None) -> list[dict]:
    """One row per model, case and defect (see the module docstring).

    Args:
        models: {name: model}, e.g. the champion trained on normal data and one trained on defect data.
        cases: prepared cases with native labels.
        defects: {case id: defects drawn for that case}.
        method: the LRP (or any ``explain.methods()``) method of the relevance.
        threshold: lesion probability above which a voxel is lesion.
        progress: a progress bar.
        window: a native-mode model's sliding window (prediction and relevance window by window).

    Returns:
        Rows ``model, case, defect, defect_voxels, defect_ml, strength`` and the measurements.

    Raises:
        DataError: a case without ground truth.
    """
    from tqdm import tqdm

    rows = []
    jobs = [(name, case, k, d) for name in models for case in cases for k, d in enumerate(defects[case.case_id])]
    cache: dict[tuple[str, str], tuple] = {}
    for name, case, k, defect in tqdm(jobs, desc="defects", unit="defect", disable=not progress):
        if case.native_label is None:
            raise DataError(f"case {case.case_id} has no ground truth: the defect experiment needs labelled cases")
        model = models[name].eval()
        device = next(model.parameters()).device
        truth = np.asarray(case.native_label) > 0
        native_ml = float(np.prod(case.spacing)) / 1000.0
        grid_ml = native_ml * float(np.prod(case.native_shape)) / float(np.prod(case.image.shape[1:]))
        if (name, case.case_id) not in cache:
            with torch.no_grad():
                p0 = predict_probability(model, torch.from_numpy(case.image[None]), device, window=window)
            clean_relevance = attribute(model, torch.from_numpy(case.image[None]), method, window=window)[0].numpy()
            cache[(name, case.case_id)] = (to_native(p0, case.native_shape)[0] > threshold, clean_relevance)
        clean, clean_relevance = cache[(name, case.case_id)]
        x = defect.apply(case.image)
        with torch.no_grad():
            p1 = predict_probability(model, torch.from_numpy(x[None]), device, window=window)
        defective = to_native(p1, case.native_shape)[0] > threshold
        relevance = attribute(model, torch.from_numpy(x[None]), method, window=window)[0].numpy()
        brain = brain_mask(case.image)
        after = region_relevance(relevance, defect.mask, brain)
        before = region_relevance(clean_relevance, defect.mask, brain)
        rows.append({
            "model": name, "case": case.case_id, "defect": k, "defect_voxels": defect.voxels,
            "defect_ml": defect.voxels * grid_ml, "strength": defect.strength,
            "dice_clean": dice(defective, clean), "dice_truth": dice(defective, truth),
            "dice_truth_clean": dice(clean, truth),
            "volume_change_ml": (float(defective.sum()) - float(clean.sum())) * native_ml,
            "defect_detected": float((p1[0].numpy() > threshold)[defect.mask].mean()),
            "defect_mass_share": after["mass_share"], "defect_positive_share": after["positive_share"],
            "defect_density_ratio": after["density_ratio"], "clean_mass_share": before["mass_share"],
            "clean_positive_share": before["positive_share"], "clean_density_ratio": before["density_ratio"],
            "defect_volume_share": after["volume_share"],
        })
    return rows
