"""Architecture registry: names → constructors, and the build configuration saved with weights.

``build(name, in_channels, out_channels=2, **hparams)`` returns a model whose
``build_config`` (a JSON-serialisable dict) rebuilds it with :func:`build_from_config`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from torch import nn

from models.errors import ModelParameterError
from models.networks import SegResNet3D, UNet3D
from models.reference import ReferenceUNet3D


@dataclass(frozen=True)
class Architecture:
    """A registry entry: a constructor, its fixed arguments, and a one-line description."""

    constructor: Callable[..., nn.Module]
    fixed: dict = field(default_factory=dict)
    description: str = ""
    hparams: tuple[str, ...] = ("width",)


REGISTRY: dict[str, Architecture] = {
    "unet3d": Architecture(UNet3D, {}, "the study's 3-D U-Net (Çiçek layout, 19.1 M parameters at width 1)"),
    "unet3d_lens": Architecture(UNet3D, {"lens": True}, "the study's U-Net behind a learned input lens"),
    "resunet3d": Architecture(UNet3D, {"block": "residual"}, "U-Net with residual blocks (additions)"),
    "attention_unet3d": Architecture(UNet3D, {"attention": True},
                                     "U-Net with attention-gated skips (multiplicative gates)"),
    "segresnet3d": Architecture(SegResNet3D, {}, "SegResNet-like residual encoder-decoder with BatchNorm"),
    ReferenceUNet3D.NAME: Architecture(ReferenceUNet3D, {}, "the study's own UNet3D, module for module (its LRP)",
                                       ("width", "features")),
}


def available() -> list[str]:
    """Names of the registered architectures."""
    return list(REGISTRY)


def build(name: str, in_channels: int, out_channels: int = 2, **hparams) -> nn.Module:
    """Build a registered architecture.

    Args:
        name: one of :func:`available`.
        in_channels: input modalities C.
        out_channels: classes (default 2: background, lesion).
        **hparams: architecture hyper-parameters; every family takes ``width`` (default 1.0).

    Returns:
        The model, with ``model.build_config`` set.

    Raises:
        ModelParameterError: unknown name or hyper-parameter, or an invalid value.
    """
    if name not in REGISTRY:
        raise ModelParameterError(f"architecture '{name}' is unknown: choose one of {', '.join(REGISTRY)}")
    entry = REGISTRY[name]
    unknown = sorted(set(hparams) - set(entry.hparams))
    if unknown:
        raise ModelParameterError(f"architecture '{name}' takes no hyper-parameter {', '.join(unknown)}: "
                             f"use {', '.join(entry.hparams)}")
    try:
        model = entry.constructor(in_channels, out_channels, **entry.fixed, **hparams)
    except ValueError as exc:
        raise ModelParameterError(f"architecture '{name}': {exc}") from exc
    model.build_config = {"name": name, "in_channels": int(in_channels),
                          "out_channels": int(out_channels), **hparams}
    return model


def build_from_config(config: dict) -> nn.Module:
    """Rebuild a model from its ``build_config``."""
    config = dict(config)
    return build(config.pop("name"), config.pop("in_channels"), config.pop("out_channels", 2), **config)


def parameter_count(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
