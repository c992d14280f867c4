"""Baseline attributions, one class per method with one signature (as Captum's).

``Method(model, **settings).attribute(x, target=None)`` returns relevance with x's shape; the
model is expected in eval mode without parameter gradients (``explain.attribute`` does that with
:func:`explain.targets.frozen`). ``target`` as in :mod:`explain.targets`; ``f`` below is the
sum of the explained lesion logits.

* ``gradient``: ∂f/∂x (target from the same forward pass);
* ``gradient_x_input``: x ⊙ ∂f/∂x (equals LRP-ε as ε → 0 in a ReLU network without biases);
* ``integrated_gradients``: x ⊙ mean_k ∂f/∂x (k/m · x), k = 1 … m (``steps`` m = 16, zero
  baseline, right Riemann sum; Sundararajan et al. 2017);
* ``smoothgrad``: mean gradient over ``samples`` = 8 noisy copies, σ = 0.15 × the input range
  (Smilkov et al. 2017);
* ``random``: uniform noise in [0, 1), the floor every method must beat;
* ``prediction``: the model's own lesion probability ``softmax(logits)_1`` copied to every input
  channel, a reference that shows the prediction and explains nothing (no modality, no structure
  beyond the output). Any localisation metric against the lesion mask rewards it, because a good
  segmenter's output *is* the lesion: a method worth its cost must rank above it. It needs a model
  whose output has the input's spatial shape (a segmenter); ``target`` is ignored.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from explain.errors import ExplainError
from explain.targets import target_mask

Tensor = torch.Tensor


def _gradient(model: nn.Module, x: Tensor, mask_fn: Callable[[Tensor], Tensor]) -> Tensor:
    xg = x.clone().requires_grad_(True)
    logits = model(xg)
    mask = mask_fn(logits.detach())
    (gradient,) = torch.autograd.grad(logits[:, 1], xg, mask)
    return gradient


class Attribution:
    """Base class: ``attribute(x, target=None)`` → relevance with x's shape, detached."""

    def __init__(self, model: nn.Module):
        self.model = model

    def attribute(self, x: Tensor, target=None) -> Tensor:
        """Relevance of each input element for ``target`` (:mod:`explain.targets`)."""
        raise NotImplementedError

    def _fixed_mask(self, x: Tensor, target) -> Callable[[Tensor], Tensor]:
        """The explained positions of the unperturbed input, for every perturbed forward pass."""
        with torch.no_grad():
            mask = target_mask(self.model(x), target)
        return lambda _logits: mask


class Gradient(Attribution):
    """∂f/∂x."""

    def attribute(self, x, target=None):
        return _gradient(self.model, x, lambda logits: target_mask(logits, target)).detach()


class GradientXInput(Attribution):
    """x ⊙ ∂f/∂x."""

    def attribute(self, x, target=None):
        return x * Gradient(self.model).attribute(x, target)


class IntegratedGradients(Attribution):
    """x ⊙ the mean gradient along the straight path from 0 to x (``steps`` points)."""

    def __init__(self, model: nn.Module, steps: int = 16):
        super().__init__(model)
        self.steps = steps

    def attribute(self, x, target=None):
        fixed = self._fixed_mask(x, target)
        total = torch.zeros_like(x)
        for k in range(1, self.steps + 1):
            total += _gradient(self.model, x * (k / self.steps), fixed)
        return (x * total / self.steps).detach()


class SmoothGrad(Attribution):
    """The mean gradient over ``samples`` copies of x with Gaussian noise σ = ``noise`` × (max x − min x)."""

    def __init__(self, model: nn.Module, samples: int = 8, noise: float = 0.15, seed: int = 0):
        super().__init__(model)
        self.samples, self.noise, self.seed = samples, noise, seed

    def attribute(self, x, target=None):
        fixed = self._fixed_mask(x, target)
        generator = torch.Generator().manual_seed(self.seed)
        sigma = self.noise * float(x.max() - x.min())
        total = torch.zeros_like(x)
        for _ in range(self.samples):
            total += _gradient(self.model, x + sigma * torch.randn(x.shape, generator=generator), fixed)
        return (total / self.samples).detach()


class RandomAttribution(Attribution):
    """Uniform noise in [0, 1) with x's shape (float32): the floor."""

    def __init__(self, model: nn.Module, seed: int = 0):
        super().__init__(model)
        self.seed = seed

    def attribute(self, x, target=None):
        return torch.rand(x.shape, generator=torch.Generator().manual_seed(self.seed))


class PredictionAttribution(Attribution):
    """The predicted lesion probability ``softmax(logits)[:, 1]`` in every channel of x (a reference, not a method)."""

    def attribute(self, x, target=None):
        with torch.no_grad():
            logits = self.model(x)
        if logits.shape[2:] != x.shape[2:]:
            raise ExplainError(f"the prediction baseline needs an output on the input's grid: the model maps "
                               f"{tuple(x.shape[2:])} to {tuple(logits.shape[2:])}; use another method")
        probability = torch.softmax(logits.float(), dim=1)[:, 1:2]
        return probability.expand(-1, x.shape[1], *([-1] * (x.dim() - 2))).contiguous().to(
            x.dtype if x.is_floating_point() else torch.float32)


BASELINES: dict[str, type[Attribution]] = {
    "gradient": Gradient, "gradient_x_input": GradientXInput, "integrated_gradients": IntegratedGradients,
    "smoothgrad": SmoothGrad, "random": RandomAttribution, "prediction": PredictionAttribution,
}
"""Method name → attribution class."""
