"""Inference with a PyTorch model: the lesion probability of a batch, whole or by sliding windows."""

from __future__ import annotations

import torch
from torch import nn

from inferers import SlidingWindow, sliding_window


def predict_probability(model: nn.Module, image: torch.Tensor, device: torch.device,
                        amp: bool = False, window: SlidingWindow | None = None) -> torch.Tensor:
    """Lesion probability (N, D, H, W) of a batch, on the CPU.

    ``window`` None runs the whole volume at once (the ``seed`` grid); otherwise the logits of Gaussian-weighted
    sliding windows are stitched (:func:`inferers.sliding_window`, as nnU-Net does) and then soft-maxed.
    """
    model.eval()
    image = image.to(device)
    with torch.no_grad(), torch.autocast(device.type, enabled=amp and device.type == "cuda"):
        logits = model(image) if window is None else sliding_window(image, lambda b: model(b).float(), window)
    return torch.softmax(logits.float(), dim=1)[:, 1].cpu()
