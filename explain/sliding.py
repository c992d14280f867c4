"""Explaining a sliding-window segmenter: window shares of the stitched output, and the stitched model.

A native-resolution model predicts a volume larger than its patch with Gaussian-weighted sliding
windows (:mod:`inferers`): with ``g`` the patch's importance map, ``o_w`` window w's origin and
``f_w`` its logits, the prediction is ``F(v) = Σ_w g(v − o_w) f_w(v) / Σ_u g(v − o_u)``. Written
with window w's **share** of voxel v,

    ``ω_w(v) = g(v − o_w) / Σ_u g(v − o_u)``   (``Σ_w ω_w(v) = 1`` wherever a window covers v),

stitching is ``F(v) = Σ_w ω_w(v) f_w(v)``: a linear layer on top of the windows' logits, positive
weights and no bias. That is how it is explained. (F is computed here in this form, in the input's
dtype — :meth:`Tiling.stitch` — and agrees with :func:`inferers.sliding_window` to float rounding.)

**LRP** (``explain.lrp_sweep`` / ``explain.attribute`` with ``window=``): the explained relevance
on the stitched output is ``R_F(v) = F₁(v) m(v)`` (``m`` the target mask, :mod:`explain.targets`,
taken on F: for the default target, F's predicted lesion). The LRP-0 rule on the stitching layer
hands window w's lesion logit ``R_w(v) = ω_w(v) f_w,1(v) / F₁(v) · R_F(v) = ω_w(v) f_w,1(v) m(v)``
(the ratio cancels: no stabiliser, exactly conservative). Each window then propagates its start
relevance through the network with the chosen rules (batches of ``window.batch`` windows, one
backward pass each), and the windows' input relevances are *summed* into the volume: their
Gaussian shares are already in them, so nothing is divided again.

**Conservation** then means: per window, ``Σ R_in,w = T_w = Σ_v ω_w(v) f_w,1(v) m(v)``, the
window's *weighted target*, as exactly as the rule conserves on one volume (within its stabilisers;
ε and γ only without biases; :func:`explain.conservation`); over the volume,
``Σ_w T_w = Σ_v F₁(v) m(v)``, the explained target of the stitched prediction, so the stitched
relevance sums to it as a whole-volume explanation does. The explained target ``lrp_sweep``
returns is ``Σ_w T_w``. One exception: a volume smaller than the patch is zero-padded (as for the
prediction) and the stitched relevance is cropped back, so relevance a first-layer rule puts on
padded voxels is dropped (z^B does, through its bounds; rules proportional to the input give
zeros nothing).

Consequences, each tested: a volume of exactly one patch gives the non-windowed attribution
(``ω = 1``); a pointwise model's stitched relevance equals its whole-volume relevance (every rule
is linear in the relevance it receives and ``Σ_w ω_w = 1``).

**Filters**: a layer-wise filter acts per window (it normalises each window's relevance by that
window's max|R| after every layer, the window being the sample); a post-hoc filter acts once on
the stitched map.

**Baselines** (gradient, gradient × input, integrated gradients, smoothgrad, prediction, random)
explain the stitched model ``F`` itself (:class:`Stitched`): its forward is the stitched
prediction, its gradient ``∂F/∂x = Σ_w ω_w ∂f_w/∂x_w`` is computed window by window (each
window's forward is recomputed in the backward pass, so memory holds one batch of windows, as
gradient checkpointing does). So the gradient of ``Σ F₁ m`` is the windows' gradients of their
``ω_w``-weighted targets summed, the same shares as LRP.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn

from explain.errors import ExplainError
from inferers import SlidingWindow

Tensor = torch.Tensor


def _check_volume(x: Tensor, window: SlidingWindow) -> None:
    if not isinstance(window, SlidingWindow):
        raise ExplainError(f"window must be an inferers.SlidingWindow, got {type(window).__name__}")
    if x.dim() != 5:
        raise ExplainError(f"sliding windows tile volumes (N, C, D, H, W); x has shape {tuple(x.shape)}")


def _checked(model: nn.Module):
    """``model`` as a window function that refuses outputs not on the window's grid."""
    def run(batch: Tensor) -> Tensor:
        out = model(batch)
        if not isinstance(out, Tensor) or out.dim() != batch.dim() or out.shape[2:] != batch.shape[2:] \
                or out.shape[1] < 2:
            shape = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
            raise ExplainError(f"sliding-window explanation needs a segmenter whose logits (N, K >= 2, d, h, w) lie "
                               f"on its input window's grid: the model maps {tuple(batch.shape)} to {shape}")
        return out
    return run


class Tiling:
    """The windows of one input (N, C, D, H, W) and their shares ω_w (module docstring).

    Attributes:
        window: the tiling settings.
        spatial: the volume's grid (D, H, W).
        pads: zero padding (before, after) per axis that makes the volume at least one patch.
        padded: the padded input.
        boxes: the windows as slices of the padded grid, in :meth:`inferers.SlidingWindow.windows` order.
        shares: ω_w on each window's (d, h, w) grid, x's dtype and device.
    """

    def __init__(self, x: Tensor, window: SlidingWindow):
        _check_volume(x, window)
        self.window = window
        self.spatial = tuple(x.shape[2:])
        self.pads = window.padding(self.spatial)
        flat = [n for a, b in reversed(self.pads) for n in (a, b)]
        self.padded = torch.nn.functional.pad(x, flat) if any(flat) else x
        self.boxes = window.windows(self.padded.shape[2:])
        g = torch.from_numpy(window.importance()).to(device=x.device, dtype=x.dtype)
        total = torch.zeros(self.padded.shape[2:], dtype=x.dtype, device=x.device)
        for box in self.boxes:
            total[box] += g
        self.shares = [g / total[box] for box in self.boxes]

    def pad(self, volume: Tensor) -> Tensor:
        """A (N, K, D, H, W) map on the volume's grid, zero-padded like the input."""
        flat = [n for a, b in reversed(self.pads) for n in (a, b)]
        return torch.nn.functional.pad(volume, flat) if any(flat) else volume

    def crop(self, volume: Tensor) -> Tensor:
        """A (N, K, *padded) map cropped back to the volume's grid."""
        return volume[(slice(None), slice(None),
                       *(slice(a, a + s) for (a, _), s in zip(self.pads, self.spatial, strict=True)))]

    def batches(self) -> Iterator[tuple[int, list[int]]]:
        """(sample, window indices) in batches of ``window.batch`` windows of one sample."""
        step = self.window.batch
        for n in range(self.padded.shape[0]):
            for first in range(0, len(self.boxes), step):
                yield n, list(range(first, min(first + step, len(self.boxes))))

    def gather(self, volume: Tensor, n: int, indices: list[int]) -> Tensor:
        """The windows ``indices`` of sample ``n`` of a padded (N, K, *padded) map, stacked (B, K, d, h, w)."""
        return torch.stack([volume[n][(slice(None), *self.boxes[i])] for i in indices])

    def example(self) -> Tensor:
        """One window of the input (1, C, d, h, w): what the model's structure is traced on."""
        return self.gather(self.padded, 0, [0])

    @torch.no_grad()
    def stitch(self, model: nn.Module) -> Tensor:
        """The stitched prediction ``F = Σ_w ω_w f_w`` (N, K, D, H, W) of ``model``, in the input's dtype.

        :func:`inferers.sliding_window`'s ``Σ g f / Σ g`` with the division done per window (shares),
        so a volume of one patch gives ``f`` itself; they agree to float rounding.
        """
        run = _checked(model)
        total = None
        for n, indices in self.batches():
            out = run(self.gather(self.padded, n, indices)).to(self.padded.dtype)
            if total is None:
                total = torch.zeros((self.padded.shape[0], out.shape[1], *self.padded.shape[2:]),
                                    dtype=out.dtype, device=out.device)
            for i, o in zip(indices, out, strict=True):
                total[n][(slice(None), *self.boxes[i])] += o * self.shares[i]
        return self.crop(total)


def stitched_logits(model: nn.Module, x: Tensor, window: SlidingWindow) -> Tensor:
    """The stitched prediction F (N, K, D, H, W) of ``model`` on ``x``, in x's dtype (:meth:`Tiling.stitch`)."""
    return Tiling(x, window).stitch(model)


@dataclass(frozen=True)
class WindowRelevance:
    """One window's LRP result (``lrp_sweep(..., per_window=[])``).

    Attributes:
        sample: the volume's index in the batch.
        box: the window as slices of the padded grid (:attr:`Tiling.pads` before the volume).
        relevance: filter name → the window's input relevance (C, d, h, w), before stitching
            (raw and layer-wise filters; post-hoc filters act on the stitched map only).
        target: T_w, the window's weighted target ``Σ_v ω_w(v) f_w,1(v) m(v)`` (module docstring).
    """

    sample: int
    box: tuple[slice, slice, slice]
    relevance: dict[str, Tensor]
    target: float


class _StitchFunction(torch.autograd.Function):
    """F(x) in the forward pass; ``Σ_w ω_w ∂f_w/∂x_w`` window by window in the backward pass."""

    @staticmethod
    def forward(ctx, x: Tensor, stitched: Stitched) -> Tensor:
        ctx.stitched = stitched
        ctx.tiling = Tiling(x.detach(), stitched.window)
        return ctx.tiling.stitch(stitched.model)

    @staticmethod
    def backward(ctx, grad: Tensor):
        model, tiling = ctx.stitched.model, ctx.tiling
        grad = tiling.pad(grad)
        total = torch.zeros_like(tiling.padded)
        for n, indices in tiling.batches():
            with torch.enable_grad():
                xb = tiling.gather(tiling.padded, n, indices).requires_grad_(True)
                out = model(xb)
                weights = torch.stack([tiling.shares[i] for i in indices]).unsqueeze(1)
                (gradient,) = torch.autograd.grad(out, xb, tiling.gather(grad, n, indices) * weights)
            for i, g in zip(indices, gradient, strict=True):
                total[n][(slice(None), *tiling.boxes[i])] += g
        return tiling.crop(total), None


class Stitched(nn.Module):
    """The stitched model F of a patch model (module docstring), differentiable window by window.

    Args:
        model: the patch model (its output on a window is (B, K, d, h, w) logits).
        window: the tiling.
    """

    def __init__(self, model: nn.Module, window: SlidingWindow):
        super().__init__()
        self.model, self.window = model, window

    def forward(self, x: Tensor) -> Tensor:
        """F(x), (N, K, D, H, W); with a gradient only when x requires one (then window by window)."""
        if torch.is_grad_enabled() and x.requires_grad:
            return _StitchFunction.apply(x, self)
        return stitched_logits(self.model, x, self.window)
