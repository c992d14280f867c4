"""The resolution study's figures: per-case metrics on the native grid, overall and for small lesions.

Per case (:func:`case_rows`): the model's probability on its input grid (whole volume, or Gaussian
sliding windows in ``native`` mode) resampled to the case's native grid and thresholded at 0.5; Dice,
HD95 (mm) and lesion-wise F1 there (:mod:`benchmark.evaluation.segmentation`), the lesion volume (ml)
and, lesion by lesion, how many ground-truth lesions (26-connected components) under
:data:`SMALL_LESION_ML` exist and how many the prediction touches.

"Small lesions" are read two ways (:func:`summarize`):

* the cases whose whole lesion volume is under :data:`SMALL_LESION_ML` (their Dice, HD95, F1 with a
  95 % bootstrap interval over those cases, :func:`benchmark.evaluation.statistics.bootstrap_ci`);
* lesion-wise detection: the share of all ground-truth components under :data:`SMALL_LESION_ML`, over
  every case, that the prediction overlaps by at least one voxel (``small_lesion_recall``).

Each setting is compared with the reference setting (the first, the seed grid 48×48×19) by the paired
Wilcoxon test on the same cases (:func:`benchmark.evaluation.statistics.paired_test`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
from scipy import ndimage
from torch import nn

from benchmark.data.preprocessing import PreparedCase, to_native
from benchmark.errors import DataError
from benchmark.evaluation.inference import predict_probability
from benchmark.evaluation.segmentation import dice, hd95, lesion_f1
from benchmark.evaluation.statistics import bootstrap_ci, paired_test
from inferers import SlidingWindow

SMALL_LESION_ML = 5.0
"""A lesion (or a case's whole lesion) under this volume in ml is small."""
METRICS: tuple[str, ...] = ("dice", "hd95", "lesion_f1")
"""The metrics of the study's table."""
_26 = np.ones((3, 3, 3), dtype=bool)


def small_lesions(prediction: np.ndarray, truth: np.ndarray, voxel_ml: float,
                  limit_ml: float = SMALL_LESION_ML) -> tuple[int, int]:
    """(ground-truth components under ``limit_ml``, those the prediction overlaps by ≥ 1 voxel)."""
    labels, count = ndimage.label(np.asarray(truth, bool), structure=_26)
    if count == 0:
        return 0, 0
    sizes = ndimage.sum_labels(np.ones_like(labels), labels, index=np.arange(1, count + 1)) * voxel_ml
    small = {i + 1 for i, size in enumerate(sizes) if size < limit_ml}
    touched = set(np.unique(labels[np.asarray(prediction, bool) & (labels > 0)]).tolist())
    return len(small), len(small & touched)


def case_rows(model: nn.Module, cases: Sequence[PreparedCase], window: SlidingWindow | None,
              threshold: float = 0.5, device: torch.device | None = None) -> list[dict]:
    """Per case: ``case``, ``lesion_ml``, :data:`METRICS`, ``small_lesions`` and ``small_found`` (module docstring)."""
    device = device or torch.device("cpu")
    model = model.to(device).eval()
    rows = []
    for case in cases:
        if case.native_label is None:
            raise DataError(f"case {case.case_id} has no ground truth: the resolution study scores labelled cases")
        truth = np.asarray(case.native_label) > 0
        probability = predict_probability(model, torch.from_numpy(case.image[None]), device, window=window)
        mask = to_native(probability, case.native_shape)[0] > threshold
        voxel_ml = float(np.prod(case.spacing)) / 1000.0
        count, found = small_lesions(mask, truth, voxel_ml)
        rows.append({"case": case.case_id, "lesion_ml": float(truth.sum()) * voxel_ml, "dice": dice(mask, truth),
                     "hd95": hd95(mask, truth, case.spacing), "lesion_f1": lesion_f1(mask, truth),
                     "small_lesions": count, "small_found": found})
    return rows


def summarize(rows_by_setting: Mapping[str, Sequence[dict]], limit_ml: float = SMALL_LESION_ML) -> list[dict]:
    """One summary per setting, in the given order (the first is the reference; module docstring).

    Keys: ``setting``, ``cases``, ``small_cases``; for each metric ``m`` of :data:`METRICS`: ``m`` (an
    :class:`~benchmark.evaluation.statistics.Interval` over all cases), ``small_m`` (over the small-lesion cases),
    ``p_m`` and ``p_small_m`` (paired test against the reference; 1.0 for the reference itself); and
    ``small_lesion_recall`` (found / all small components, NaN without any) with ``small_lesions``.
    """
    names = list(rows_by_setting)
    if not names:
        return []
    reference = {r["case"]: r for r in rows_by_setting[names[0]]}
    small = sorted(c for c, r in reference.items() if r["lesion_ml"] < limit_ml)
    summaries = []
    for name in names:
        rows = {r["case"]: r for r in rows_by_setting[name]}
        if set(rows) != set(reference):
            raise DataError(f"setting {name} was scored on other cases than {names[0]}: score every setting on "
                            "the same cases")
        cases = sorted(rows)
        summary: dict = {"setting": name, "cases": len(cases), "small_cases": len(small)}
        for metric in METRICS:
            for prefix, ids in (("", cases), ("small_", small)):
                values = [rows[c][metric] for c in ids]
                summary[f"{prefix}{metric}"] = bootstrap_ci(values)
                summary[f"p_{prefix}{metric}"] = 1.0 if name == names[0] or not ids else paired_test(
                    values, [reference[c][metric] for c in ids])
        total = sum(r["small_lesions"] for r in rows.values())
        summary["small_lesions"] = total
        summary["small_lesion_recall"] = sum(r["small_found"] for r in rows.values()) / total if total else float("nan")
        summaries.append(summary)
    return summaries
