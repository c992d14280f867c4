"""The study's own 3-D U-Net, module for module, and a loader for the weights its code saved.

:class:`ReferenceUNet3D` (registry name ``unet3d_reference``) is the ``UNet3D`` of the study's
public code (``models/networks.py``, ``models/networks_components.py``), so that its LRP maps can
be reproduced exactly (:mod:`explain.reference`). It differs from the project's ``unet3d`` in
four places, all as in the study: the 3×3×3 convolutions have biases; the transposed
convolutions have none; the skip tensor comes *first* in each concatenation; and the head is
1×1×1 convolution → BatchNorm3d → ReLU, so the network outputs non-negative scores. With six
modalities and features (32, 64, 128, 256, 512) it has 19,077,158 parameters, the study's count.

Input (N, C, D, H, W) with D the slice axis (the study's 48×48×19 volumes are (N, 6, 19, 48, 48)).
Pooling rounds odd sizes up (``ceil_mode``) and each up-sampled tensor loses its last voxels to
match its skip tensor; on the grids the study's network accepts (D = 8k + 3, H and W multiples
of 8) that is exactly its ``[:, :, :-1]`` crop of the first and third up-samplings, and every
other grid works too.
"""

from __future__ import annotations

import pickle
import warnings
import zipfile
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from explain.layers import Concat
from models.blocks import ConvBlock, crop_like
from models.errors import ModelFileError
from models.networks import STUDY_FEATURES, scaled

STUDY_DEBUG_FEATURES = (3, 4, 6, 8, 16)
"""The channel numbers of the study's debug-size network (its ``UNet3D_DEBUG`` switch)."""


def ReferenceBlock(in_channels: int, mid_channels: int, out_channels: int) -> ConvBlock:  # noqa: N802
    """The study's ``ConvBlocksUNet``: a :class:`~models.blocks.ConvBlock` whose convolutions have biases."""
    return ConvBlock(in_channels, mid_channels, out_channels, bias=True)


class ReferenceHead(nn.Sequential):
    """The study's output: 1×1×1 convolution → BatchNorm3d → ReLU (non-negative class scores)."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv = nn.Conv3d(in_channels, out_channels, 1)
        self.bn = nn.BatchNorm3d(out_channels)
        self.relu = nn.ReLU()


class ReferenceUNet3D(nn.Module):
    """The study's ``UNet3D``: features f = (f0 … f4), three levels, a bottom block and a head.

    Encoder blocks ``in→f0→f1``, ``f1→f1→f2``, ``f2→f2→f3``, each followed by 2×2×2 max pooling
    (stride 2, ``ceil_mode``); bottom block ``f3→f3→f4``; decoder level l: 2×2×2 transposed
    convolution (stride 2, no bias, same channels), concatenation ``(skip, up)`` and block
    ``(f_{l+1} + f_{l+2})→f_{l+1}→f_{l+1}``; head ``f1 → out_channels``. Weights are initialised
    as the study's ``_init_weight`` does: Kaiming-normal for every Conv3d, PyTorch defaults otherwise.

    Args:
        in_channels: input modalities C (the study: 6).
        out_channels: classes (the study: 2).
        width: multiplier of the study's features (32, 64, 128, 256, 512); ignored with ``features``.
        features: five channel numbers, e.g. :data:`STUDY_DEBUG_FEATURES`.
    """

    NAME = "unet3d_reference"
    """The registry name (:mod:`models.registry`)."""

    def __init__(self, in_channels: int = 6, out_channels: int = 2, width: float = 1.0,
                 features: tuple[int, ...] | list[int] | None = None):
        super().__init__()
        if in_channels < 1 or out_channels < 1:
            raise ValueError(f"in_channels ({in_channels}) and out_channels ({out_channels}) must be >= 1")
        if features is None:
            if width <= 0:
                raise ValueError(f"width must be positive, got {width}")
            features = scaled(STUDY_FEATURES, width)
        f = tuple(int(c) for c in features)
        if len(f) != 5 or min(f) < 1:
            raise ValueError(f"features must be five channel numbers >= 1, got {list(features)}")
        self.features = f
        self.encoders = nn.ModuleList([ReferenceBlock(in_channels, f[0], f[1]), ReferenceBlock(f[1], f[1], f[2]),
                                       ReferenceBlock(f[2], f[2], f[3])])
        self.pools = nn.ModuleList([nn.MaxPool3d(2, stride=2, ceil_mode=True) for _ in range(3)])
        self.bottom = ReferenceBlock(f[3], f[3], f[4])
        skips, coarse = (f[1], f[2], f[3]), (f[2], f[3], f[4])
        self.ups = nn.ModuleList([nn.ConvTranspose3d(c, c, 2, stride=2, bias=False) for c in coarse])
        self.concats = nn.ModuleList([Concat() for _ in skips])
        self.decoders = nn.ModuleList([ReferenceBlock(s + c, s, s) for s, c in zip(skips, coarse)])
        self.head = ReferenceHead(f[1], out_channels)
        for module in self.modules():
            if isinstance(module, nn.Conv3d):
                nn.init.kaiming_normal_(module.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for encoder, pool in zip(self.encoders, self.pools):
            x = encoder(x)
            skips.append(x)
            x = pool(x)
        x = self.bottom(x)
        for level in reversed(range(3)):
            up = crop_like(self.ups[level](x), skips[level])
            x = self.decoders[level](self.concats[level](skips[level], up))
        return self.head(x)


# The study's module names: (its prefix, our prefix) for the blocks, then the single layers.
_STUDY_BLOCKS = (("cblocks1.{kind}_1_{i}", "encoders.0"), ("cblocks2.{kind}_2_{i}", "encoders.1"),
                 ("cblocks3.{kind}_3_{i}", "encoders.2"), ("cblocks4.{kind}_4_{i}", "bottom"),
                 ("cblocks5.{kind}_3b_{i}", "decoders.2"), ("cblocks6.{kind}_2b_{i}", "decoders.1"),
                 ("cblocks7.{kind}_1b_{i}", "decoders.0"))
_STUDY_LAYERS = (("deconv1", "ups.2"), ("deconv2", "ups.1"), ("deconv3", "ups.0"), ("convf", "head.conv"),
                 ("bn", "head.bn"))


def study_key_map() -> dict[str, str]:
    """The study's module prefixes → ours (``cblocks1.conv_1_0`` → ``encoders.0.conv1``, …)."""
    mapping = {}
    for study, ours in _STUDY_BLOCKS:
        for i in range(2):
            mapping[study.format(kind="conv", i=i)] = f"{ours}.conv{i + 1}"
            mapping[study.format(kind="bn3d", i=i)] = f"{ours}.bn{i + 1}"
    mapping.update(_STUDY_LAYERS)
    return mapping


def _read_state_dict(source: str | Path | Mapping, label: str) -> dict[str, torch.Tensor]:
    if isinstance(source, Mapping):
        return dict(source)
    path = Path(source)
    if not path.is_file():
        raise ModelFileError(f"{label}: no such file; give the state dict the study's save_models wrote "
                             "(<model_label_name>.<epoch>.model) or a state dict")
    try:
        with warnings.catch_warnings():  # torch warns about a plain pickle's protocol before refusing it
            warnings.simplefilter("ignore", UserWarning)
            state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, zipfile.BadZipFile) as exc:
        raise ModelFileError(
            f"{label} is not a state dict saved with torch.save ({type(exc).__name__}). The study writes two "
            "files: <name>.model is the whole network pickled (it needs the study's code to unpickle), "
            "<name>.<epoch>.model is torch.save(state_dict()): load that one, or in the study's environment "
            "save torch.save(net.state_dict(), path)") from None
    if not isinstance(state, Mapping):
        raise ModelFileError(f"{label} holds a {type(state).__name__}, not a state dict of the study's UNet3D")
    return dict(state)


def from_reference_checkpoint(source: str | Path | Mapping) -> ReferenceUNet3D:
    """Load weights saved by the study's code into :class:`ReferenceUNet3D` (in eval mode).

    The architecture is read off the weights: in_channels from ``cblocks1.conv_1_0.weight``,
    features from each block's output channels, classes from ``convf.weight``. A leading
    ``module.`` (a ``DataParallel`` save) is removed.

    Args:
        source: a file written by the study's ``save_models`` (``<name>.<epoch>.model``, a state
            dict written with ``torch.save``) or the state dict itself.

    Returns:
        The model with those weights and ``build_config`` set, in eval mode.

    Raises:
        ModelFileError: the file is missing or not a state dict, or the weights are not those of the
            study's ``UNet3D`` (missing, unexpected or mis-shaped tensors; its ``UNet3Db`` lens).
    """
    label = "the state dict" if isinstance(source, Mapping) else f"'{source}'"
    state = _read_state_dict(source, label)
    if state and all(isinstance(k, str) and k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    prefixes = study_key_map()
    ours, unknown = {}, []
    for key, value in state.items():
        prefix, _, leaf = str(key).rpartition(".")
        if prefix in prefixes:
            ours[f"{prefixes[prefix]}.{leaf}"] = value
        else:
            unknown.append(str(key))
    if any(k.startswith("lens.") for k in unknown):
        raise ModelFileError(f"{label} holds the study's UNet3Db (it has lens.* weights); unet3d_reference "
                             "reproduces its UNet3D only")
    if unknown:
        raise ModelFileError(f"{label} is not a state dict of the study's UNet3D: unexpected "
                             f"{', '.join(sorted(unknown)[:4])}{' …' if len(unknown) > 4 else ''}")
    try:
        in_channels = int(ours["encoders.0.conv1.weight"].shape[1])
        out_channels = int(ours["head.conv.weight"].shape[0])
        features = [int(ours[f"{name}.weight"].shape[0]) for name in
                    ("encoders.0.conv1", "encoders.0.conv2", "encoders.1.conv2", "encoders.2.conv2", "bottom.conv2")]
    except KeyError as exc:
        raise ModelFileError(f"{label} is not a state dict of the study's UNet3D: it lacks "
                             f"{_study_name(exc.args[0])}") from None
    model = ReferenceUNet3D(in_channels, out_channels, features=features)
    expected = set(model.state_dict())
    missing = sorted(expected - set(ours))
    if missing:
        raise ModelFileError(f"{label} is not a state dict of the study's UNet3D: it lacks "
                             f"{', '.join(_study_name(k) for k in missing[:4])}{' …' if len(missing) > 4 else ''}")
    try:
        model.load_state_dict(ours, strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[-1].strip()
        raise ModelFileError(f"{label} does not fit the study's UNet3D with in_channels={in_channels}, "
                             f"features={features}: {first}") from None
    model.build_config = {"name": ReferenceUNet3D.NAME, "in_channels": in_channels,
                          "out_channels": out_channels, "features": features}
    return model.eval()


def _study_name(key: str) -> str:
    """Our parameter name → the study's (for error messages)."""
    prefix, _, leaf = key.rpartition(".")
    inverse = {ours: study for study, ours in study_key_map().items()}
    return f"{inverse.get(prefix, prefix)}.{leaf}"
