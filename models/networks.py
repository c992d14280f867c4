"""3-D segmentation networks: the study's U-Net and the families users compare it with.

All take (N, C, D, H, W) float32 of any spatial size and return (N, out_channels, D, H, W) logits:
down-sampling rounds odd sizes up (``ceil_mode`` pooling, stride-2 convolutions with padding) and
each up-sampled tensor is cropped to its skip tensor, so nothing is padded. (Padding the input
would hand part of the relevance to padded voxels, which are not data.)
"""

from __future__ import annotations

import torch
from torch import nn

from explain.layers import Add, Concat
from models.blocks import (
    AttentionGate,
    ConvBlock,
    InputLens,
    PreActResidualBlock,
    ResidualBlock,
    conv3,
    crop_like,
)

STUDY_FEATURES = (32, 64, 128, 256, 512)
"""The study's channel numbers at full width (≈19.1 M parameters for six input modalities)."""


def scaled(features: tuple[int, ...], width: float) -> tuple[int, ...]:
    """Channel numbers times a width multiplier, rounded, at least 2."""
    return tuple(max(2, round(f * width)) for f in features)


class UNet3D(nn.Module):
    """The study's 3-D U-Net (Çiçek et al. 2016 layout), with optional lens, residual blocks, gates.

    Encoder: level blocks ``in→f0→f1``, ``f1→f1→f2``, ``f2→f2→f3`` each followed by 2×2×2 max
    pooling, bottom ``f3→f3→f4``. Decoder: 2×2×2 transposed convolution (same channels), skip
    concatenation (through an attention gate if asked), block ``(up + skip)→skip→skip``; a
    1×1×1 convolution gives the logits. Input size: any.

    Args:
        in_channels: input modalities C.
        out_channels: classes (2: background, lesion).
        width: multiplier of :data:`STUDY_FEATURES` (1.0 is the study's network).
        block: ``conv`` (the study's double convolution) or ``residual``.
        attention: gate every skip connection with an :class:`AttentionGate`.
        lens: put an :class:`InputLens` in front (the study's ``unet3d_lens``).
    """

    def __init__(self, in_channels: int, out_channels: int = 2, width: float = 1.0, block: str = "conv",
                 attention: bool = False, lens: bool = False):
        super().__init__()
        if in_channels < 1 or out_channels < 1:
            raise ValueError(f"in_channels ({in_channels}) and out_channels ({out_channels}) must be >= 1")
        if width <= 0:
            raise ValueError(f"width must be positive, got {width}")
        if block not in ("conv", "residual"):
            raise ValueError(f"block must be 'conv' or 'residual', got {block!r}")
        make = ConvBlock if block == "conv" else ResidualBlock
        f = scaled(STUDY_FEATURES, width)
        self.lens = InputLens(in_channels) if lens else nn.Identity()
        self.encoders = nn.ModuleList([make(in_channels, f[0], f[1]), make(f[1], f[1], f[2]),
                                       make(f[2], f[2], f[3])])
        self.pools = nn.ModuleList([nn.MaxPool3d(2, ceil_mode=True) for _ in range(3)])
        self.bottom = make(f[3], f[3], f[4])
        skips, coarse = (f[1], f[2], f[3]), (f[2], f[3], f[4])
        self.ups = nn.ModuleList([nn.ConvTranspose3d(c, c, 2, stride=2) for c in coarse])
        self.gates = nn.ModuleList([AttentionGate(s, c, max(1, s // 2)) for s, c in zip(skips, coarse)]
                                   if attention else [nn.Identity() for _ in skips])
        self.concats = nn.ModuleList([Concat() for _ in skips])
        self.decoders = nn.ModuleList([make(c + s, s, s) for s, c in zip(skips, coarse)])
        self.head = nn.Conv3d(f[1], out_channels, 1)
        self.attention = attention

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.lens(x)
        skips = []
        for encoder, pool in zip(self.encoders, self.pools):
            x = encoder(x)
            skips.append(x)
            x = pool(x)
        x = self.bottom(x)
        for level in reversed(range(3)):
            skip = self.gates[level](skips[level], x) if self.attention else skips[level]
            up = crop_like(self.ups[level](x), skip)
            x = self.decoders[level](self.concats[level](up, skip))
        return self.head(x)


class SegResNet3D(nn.Module):
    """A SegResNet-like encoder-decoder (Myronenko 2018) with BatchNorm, so LRP can explain it.

    Stem 3×3×3 convolution to ``f``; four stages of pre-activation residual blocks at ``f, 2f, 4f,
    8f`` channels joined by stride-2 convolutions; the decoder upsamples with 2×2×2 transposed
    convolutions, adds the encoder's skip and refines with a residual block; BN → ReLU → 1×1×1
    convolution gives the logits. Input size: any.

    Args:
        in_channels: input modalities C.
        out_channels: classes.
        width: ``f = round(32 × width)``.
        blocks_down: residual blocks per encoder stage.
    """

    def __init__(self, in_channels: int, out_channels: int = 2, width: float = 1.0,
                 blocks_down: tuple[int, ...] = (1, 2, 2, 4)):
        super().__init__()
        if width <= 0:
            raise ValueError(f"width must be positive, got {width}")
        if len(blocks_down) != 4 or min(blocks_down) < 1:
            raise ValueError(f"blocks_down must be four counts >= 1, got {blocks_down}")
        f = max(2, round(32 * width))
        channels = [f, 2 * f, 4 * f, 8 * f]
        self.stem = conv3(in_channels, f)
        self.downs = nn.ModuleList([nn.Identity()] + [conv3(channels[i - 1], channels[i], stride=2)
                                                       for i in range(1, 4)])
        self.stages = nn.ModuleList([nn.Sequential(*[PreActResidualBlock(c) for _ in range(n)])
                                     for c, n in zip(channels, blocks_down)])
        self.ups = nn.ModuleList([nn.ConvTranspose3d(channels[i + 1], channels[i], 2, stride=2)
                                  for i in range(3)])
        self.adds = nn.ModuleList([Add() for _ in range(3)])
        self.refines = nn.ModuleList([PreActResidualBlock(channels[i]) for i in range(3)])
        self.head = nn.Sequential(nn.BatchNorm3d(f), nn.ReLU(), nn.Conv3d(f, out_channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        skips = []
        for down, stage in zip(self.downs, self.stages):
            x = stage(down(x))
            skips.append(x)
        x = skips.pop()
        for level in reversed(range(3)):
            up = crop_like(self.ups[level](x), skips[level])
            x = self.refines[level](self.adds[level](up, skips[level]))
        return self.head(x)
