"""What the architecture leaderboard shows of a model or rule, on the validation cases.

Per case, on the native grid: the segmentation metrics of :mod:`benchmark.evaluation.segmentation`, the true
lesion volume in ml, and the Dice under two input perturbations (the study's robustness test):

* ``dice_noise``: Gaussian noise of σ = 0.15 added to every input value. For networks the noise
  is in the model's input units (with the default min–max normalisation, 0.15 of each map's
  range); for the threshold rules, which read raw maps, σ is 0.15 × (max − min) of each map.
* ``dice_zero_half``: half of the input voxels, drawn at random, set to 0 in every modality
  (outside the brain for the rules, which read 0 as background).

The draws are fixed by ``seed`` and differ per case. A ``native``-mode model predicts each case (clean
or perturbed) at the target spacing by Gaussian sliding windows (``window``), as ``predict`` does, and
its probability is resampled to the native grid. Latency is the median wall time of one batch-1
forward pass at the training grid (one patch in ``native`` mode), in PyTorch eager mode and in onnxruntime.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from benchmark.data.cases import Case
from benchmark.data.preprocessing import PreparedCase, to_native
from benchmark.errors import DataError
from benchmark.evaluation.clinical_rules import clinical_masks
from benchmark.evaluation.inference import predict_probability
from benchmark.evaluation.segmentation import dice, segmentation_metrics
from inferers import SlidingWindow

NOISE_SIGMA = 0.15
ZERO_FRACTION = 0.5
PERTURBATIONS = ("noise", "zero_half")


def _rng(seed: int, case_id: str) -> np.random.Generator:
    return np.random.default_rng([seed, *case_id.encode()])


def perturb(image: np.ndarray, kind: str, rng: np.random.Generator, scale: np.ndarray | None = None) -> np.ndarray:
    """A perturbed copy of a (C, D, H, W) input.

    Args:
        image: the input.
        kind: ``noise`` (σ = 0.15 × ``scale`` per channel) or ``zero_half`` (half the voxels zeroed).
        rng: the random draws.
        scale: per-channel unit of the noise (default 1).
    """
    if kind == "noise":
        unit = np.ones(len(image)) if scale is None else np.asarray(scale, dtype=np.float64)
        noise = rng.standard_normal(image.shape) * (NOISE_SIGMA * unit)[:, None, None, None]
        return (image + noise).astype(image.dtype)
    if kind == "zero_half":
        keep = rng.random(image.shape[1:]) >= ZERO_FRACTION
        return image * keep[None]
    raise ValueError(f"unknown perturbation {kind}")


def _require_label(case_id: str, label) -> np.ndarray:
    if label is None:
        raise DataError(f"case {case_id} has no ground truth: the leaderboard needs labelled validation cases")
    return np.asarray(label) > 0


def evaluate_model(model: nn.Module, cases: Sequence[PreparedCase], seed: int = 0,
                   threshold: float = 0.5, window: SlidingWindow | None = None) -> list[dict]:
    """Per validation case: metrics, lesion volume (ml) and Dice under each perturbation.

    ``window``: the model's sliding window (:meth:`~benchmark.data.preprocessing.PreprocessConfig.window`;
    None for ``seed`` models, which see whole volumes).

    Returns:
        One dict per case: ``case``, ``lesion_ml``, the :data:`benchmark.evaluation.segmentation.METRIC_NAMES`,
        ``dice_noise`` and ``dice_zero_half``.
    """
    device = torch.device("cpu")
    model = model.to(device).eval()
    rows = []
    for case in cases:
        truth = _require_label(case.case_id, case.native_label)

        def native_mask(image: np.ndarray, case: PreparedCase = case) -> np.ndarray:
            with torch.no_grad():
                probability = predict_probability(model, torch.from_numpy(image[None]), device, window=window)
            return to_native(probability, case.native_shape)[0] > threshold

        row = {"case": case.case_id, "lesion_ml": float(truth.sum() * np.prod(case.spacing) / 1000.0),
               **segmentation_metrics(native_mask(case.image), truth, case.spacing)}
        rng = _rng(seed, case.case_id)
        for kind in PERTURBATIONS:
            row[f"dice_{kind}"] = dice(native_mask(perturb(case.image, kind, rng)), truth)
        rows.append(row)
    return rows


def evaluate_rules(cases: Sequence[Case], seed: int = 0) -> dict[str, list[dict]]:
    """The clinical rules (:func:`~benchmark.evaluation.clinical_rules.clinical_masks`) on raw cases.

    Like :func:`evaluate_model`.

    Returns:
        {rule: per-case rows}.

    Raises:
        DataError: a case lacks rCBF or Tmax, or its ground truth.
    """
    out: dict[str, list[dict]] = {}
    for case in cases:
        truth = _require_label(case.case_id, case.label)
        names = list(case.modality_names)
        missing = [m for m in ("rCBF", "Tmax") if m not in names]
        if missing:
            raise DataError(f"case {case.case_id} lacks {', '.join(missing)}: the clinical rules need rCBF and Tmax")

        def masks(image: np.ndarray, case: Case = case) -> dict[str, np.ndarray]:
            return clinical_masks(dict(zip(case.modality_names, image, strict=True)), case.affine)

        clean = masks(case.modalities)
        rng = _rng(seed, case.case_id)
        span = np.array([float(x.max() - x.min()) for x in case.modalities])
        perturbed = {kind: masks(perturb(case.modalities, kind, rng, scale=span)) for kind in PERTURBATIONS}
        lesion_ml = float(truth.sum()) * case.voxel_ml
        for rule, mask in clean.items():
            row = {"case": case.case_id, "lesion_ml": lesion_ml, **segmentation_metrics(mask, truth, case.spacing)}
            for kind in PERTURBATIONS:
                row[f"dice_{kind}"] = dice(perturbed[kind][rule], truth)
            out.setdefault(rule, []).append(row)
    return out


def interleaved_medians(calls: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Median wall time of each call over ``repeats`` rounds after one warm-up call each, in s.

    Timed round-robin (one call of every entry per round), so the slow drifts of a shared machine
    touch all entries alike and their ratios stay comparable.
    """
    for fn in calls.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(repeats):
        for name, fn in calls.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def median_seconds(fn: Callable[[], object], repeats: int = 5) -> float:
    """Median wall time of ``fn`` over ``repeats`` calls after one warm-up call, in s."""
    return interleaved_medians({"call": fn}, repeats)["call"]


def latency(model: nn.Module, preprocess: dict, repeats: int = 5) -> dict[str, float | str]:
    """Batch-1 latency at the training grid: PyTorch eager and onnxruntime (exported here, verified).

    Returns:
        ``latency_torch_s``, ``latency_onnx_s`` and ``onnx_provider`` (the provider actually used).
    """
    from models.onnx import Segmenter, export_onnx

    model = model.cpu().eval()
    grid = tuple(preprocess["grid"][::-1])  # (X, Y, Z) → (D, H, W)
    x = torch.rand(1, len(preprocess["modalities"]), *grid, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        eager = median_seconds(lambda: model(x), repeats)
    with tempfile.TemporaryDirectory() as tmp:
        report = export_onnx(model, Path(tmp) / "model.onnx", preprocess, grids=(grid,))
        segmenter = Segmenter(report.onnx_path)
        image = x.numpy()
        onnx = median_seconds(lambda: segmenter.logits(image), repeats)
    return {"latency_torch_s": eager, "latency_onnx_s": onnx, "onnx_provider": segmenter.provider}


def summarize(rows: Sequence[dict]) -> dict[str, float]:
    """Mean (``<key>_mean``) and sample standard deviation (``<key>_sd``) of every numeric column."""
    keys = [k for k, v in rows[0].items() if isinstance(v, (int, float)) and not isinstance(v, bool)]
    out = {}
    for key in keys:
        values = np.array([r[key] for r in rows], dtype=np.float64)
        out[f"{key}_mean"] = float(values.mean())
        out[f"{key}_sd"] = float(values.std(ddof=1)) if len(values) > 1 else 0.0
    return out
