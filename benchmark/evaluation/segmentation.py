"""Segmentation metrics on the native grid, with voxel spacing in mm.

For a prediction P and ground truth G (binary (D, H, W) masks) and spacing s (mm):

* Dice = 2|P ∩ G| / (|P| + |G|).
* precision = |P ∩ G| / |P|; recall = |P ∩ G| / |G|.
* Surface distances: the surface ∂A of a mask is its voxels with a 6-neighbour outside it
  (the volume's border counts as outside); d(a, ∂B) is the Euclidean distance in mm from a surface
  voxel of A to the nearest surface voxel of B (exact distance transform with ``sampling = s``).
  The directed sets are D_PG = {d(a, ∂G) : a ∈ ∂P} and D_GP = {d(g, ∂P) : g ∈ ∂G}; P95 is the
  95th percentile with linear interpolation. Both metrics come in two conventions (``pooled``):

  - HD95, directed (default, reported): max(P95 D_PG, P95 D_GP), MONAI's
    ``compute_hausdorff_distance(percentile=95)``; pooled: P95 (D_PG ∪ D_GP), MedPy's
    ``medpy.metric.binary.hd95`` (0.4 and 0.5). They differ most where a small far-away part
    holds more than 5 % of one surface but less than 5 % of both together.
  - ASSD, directed (default, reported): (mean D_PG + mean D_GP) / 2, MedPy 0.4's ``assd``;
    pooled: mean (D_PG ∪ D_GP), MONAI's ``compute_average_surface_distance(symmetric=True)`` and
    MedPy 0.5's ``assd``. The two differ when |∂P| ≠ |∂G|.

  Both in mm. Surfaces and distances equal MONAI's and MedPy's (connectivity 1); the parity tests
  (tests/test_metric_parity.py) compare all four forms with both libraries.
* Absolute volume difference = | |P| − |G| | × voxel volume, in ml (1 ml = 1000 mm³).
* Lesion-wise F1: lesions are 26-connected components. A ground-truth lesion is found if any
  predicted voxel overlaps it; a predicted lesion is correct if it overlaps any ground-truth
  voxel. Lesion precision = correct / predicted lesions, lesion recall = found / true lesions,
  F1 = 2PR / (P + R).

Empty masks: both empty → Dice, precision, recall, lesion F1 = 1 and distances = 0. Exactly one
empty → Dice, lesion F1 = 0; precision is 0 when P is empty and G is not (nothing right was
found), recall is 1 when G is empty (nothing was missed) and precision 0 (every predicted voxel
is wrong); HD95 and ASSD are the diagonal of the volume in mm (the largest possible distance),
so averages stay finite and punish the miss.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from benchmark.errors import ParameterError

METRIC_NAMES: tuple[str, ...] = (
    "dice", "hd95", "assd", "volume_diff_ml", "precision", "recall", "lesion_f1",
)
"""Keys of :func:`segmentation_metrics`; units: hd95 and assd in mm, volume_diff_ml in ml."""

HD95_POOLED: bool = False
"""The HD95 convention :func:`segmentation_metrics` reports: directed (MONAI), not pooled (MedPy)."""

ASSD_POOLED: bool = False
"""The ASSD convention :func:`segmentation_metrics` reports: directed (MedPy 0.4), not pooled (MONAI, MedPy 0.5)."""

DISTANCE_CONVENTION: str = (
    "HD95 is the larger of the two directed 95th percentiles of surface distances (MONAI "
    "compute_hausdorff_distance(percentile=95); MedPy's hd95 pools both directions); ASSD is the mean of "
    "the two directed mean surface distances (MedPy 0.4; MONAI compute_average_surface_distance(symmetric=True) "
    "and MedPy 0.5 pool all distances). Surfaces are 6-connected, distances in mm on the native grid."
)
"""One sentence for the report: which HD95/ASSD convention the leaderboard's numbers follow."""

_26 = np.ones((3, 3, 3), dtype=bool)


def _check(prediction: np.ndarray, truth: np.ndarray, spacing: Sequence[float]):
    p, g = np.asarray(prediction).astype(bool), np.asarray(truth).astype(bool)
    if p.shape != g.shape or p.ndim != 3:
        raise ParameterError(f"prediction {p.shape} and ground truth {g.shape} must be 3-D masks "
                             "on the same grid: resample the prediction to the native grid first")
    if len(spacing) != 3 or min(spacing) <= 0:
        raise ParameterError(f"spacing {tuple(spacing)} must be three positive sizes in mm")
    return p, g


def dice(prediction: np.ndarray, truth: np.ndarray) -> float:
    """Dice = 2|P ∩ G| / (|P| + |G|); 1 when both are empty."""
    p, g = np.asarray(prediction, bool), np.asarray(truth, bool)
    total = int(p.sum()) + int(g.sum())
    return 1.0 if total == 0 else 2.0 * int((p & g).sum()) / total


def _surface(mask: np.ndarray) -> np.ndarray:
    return mask & ~ndimage.binary_erosion(mask, structure=ndimage.generate_binary_structure(3, 1),
                                          border_value=0)


def surface_distances(a: np.ndarray, b: np.ndarray, spacing: Sequence[float]) -> np.ndarray:
    """Distances in mm from each surface voxel of ``a`` to the surface of ``b`` (both non-empty)."""
    surface_b = _surface(b)
    distance_to_b = ndimage.distance_transform_edt(~surface_b, sampling=spacing)
    return distance_to_b[_surface(a)]


def _diagonal(shape: Sequence[int], spacing: Sequence[float]) -> float:
    return float(np.sqrt(sum((n * s) ** 2 for n, s in zip(shape, spacing, strict=True))))


def _hd95(d_pg: np.ndarray, d_gp: np.ndarray, pooled: bool) -> float:
    if pooled:
        return float(np.percentile(np.concatenate([d_pg, d_gp]), 95))
    return max(float(np.percentile(d_pg, 95)), float(np.percentile(d_gp, 95)))


def _assd(d_pg: np.ndarray, d_gp: np.ndarray, pooled: bool) -> float:
    if pooled:
        return float(np.concatenate([d_pg, d_gp]).mean())
    return (float(d_pg.mean()) + float(d_gp.mean())) / 2.0


def hd95_assd(prediction: np.ndarray, truth: np.ndarray, spacing: Sequence[float], *,
              hd95_pooled: bool = HD95_POOLED, assd_pooled: bool = ASSD_POOLED) -> tuple[float, float]:
    """(HD95, ASSD) in mm from one pair of distance transforms.

    Args:
        prediction: binary (D, H, W) mask.
        truth: binary (D, H, W) ground truth on the same grid.
        spacing: voxel size in mm in (D, H, W) order.
        hd95_pooled: False (default): max of the two directed P95 (MONAI); True: P95 of both directions
            pooled (MedPy ``hd95``).
        assd_pooled: False (default): mean of the two directed means (MedPy 0.4); True: mean of all
            distances pooled (MONAI ``symmetric=True``, MedPy 0.5).

    Returns:
        (HD95, ASSD) in mm, with the empty-mask conventions of the module docstring.
    """
    p, g = _check(prediction, truth, spacing)
    if not p.any() and not g.any():
        return 0.0, 0.0
    if not p.any() or not g.any():
        worst = _diagonal(p.shape, spacing)
        return worst, worst
    d_pg = surface_distances(p, g, spacing)
    d_gp = surface_distances(g, p, spacing)
    return _hd95(d_pg, d_gp, hd95_pooled), _assd(d_pg, d_gp, assd_pooled)


def hd95(prediction: np.ndarray, truth: np.ndarray, spacing: Sequence[float], pooled: bool = HD95_POOLED) -> float:
    """HD95 in mm: max of the directed P95 (MONAI, default) or, ``pooled``, P95 of both directions (MedPy)."""
    return hd95_assd(prediction, truth, spacing, hd95_pooled=pooled)[0]


def assd(prediction: np.ndarray, truth: np.ndarray, spacing: Sequence[float], pooled: bool = ASSD_POOLED) -> float:
    """ASSD in mm: mean of the directed means (MedPy 0.4, default) or, ``pooled``, of all distances (MONAI)."""
    return hd95_assd(prediction, truth, spacing, assd_pooled=pooled)[1]


def lesion_f1(prediction: np.ndarray, truth: np.ndarray) -> float:
    """Lesion-wise F1 over 26-connected components (see the module docstring)."""
    p, g = np.asarray(prediction, bool), np.asarray(truth, bool)
    true_lesions, n_true = ndimage.label(g, structure=_26)
    pred_lesions, n_pred = ndimage.label(p, structure=_26)
    if n_true == 0 and n_pred == 0:
        return 1.0
    if n_true == 0 or n_pred == 0:
        return 0.0
    found = len(np.unique(true_lesions[p & g]))
    correct = len(np.unique(pred_lesions[p & g]))
    precision, recall = correct / n_pred, found / n_true
    return 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)


def segmentation_metrics(prediction: np.ndarray, truth: np.ndarray,
                         spacing: Sequence[float]) -> dict[str, float]:
    """All metrics of :data:`METRIC_NAMES` for one case on its native grid.

    HD95 and ASSD follow :data:`HD95_POOLED` and :data:`ASSD_POOLED` (:data:`DISTANCE_CONVENTION`).

    Args:
        prediction: binary (D, H, W) mask.
        truth: binary (D, H, W) ground truth on the same grid.
        spacing: voxel size in mm in (D, H, W) order.

    Returns:
        A dict keyed by :data:`METRIC_NAMES`.
    """
    p, g = _check(prediction, truth, spacing)
    tp, n_p, n_g = int((p & g).sum()), int(p.sum()), int(g.sum())
    distance, surface = hd95_assd(p, g, spacing)  # HD95_POOLED, ASSD_POOLED: DISTANCE_CONVENTION
    voxel_ml = float(np.prod(spacing)) / 1000.0
    return {
        "dice": dice(p, g),
        "hd95": distance,
        "assd": surface,
        "volume_diff_ml": abs(n_p - n_g) * voxel_ml,
        "precision": (1.0 if n_g == 0 else 0.0) if n_p == 0 else tp / n_p,
        "recall": 1.0 if n_g == 0 else tp / n_g,
        "lesion_f1": lesion_f1(p, g),
    }
