"""The study's relevance propagation, reproduced exactly on its own architecture (a reference).

``reference_lrp(model, x)`` returns what the study's ``UNet3D.relprop_standard`` (its public code,
``models/networks.py`` and ``models/networks_LRP.py``) returns for the same weights and input;
``tests/test_reference_parity.py`` checks it against that code. It is explicit propagation over
the modules of ``models.build("unet3d_reference", …)`` (attributes ``encoders``, ``pools``,
``bottom``, ``ups``, ``decoders``, ``head``; see :mod:`models.reference`), not the general
engine of :mod:`explain.core`, whose methods keep their own, corrected conventions.

Notation: X a layer's stored input, W its weights, W⁺ = max(0, W), W⁻ = min(0, W), ε = 1e-9
(``stabiliser``), ⋆ the layer's convolution and ⋆ᵀ its adjoint, R the relevance of its output.

* Start: R = the whole output map f(x) (after the head's ReLU), both classes, every voxel.
* Convolutions and transposed convolutions other than the first (the "x · W⁺" rule of the old
  heatmapping.org tutorial the study followed): Z = X ⋆ W⁺ + ε (no bias, ε added whatever the
  sign of Z), R_in = X ⊙ ((R / Z) ⋆ᵀ W⁺). The inputs X are mixed-sign after LeakyReLU, so this
  is not the sign-split z⁺ of ``lrp_zplus``.
* BatchNorm, LeakyReLU and ReLU pass relevance unchanged (BatchNorm is not merged).
* Max pooling: Z = maxpool(X) + 2ε (the study adds its ε twice), R_in = X ⊙ unpool(R / Z) at the
  positions of the maxima.
* First convolution (bounds l = 0, h = 1, ``bounds``): the study's z^B variant with W⁺ for the
  input term, Z = X ⋆ W⁺ − L ⋆ W⁺ − H ⋆ V + ε and R_in = X ⊙ (S ⋆ᵀ W⁺) − L ⊙ (S ⋆ᵀ W⁺) −
  H ⊙ (S ⋆ᵀ V), S = R / Z, L and H the constant bound tensors (zero-padded at the borders like
  X). ``first_layer="corrected"``: V = W⁻ (the code's current line); ``"published"``: V = W⁺
  (the line the code's comment says the published results used).
* Decoder level (block input = concatenation (skip s channels, up-sampled c channels)): the
  block's relevance R_cat is split into R_up = R_cat[:, s:] and the skip part R_skip; R_up goes
  through the transposed convolution (the cropped voxels get no relevance). On the encoder side
  the pooled relevance R_pool is joined as R = f · R_skip + (1 − f) · R_pool, f the level's
  ``concat_factors`` entry (0.5 each; deepest skip first, the order the study applies them).
* Filters (``relnormalize``, :class:`~explain.filters.RelevanceFilter` pass/clamp intervals):
  r = R / max|R|; pass keeps r ∈ [a, b] ∪ [−b, −a]; clamp gives clip(r, a, b) where r ≥ 0 and
  clip(r, −b, −a) where r < 0; then R = max|R| · r. Applied where the study applies them: on the
  output, after the head convolution, after each decoder split (to R_up and to R_skip), after each
  transposed convolution, after the bottom block and after each encoder block (so also last, on
  the input relevance) — not inside blocks, not after pooling. A ``post`` filter instead runs
  once on the raw input relevance.

Reproduced bug (``skip_slice="study"``, the default): the study takes the skip part from the
already sliced tensor, R_skip = R_cat[:, s:][:, :s] — the first s channels of the *up-sampled*
part — instead of R_cat[:, :s]; so the relevance of the skip tensor's channels is never used and
needs c ≥ s. It also filters R_up before slicing R_skip from it, so R_skip is filtered twice.
``skip_slice="corrected"`` takes R_skip = R_cat[:, :s] (filtered once), to measure the bug.

Deliberate differences, none of which changes a result the study's code produced: filters
normalise each sample by its own max|R| (the study ran one volume at a time and normalised over
the whole batch); an all-zero relevance stays zero under a filter (the study divides 0 by 0);
max-unpooling writes onto the input grid directly, where the study unpools to the 2·⌈n/2⌉ grid,
multiplies by the zero-padded input and crops the centre back — the same numbers on every grid its
network accepts (D = 8k + 3, H and W multiples of 8), and correct on the others, where its flat
unpooling indices would land in the wrong rows.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from explain.errors import ExplainError
from explain.filters import RelevanceFilter, parse_filter

Tensor = torch.Tensor

FIRST_LAYER_VERSIONS = ("corrected", "published")
"""The study's two z^B sign versions for the first convolution (module docstring)."""

SKIP_SLICES = ("study", "corrected")
"""How the skip part of a decoder's relevance is sliced: the study's (buggy) way, or correctly."""

STUDY_CONCAT_FACTORS = (0.5, 0.5, 0.5)
"""The study's ``concat_factors``: the skip's share f at each join, deepest skip first."""

STUDY_BOUNDS = (0.0, 1.0)
"""The study's input bounds [l, h] for the first layer (its ``first_layer_normalization``)."""

STUDY_STABILISER = 1e-9
"""The study's ε (its layers' ``buffer``)."""


def reference_lrp(model: nn.Module, x: Tensor, *, first_layer: str = "corrected",
                  layer_filter: RelevanceFilter | str | None = None,
                  concat_factors: Sequence[float] = STUDY_CONCAT_FACTORS,
                  bounds: Sequence[float] = STUDY_BOUNDS, skip_slice: str = "study",
                  stabiliser: float = STUDY_STABILISER) -> Tensor:
    """The study's LRP of the whole output map of ``model`` at ``x`` (module docstring).

    Args:
        model: the study's architecture (``models.build("unet3d_reference", …)`` or
            ``models.from_reference_checkpoint``); it is run in eval mode and left as it was.
        x: input (N, C, D, H, W).
        first_layer: ``corrected`` (V = W⁻) or ``published`` (V = W⁺) z^B version.
        layer_filter: a pass/clamp :class:`~explain.filters.RelevanceFilter` or its name
            (``pass_0_0.2``, ``clamp_0_0.6``, ``post_…``); None or ``raw``: none.
        concat_factors: the skip's share f at the three joins, deepest first.
        bounds: the first layer's input bounds (l, h).
        skip_slice: ``study`` (reproduces its slicing bug) or ``corrected``.
        stabiliser: ε added to every denominator.

    Returns:
        Relevance with x's shape and dtype, detached.

    Raises:
        ExplainError: the model is not the study's architecture, or an option is invalid.
    """
    chosen = _as_filter(layer_filter)
    return reference_lrp_sweep(model, x, [chosen], first_layer=first_layer, concat_factors=concat_factors,
                               bounds=bounds, skip_slice=skip_slice, stabiliser=stabiliser)[chosen.name]


def reference_lrp_sweep(model: nn.Module, x: Tensor, filters: Sequence[RelevanceFilter | str], *,
                        first_layer: str = "corrected", concat_factors: Sequence[float] = STUDY_CONCAT_FACTORS,
                        bounds: Sequence[float] = STUDY_BOUNDS, skip_slice: str = "study",
                        stabiliser: float = STUDY_STABILISER) -> dict[str, Tensor]:
    """:func:`reference_lrp` for several filters (e.g. :func:`explain.filters.study_sweep`) from one forward pass.

    Returns:
        Filter name → relevance with x's shape (``raw``, ``pass_0_0.05``, ``post_clamp_0_0.2``, …).
    """
    return reference_lrp_run(model, x, filters, first_layer=first_layer, concat_factors=concat_factors,
                             bounds=bounds, skip_slice=skip_slice, stabiliser=stabiliser)[0]


def reference_lrp_run(model: nn.Module, x: Tensor, filters: Sequence[RelevanceFilter | str], *,
                      first_layer: str = "corrected", concat_factors: Sequence[float] = STUDY_CONCAT_FACTORS,
                      bounds: Sequence[float] = STUDY_BOUNDS, skip_slice: str = "study",
                      stabiliser: float = STUDY_STABILISER) -> tuple[dict[str, Tensor], Tensor]:
    """:func:`reference_lrp_sweep` and the output map f(x) its relevance starts from (N, K, D, H, W), detached."""
    chosen = [_as_filter(f) for f in filters] or [RelevanceFilter()]
    if first_layer not in FIRST_LAYER_VERSIONS:
        raise ExplainError(f"first_layer '{first_layer}' is unknown: use {' or '.join(FIRST_LAYER_VERSIONS)}")
    if skip_slice not in SKIP_SLICES:
        raise ExplainError(f"skip_slice '{skip_slice}' is unknown: use {' or '.join(SKIP_SLICES)}")
    factors = tuple(float(f) for f in concat_factors)
    if len(factors) != 3:
        raise ExplainError(f"concat_factors must be three numbers (deepest skip first), got {list(concat_factors)}")
    low, high = (float(b) for b in bounds) if len(bounds) == 2 else (1.0, 0.0)
    if not low < high:
        raise ExplainError(f"bounds must be (low, high) with low < high, got {list(bounds)}")
    if not isinstance(x, Tensor) or x.dim() != 5 or not x.is_floating_point():
        raise ExplainError("x must be a floating-point tensor (N, C, D, H, W)")
    check_architecture(model, skip_slice)
    propagation = _Propagation(model, first_layer, factors, (low, high), skip_slice, float(stabiliser),
                               keep=len(chosen) > 1)
    with _evaluated(model), torch.no_grad():
        output = propagation.record(x)
        out: dict[str, Tensor] = {}
        raw = None
        for f in chosen:
            if f.mode == "post" and f.kind != "raw":
                if raw is None:
                    raw = propagation.relprop(output, RelevanceFilter())
                out[f.name] = _study_filter(raw, f)
            else:
                out[f.name] = propagation.relprop(output, f)
                if f.kind == "raw":
                    raw = out[f.name]
    return out, output


def _as_filter(f: RelevanceFilter | str | None) -> RelevanceFilter:
    if f is None:
        return RelevanceFilter()
    return parse_filter(f) if isinstance(f, str) else f


def _study_filter(relevance: Tensor, f: RelevanceFilter) -> Tensor:
    """The study's ``relnormalize``, sample by sample, in its own arithmetic (module docstring)."""
    if f.kind == "raw":
        return relevance
    scale = relevance.abs().amax(dim=tuple(range(1, relevance.dim())), keepdim=True)
    r = relevance / torch.where(scale > 0, scale, torch.ones_like(scale))
    a, b = f.low, f.high
    if f.kind == "pass":
        positive = r * ((r >= a) & (r <= b)).to(r.dtype)
        negative = r * ((r >= -b) & (r <= -a)).to(r.dtype)
    else:
        positive = r.clamp(min=a, max=b) * (r >= 0).to(r.dtype)
        negative = r.clamp(min=-b, max=-a) * (r < 0).to(r.dtype)
    return torch.where(scale > 0, scale * (negative + positive), relevance)


def _centre_crop(t: Tensor, shape: torch.Size) -> Tensor:
    """The study's ``centre_crop_tensor``: drop ⌊d/2⌋ voxels in front and ⌈d/2⌉ behind on each axis."""
    index = []
    for size, wanted in zip(t.shape, shape):
        front = (size - wanted) // 2
        index.append(slice(front, front + wanted))
    return t[tuple(index)]


@contextlib.contextmanager
def _evaluated(model: nn.Module) -> Iterator[None]:
    """Eval mode for the propagation; the model's own mode is restored afterwards."""
    modes = {m: m.training for m in model.modules()}
    model.eval()
    try:
        yield
    finally:
        for m, training in modes.items():
            m.training = training


_BLOCK = (("conv1", nn.Conv3d), ("bn1", nn.BatchNorm3d), ("act1", (nn.LeakyReLU, nn.ReLU)),
          ("conv2", nn.Conv3d), ("bn2", nn.BatchNorm3d), ("act2", (nn.LeakyReLU, nn.ReLU)))
_HEAD = (("conv", nn.Conv3d), ("bn", nn.BatchNorm3d), ("relu", nn.ReLU))


def check_architecture(model: nn.Module, skip_slice: str = "study") -> None:
    """Refuse anything but the study's architecture with an :class:`ExplainError` naming what is missing."""
    def fail(what: str) -> ExplainError:
        return ExplainError(f"reference_lrp explains the study's architecture only (models.build('unet3d_reference', "
                            f"…) or models.from_reference_checkpoint): {type(model).__name__} {what}")

    def check_layers(owner: nn.Module, layout, where: str) -> None:
        for name, kind in layout:
            if not isinstance(getattr(owner, name, None), kind):
                raise fail(f"has no {where}.{name} of the study's kind")

    for name, count in (("encoders", 3), ("pools", 3), ("ups", 3), ("decoders", 3)):
        if not isinstance(getattr(model, name, None), nn.ModuleList) or len(getattr(model, name)) != count:
            raise fail(f"has no list of {count} {name}")
    for i in range(3):
        check_layers(model.encoders[i], _BLOCK, f"encoders.{i}")
        check_layers(model.decoders[i], _BLOCK, f"decoders.{i}")
        if not isinstance(model.pools[i], nn.MaxPool3d) or not isinstance(model.ups[i], nn.ConvTranspose3d):
            raise fail(f"has no max pooling pools.{i} and transposed convolution ups.{i}")
    if not isinstance(getattr(model, "bottom", None), nn.Module):
        raise fail("has no bottom block")
    check_layers(model.bottom, _BLOCK, "bottom")
    if not isinstance(getattr(model, "head", None), nn.Module):
        raise fail("has no head")
    check_layers(model.head, _HEAD, "head")
    for i in range(3):
        skip, up = model.encoders[i].conv2.out_channels, model.ups[i].out_channels
        if model.decoders[i].conv1.in_channels != skip + up:
            raise fail(f"has decoders.{i}.conv1 with {model.decoders[i].conv1.in_channels} inputs, not skip + up "
                       f"= {skip} + {up}")
        if skip_slice == "study" and up < skip:
            raise ExplainError(f"skip_slice='study' needs at least as many up-sampled as skip channels at level {i} "
                               f"({up} < {skip}): use skip_slice='corrected'")


class _Propagation:
    """One forward pass recorded (every layer's input), then relevance propagated per filter.

    With ``keep``, each layer's Z is kept after its first use, so a sweep computes it once.
    """

    def __init__(self, model: nn.Module, first_layer: str, factors: tuple[float, ...],
                 bounds: tuple[float, float], skip_slice: str, eps: float, keep: bool):
        self.model, self.first_layer, self.factors = model, first_layer, factors
        self.bounds, self.skip_slice, self.eps, self.keep = bounds, skip_slice, eps, keep
        self.inputs: dict[nn.Module, Tensor] = {}
        self.denominators: dict[nn.Module, object] = {}

    def record(self, x: Tensor) -> Tensor:
        """Run the model once, storing the input of every convolution, transposed convolution and pooling."""
        m = self.model
        layers = [m.head.conv, *m.pools, *m.ups]
        for block in (*m.encoders, m.bottom, *m.decoders):
            layers += [block.conv1, block.conv2]

        def store(module, args, _output):
            self.inputs[module] = args[0].detach()

        handles = [layer.register_forward_hook(store) for layer in layers]
        try:
            output = m(x)
        finally:
            for h in handles:
                h.remove()
        if output.shape[0] != x.shape[0] or output.shape[2:] != x.shape[2:]:
            raise ExplainError(f"the model maps {tuple(x.shape)} to {tuple(output.shape)}: reference_lrp needs the "
                               "output on the input grid")
        return output.detach()

    def relprop(self, output: Tensor, f: RelevanceFilter) -> Tensor:
        """``relprop_standard`` of the study, with filter ``f`` at its places (``post`` filters: none)."""
        def filt(t: Tensor) -> Tensor:
            return _study_filter(t, f) if f.mode == "layer" else t

        m = self.model
        relevance = filt(output)  # after the head's ReLU (a pass-through), then its BatchNorm (pass-through)
        relevance = filt(self._conv(m.head.conv, relevance))
        skip_relevance = [None, None, None]
        for level in range(3):  # decoders, outermost first (the study's cblocks7, 6, 5)
            joined = self._block(m.decoders[level], relevance)
            skip = m.encoders[level].conv2.out_channels
            relevance = filt(joined[:, skip:])
            sliced = relevance if self.skip_slice == "study" else joined
            skip_relevance[level] = filt(sliced[:, :skip])
            relevance = filt(self._transposed(m.ups[level], relevance))
        relevance = filt(self._block(m.bottom, relevance))
        for level, factor in zip((2, 1, 0), self.factors):  # encoders, deepest first
            pooled = self._pool(m.pools[level], relevance)
            skip = skip_relevance[level]
            relevance = factor * skip + (1 - factor) * _centre_crop(pooled, skip.shape)
            relevance = filt(self._block(m.encoders[level], relevance, first=level == 0))
        return relevance

    def _block(self, block: nn.Module, relevance: Tensor, first: bool = False) -> Tensor:
        """Activations and BatchNorms pass relevance; the two convolutions apply their rules."""
        relevance = self._conv(block.conv2, relevance)
        return self._first(block.conv1, relevance) if first else self._conv(block.conv1, relevance)

    def _denominator(self, layer: nn.Module, compute) -> Tensor:
        """A layer's Z (it does not depend on the relevance): computed once per forward pass in a sweep."""
        if not self.keep:
            return compute()
        if layer not in self.denominators:
            self.denominators[layer] = compute()
        return self.denominators[layer]

    def _conv(self, conv: nn.Conv3d, relevance: Tensor) -> Tensor:
        """The x · W⁺ rule: Z = X ⋆ W⁺ + ε, R_in = X ⊙ ((R / Z) ⋆ᵀ W⁺)."""
        x, w = self.inputs[conv], conv.weight.clamp(min=0)
        z = self._denominator(conv, lambda: F.conv3d(x, w, None, conv.stride, conv.padding, conv.dilation,
                                                     conv.groups) + self.eps)
        return x * self._conv_adjoint(conv, relevance / z, w, x)

    def _first(self, conv: nn.Conv3d, relevance: Tensor) -> Tensor:
        """The study's z^B variant: Z = X ⋆ W⁺ − L ⋆ W⁺ − H ⋆ V + ε, V = W⁻ (corrected) or W⁺ (published)."""
        x = self.inputs[conv]
        positive = conv.weight.clamp(min=0)
        v = conv.weight.clamp(max=0) if self.first_layer == "corrected" else positive
        low, high = torch.full_like(x, self.bounds[0]), torch.full_like(x, self.bounds[1])

        def forward(t, w):
            return F.conv3d(t, w, None, conv.stride, conv.padding, conv.dilation, conv.groups)

        z = self._denominator(conv, lambda: forward(x, positive) - forward(low, positive) - forward(high, v) + self.eps)
        s = relevance / z
        c = self._conv_adjoint(conv, s, positive, x)  # the study computes this adjoint twice, identically
        return x * c - low * c - high * self._conv_adjoint(conv, s, v, x)

    @staticmethod
    def _conv_adjoint(conv: nn.Conv3d, s: Tensor, w: Tensor, x: Tensor) -> Tensor:
        """S ⋆ᵀ W on the input grid of ``conv``."""
        return torch.nn.grad.conv3d_input(x.shape, w, s, conv.stride, conv.padding, conv.dilation, conv.groups)

    def _transposed(self, up: nn.ConvTranspose3d, relevance: Tensor) -> Tensor:
        """The x · W⁺ rule through a transposed convolution; the voxels its output lost to the crop get R = 0."""
        x, w = self.inputs[up], up.weight.clamp(min=0)
        z = self._denominator(up, lambda: F.conv_transpose3d(x, w, None, up.stride, up.padding, up.output_padding,
                                                             up.groups, up.dilation) + self.eps)
        full = relevance.new_zeros(z.shape)
        full[tuple(slice(0, n) for n in relevance.shape)] = relevance
        s = full / z
        return x * F.conv3d(s, w, None, up.stride, up.padding, up.dilation, up.groups)

    def _pool(self, pool: nn.MaxPool3d, relevance: Tensor) -> Tensor:
        """Z = maxpool(X) + 2ε, R_in = X ⊙ unpool(R / Z) onto the input grid."""
        x = self.inputs[pool]

        def compute():
            z, indices = F.max_pool3d(x, pool.kernel_size, pool.stride, pool.padding, pool.dilation,
                                      ceil_mode=pool.ceil_mode, return_indices=True)
            return z + self.eps + self.eps, indices

        z, indices = self._denominator(pool, compute)
        s = relevance / z
        return x * F.max_unpool3d(s, indices, pool.kernel_size, pool.stride, pool.padding, output_size=x.shape[2:])
