"""Reusable building blocks, made only of layers the LRP engine explains.

Every operation that combines tensors is one of the engine's combinator layers
(:mod:`explain.layers`: ``Concat``, ``Add``, ``Multiply``, ``Upsample``), so an explanation rule
is attached to it the same way as to a convolution; ``forward`` methods only call submodules.
The two gates (:class:`AttentionGate`, :class:`InputLens`) declare the engine's gate protocol
(``explain_gate = True``): their output is the signal times a gate, and LRP gives all of its
relevance to the signal.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from explain.layers import Add, Multiply, Upsample

NEGATIVE_SLOPE = 0.2
"""The study's LeakyReLU slope."""


def conv3(in_channels: int, out_channels: int, stride: int = 1, bias: bool = False) -> nn.Conv3d:
    """3×3×3 convolution, 'same' padding, no bias by default (a BatchNorm follows)."""
    return nn.Conv3d(in_channels, out_channels, 3, stride=stride, padding=1, bias=bias)


class ConvBlock(nn.Sequential):
    """The study's level: (Conv3d 3×3×3 → BatchNorm3d → LeakyReLU(0.2)) twice.

    Args:
        in_channels: input channels.
        mid_channels: channels after the first convolution.
        out_channels: channels after the second convolution.
        bias: convolutions with a bias (the study's own code has one; redundant before BatchNorm).
    """

    def __init__(self, in_channels: int, mid_channels: int, out_channels: int, bias: bool = False):
        super().__init__()
        self.conv1 = conv3(in_channels, mid_channels, bias=bias)
        self.bn1 = nn.BatchNorm3d(mid_channels)
        self.act1 = nn.LeakyReLU(NEGATIVE_SLOPE)
        self.conv2 = conv3(mid_channels, out_channels, bias=bias)
        self.bn2 = nn.BatchNorm3d(out_channels)
        self.act2 = nn.LeakyReLU(NEGATIVE_SLOPE)


class ResidualBlock(nn.Module):
    """conv-BN-act-conv-BN plus a (1×1×1 conv + BN projected) shortcut, summed, then act.

    Args:
        in_channels: input channels.
        mid_channels: channels after the first convolution.
        out_channels: output channels.
    """

    def __init__(self, in_channels: int, mid_channels: int, out_channels: int):
        super().__init__()
        self.conv1 = conv3(in_channels, mid_channels)
        self.bn1 = nn.BatchNorm3d(mid_channels)
        self.act1 = nn.LeakyReLU(NEGATIVE_SLOPE)
        self.conv2 = conv3(mid_channels, out_channels)
        self.bn2 = nn.BatchNorm3d(out_channels)
        if in_channels == out_channels:
            self.shortcut = nn.Identity()
        else:
            self.shortcut = nn.Sequential(nn.Conv3d(in_channels, out_channels, 1, bias=False),
                                          nn.BatchNorm3d(out_channels))
        self.add = Add()
        self.act2 = nn.LeakyReLU(NEGATIVE_SLOPE)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = self.bn2(self.conv2(self.act1(self.bn1(self.conv1(x)))))
        return self.act2(self.add(residual, self.shortcut(x)))


class PreActResidualBlock(nn.Module):
    """SegResNet's block: (BN → ReLU → conv) twice plus the identity, summed.

    Args:
        channels: input and output channels.
    """

    def __init__(self, channels: int):
        super().__init__()
        self.bn1 = nn.BatchNorm3d(channels)
        self.act1 = nn.ReLU()
        self.conv1 = conv3(channels, channels)
        self.bn2 = nn.BatchNorm3d(channels)
        self.act2 = nn.ReLU()
        self.conv2 = conv3(channels, channels)
        self.add = Add()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv1(self.act1(self.bn1(x)))
        y = self.conv2(self.act2(self.bn2(y)))
        return self.add(y, x)


class AttentionGate(nn.Module):
    """Additive attention gate (Oktay et al. 2018) on a skip connection.

    ``α = σ(ψ(ReLU(BN(W_x x) + BN(W_g up(g)))))``, output ``x × α`` with one gate per voxel.

    Args:
        skip_channels: channels of the skip tensor ``x``.
        gate_channels: channels of the coarser gating tensor ``g``.
        inter_channels: channels of the joint embedding.
    """

    explain_gate: ClassVar[bool] = True  # signal x, gate α: relevance goes to x (explain.layers.Gate)

    def __init__(self, skip_channels: int, gate_channels: int, inter_channels: int):
        super().__init__()
        self.theta = nn.Sequential(nn.Conv3d(skip_channels, inter_channels, 1, bias=False),
                                   nn.BatchNorm3d(inter_channels))
        self.phi = nn.Sequential(nn.Conv3d(gate_channels, inter_channels, 1, bias=False),
                                 nn.BatchNorm3d(inter_channels))
        self.upsample = Upsample()
        self.add = Add()
        self.act = nn.ReLU()
        self.psi = nn.Sequential(nn.Conv3d(inter_channels, 1, 1), nn.Sigmoid())
        self.gate = Multiply()

    def forward(self, x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        joint = self.act(self.add(self.theta(x), self.upsample(self.phi(g), x)))
        return self.gate(x, self.psi(joint))


class InputLens(nn.Module):
    """The study's learned input "lens": a voxel-wise gate on the input modalities.

    ``x × σ(conv1×1×1(x))``: one gate per modality and voxel, initialised near 1 so training
    starts from the plain network.

    Args:
        channels: number of input modalities.
    """

    explain_gate: ClassVar[bool] = True  # signal x, gate σ(conv(x)): relevance goes to x (explain.layers.Gate)

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv3d(channels, channels, 1)
        self.sigmoid = nn.Sigmoid()
        self.gate = Multiply()
        nn.init.zeros_(self.conv.weight)
        nn.init.constant_(self.conv.bias, 3.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.gate(x, self.sigmoid(self.conv(x)))


def crop_like(x: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Crop D, H, W of an upsampled tensor to the size of its skip tensor (odd grids round up)."""
    d, h, w = reference.shape[2:]
    return x[:, :, :d, :h, :w]
