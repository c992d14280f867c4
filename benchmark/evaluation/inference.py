"""Inference with a PyTorch model at the training grid: the lesion probability of a batch."""

from __future__ import annotations

import torch
from torch import nn


def predict_probability(model: nn.Module, image: torch.Tensor, device: torch.device,
                        amp: bool = False) -> torch.Tensor:
    """Lesion probability (N, D, H, W) of a batch at the training grid, on the CPU."""
    model.eval()
    with torch.autocast(device.type, enabled=amp and device.type == "cuda"):
        logits = model(image.to(device))
    return torch.softmax(logits.float(), dim=1)[:, 1].cpu()
