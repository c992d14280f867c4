"""Summaries of relevance maps that the study's experiments read: amplitude by channel, mass in a region.

Relevance ``R`` is one case's (C, D, H, W) map on the model's input grid.
"""

from __future__ import annotations

import numpy as np

from benchmark.errors import ParameterError


def normalized_mean_by_channel(relevance: np.ndarray) -> tuple[np.ndarray, float]:
    """The study's normalised mean relevance amplitude of each input channel.

    ``m = max_{c,v} |R_c(v)|`` over every channel and voxel, then per channel
    ``a_c = mean_v(R_c(v) / m) = (Σ_v R_c(v)) / (m · V)`` with V the voxels per channel; signed,
    so ``Σ_c a_c = Σ R / (m · V)`` and ``|a_c| ≤ 1``. Source: the study's
    ``EvalLRP.compute_normalized_mean_by_channel``, ``utils/evalobj.py:283-292`` (it returns
    ``m`` as ``factor`` and the ``a_c`` as ``values``). An all-zero map gives zeros and m = 0.

    Returns:
        (``a`` of shape (C,), float64; ``m``).
    """
    r = np.asarray(relevance, dtype=np.float64)
    if r.ndim < 2:
        raise ParameterError(f"relevance must be one case's (C, …) map, got shape {r.shape}")
    peak = float(np.abs(r).max()) if r.size else 0.0
    if peak == 0:
        return np.zeros(len(r)), 0.0
    return (r / peak).reshape(len(r), -1).mean(axis=1), peak


def _share(num: float, den: float) -> float:
    """The quotient num / den, 0 when den is 0 (no relevance at all: nothing to share)."""
    return float(num / den) if den > 0 else 0.0


def region_relevance(relevance: np.ndarray, region: np.ndarray, brain: np.ndarray | None = None) -> dict[str, float]:
    """How much relevance a region (a defect) holds, against its size.

    With ``|R|`` summed over channels per voxel, ``M`` the region and ``B`` the brain (every
    voxel when None):

    * ``mass_share`` = ``Σ_M |R| / Σ_B |R|``;
    * ``positive_share`` = ``Σ_M R⁺ / Σ_B R⁺``;
    * ``volume_share`` = ``|M| / |B|`` (the mass share of relevance spread evenly over the brain);
    * ``density_ratio`` = ``(Σ_M |R| / |M|) / (Σ_{B∖M} |R| / |B∖M|)``: relevance per voxel inside
      the region over that elsewhere in the brain (1: no different; > 1: the region draws relevance).

    Ratios with a zero denominator are 0.
    """
    r = np.asarray(relevance, dtype=np.float64)
    inside = np.asarray(region, bool)
    if r.shape[1:] != inside.shape:
        raise ParameterError(f"region of shape {inside.shape} does not match relevance of shape {r.shape}")
    brain = np.ones_like(inside) if brain is None else np.asarray(brain, bool) | inside
    magnitude, positive = np.abs(r).sum(axis=0), np.clip(r, 0, None).sum(axis=0)
    outside = brain & ~inside
    mass_in, mass_out = float(magnitude[inside].sum()), float(magnitude[outside].sum())
    return {"mass_share": _share(mass_in, mass_in + mass_out),
            "positive_share": _share(float(positive[inside].sum()), float(positive[brain].sum())),
            "volume_share": _share(float(inside.sum()), float(brain.sum())),
            "density_ratio": _share(_share(mass_in, float(inside.sum())), _share(mass_out, float(outside.sum())))}
