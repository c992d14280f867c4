"""What is explained, and the model's state while it is explained.

The output is logits (N, K, *spatial) with class 1 the lesion (K ≥ 2, any spatial rank, none for a
classifier: (N, K)). ``target`` says which class-1 logits are explained:

* ``None`` / ``"lesion"`` (default): the lesion-class logits at the positions predicted as lesion
  (argmax); when a sample has no predicted lesion position, its most lesion-like one (largest
  ``logit₁ − logit₀``); for a classifier, class 1 of each sample;
* ``"map"``: the lesion-class logits of the whole output map (the study's choice);
* a boolean mask (*spatial) or (N, *spatial): the lesion-class logits inside it;
* a position ``(d, h, w)`` (one integer per spatial axis): that position's lesion-class logit.

The relevance put on the output before propagation is the explained logits themselves, zero
elsewhere and on every other class (:func:`initial_relevance`); its sum per sample is the
explained target (:func:`explained_target`), which conservative methods' input relevance sums to.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import numpy as np
import torch
from torch import nn

from explain.errors import ExplainError

Tensor = torch.Tensor


def _check_logits(logits: Tensor) -> None:
    if logits.dim() < 2 or logits.shape[1] < 2:
        raise ExplainError(f"the model's output has shape {tuple(logits.shape)}: the engine explains logits "
                           "(N, K, *spatial) with K >= 2 classes, class 1 the lesion")


def target_mask(logits: Tensor, target=None) -> Tensor:
    """(N, *spatial) float mask of the lesion-class logits to explain (module docstring)."""
    _check_logits(logits)
    n, grid = logits.shape[0], tuple(logits.shape[2:])
    if target is None or (isinstance(target, str) and target == "lesion"):
        mask = (logits.argmax(dim=1) == 1).to(logits.dtype)
        for i in range(n):
            if mask[i].sum() == 0:
                flat = int(torch.argmax(logits[i, 1] - logits[i, 0]))
                mask[i].view(-1)[flat] = 1.0
        return mask
    if isinstance(target, str):
        if target == "map":
            return torch.ones(n, *grid, dtype=logits.dtype)
        raise ExplainError(f"target '{target}' is unknown: use lesion, map, a mask or a voxel (d, h, w)")
    if (isinstance(target, tuple | list) and grid and len(target) == len(grid)
            and all(isinstance(v, int | np.integer) for v in target)):
        if not all(0 <= v < s for v, s in zip(target, grid)):
            raise ExplainError(f"target voxel {tuple(target)} lies outside the grid {grid}")
        mask = torch.zeros(n, *grid, dtype=logits.dtype)
        mask[(slice(None), *target)] = 1.0
        return mask
    mask = torch.as_tensor(np.asarray(target) if not isinstance(target, Tensor) else target)
    if mask.dim() == len(grid):
        mask = mask.unsqueeze(0).expand(n, *mask.shape)
    if tuple(mask.shape) != (n, *grid):
        raise ExplainError(f"target mask has shape {tuple(mask.shape)} but the output grid is {(n, *grid)} "
                           f"(or {grid}): give a mask on the model's input grid")
    return mask.to(logits.dtype)


def initial_relevance(logits: Tensor, mask: Tensor) -> Tensor:
    """Relevance on the output: the lesion logit inside the mask, zero elsewhere and on other classes."""
    relevance = torch.zeros_like(logits)
    relevance[:, 1] = logits[:, 1] * mask
    return relevance


def explained_target(logits: Tensor, mask: Tensor) -> Tensor:
    """(N,): the sum of the explained lesion logits of each sample."""
    return (logits[:, 1] * mask).reshape(len(logits), -1).sum(1)


@contextlib.contextmanager
def frozen(model: nn.Module) -> Iterator[nn.Module]:
    """Eval mode and no parameter gradients for the block; the model's state comes back after."""
    modes = [(m, m.training) for m in model.modules()]
    flags = [p.requires_grad for p in model.parameters()]
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    try:
        yield model
    finally:
        for p, flag in zip(model.parameters(), flags):
            p.requires_grad_(flag)
        for module, training in modes:
            module.train(training)


def check_input(x: Tensor) -> Tensor:
    """``x`` detached, as float32 or float64: (N, C, *spatial) or (N, F)."""
    if not isinstance(x, Tensor) or x.dim() < 2:
        raise ExplainError(f"x must be a (N, C, D, H, W) tensor (or (N, C, *spatial)), "
                           f"got {getattr(x, 'shape', type(x))}")
    return x.detach() if x.dtype in (torch.float32, torch.float64) else x.detach().float()
