"""The compute backend of the rules: a layer's linear map and its adjoint, and the CPU oneDNN dispatch.

The rules only ever need two operations of a layer with (modified) parameters θ: its linear map
``f(x; θ)`` (:func:`layer_forward`) and the adjoint ``Jᵀ s`` of that map (:class:`Adjoint`, the
input gradient). Both are defined here for every layer the rules cover
(:data:`LINEAR_LAYERS`: ``Linear``, ``Conv1d/2d/3d``, ``ConvTranspose1d/2d/3d``), any padding
mode, stride, dilation and groups.

The speed trick lives here and only here: PyTorch's CPU dispatch sends a batch-1 3-D convolution
with few channels (N·C·D·H ≤ 20480, 3-wide kernels, one group) to its native kernel, which on
the study's 48×48×19 volumes is 5–15× slower than oneDNN. :func:`conv3d` calls oneDNN directly,
:class:`Adjoint` runs a stride-1 3-D convolution's adjoint as a oneDNN convolution with the
flipped kernel, and :func:`accelerated` swaps the forward of a model's 3-D convolutions for the
same dispatch while an explanation runs (undone on exit). Results agree with PyTorch's to float
rounding (about 1e-6 relative); other ranks and devices use PyTorch's own functions.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

Tensor = torch.Tensor

CONVOLUTIONS: tuple[type[nn.Module], ...] = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
TRANSPOSED: tuple[type[nn.Module], ...] = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
LINEAR_LAYERS: tuple[type[nn.Module], ...] = (nn.Linear, *CONVOLUTIONS, *TRANSPOSED)
"""The layers with parameters whose rules modify them (weight (out, in, …) or (in, out, …))."""

_CONV = {1: F.conv1d, 2: F.conv2d, 3: None}  # 3: :func:`conv3d`
_CONV_TRANSPOSE = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}
_CONV_INPUT_GRAD = {1: torch.nn.grad.conv1d_input, 2: torch.nn.grad.conv2d_input, 3: torch.nn.grad.conv3d_input}


def has_weights(module: nn.Module) -> bool:
    """True for the layers whose parameters the rules modify (:data:`LINEAR_LAYERS`)."""
    return isinstance(module, LINEAR_LAYERS)


def output_axis(module: nn.Module) -> int:
    """The axis of ``module.weight`` that indexes output channels (1 for transposed convolutions)."""
    return 1 if isinstance(module, TRANSPOSED) else 0


def bias_view(module: nn.Module, bias: Tensor, ndim: int) -> Tensor:
    """``bias`` shaped to broadcast over an output of ``ndim`` axes (channels on axis 1; Linear: last)."""
    if isinstance(module, nn.Linear):
        return bias
    return bias.view(1, -1, *([1] * (ndim - 2)))


def _onednn(x: Tensor, padding) -> bool:
    """Whether a convolution of ``x`` can go straight to oneDNN (CPU float32, integer padding)."""
    return (x.device.type == "cpu" and x.dtype == torch.float32 and not isinstance(padding, str)
            and torch.backends.mkldnn.is_available() and hasattr(torch, "mkldnn_convolution"))


def conv3d(x: Tensor, weight: Tensor, bias: Tensor | None, stride, padding, dilation, groups: int) -> Tensor:
    """``F.conv3d``; on the CPU straight through oneDNN (module docstring)."""
    if not _onednn(x, padding):
        return F.conv3d(x, weight, bias, stride, padding, dilation, groups)
    return torch.mkldnn_convolution(x.contiguous(), weight.contiguous(), bias, list(padding), list(stride),
                                    list(dilation), groups)


def _conv(rank: int):
    return _CONV[rank] or conv3d


def _zero_padded(module: nn.Module) -> bool:
    return getattr(module, "padding_mode", "zeros") == "zeros"


def _output_padding(module: nn.Module, x: Tensor, output_shape) -> tuple[int, ...]:
    """A transposed convolution's output padding, read off the output it gave (``output_size=`` calls)."""
    if output_shape is None:
        return module.output_padding
    rank = x.dim() - 2
    return tuple(int(out) - ((size - 1) * s - 2 * p + d * (k - 1) + 1)
                 for out, size, s, p, d, k in zip(output_shape[-rank:], x.shape[2:], module.stride, module.padding,
                                                   module.dilation, module.kernel_size))


def layer_forward(module: nn.Module, x: Tensor, weight: Tensor, bias: Tensor | None, output_shape=None) -> Tensor:
    """The layer's map ``f(x; W, b)`` with replaced parameters.

    Args:
        module: a :data:`LINEAR_LAYERS` layer (its settings: stride, padding, groups, …).
        x: its input.
        weight: the weight to use (same shape as ``module.weight``).
        bias: the bias to use, or None.
        output_shape: the shape the layer's own forward gave (transposed convolutions called with
            ``output_size``), or None.
    """
    if isinstance(module, nn.Linear):
        return F.linear(x, weight, bias)
    if isinstance(module, CONVOLUTIONS):
        if not _zero_padded(module):
            return module._conv_forward(x, weight, bias)  # the layer's own padding mode (reflect, circular, …)
        return _conv(x.dim() - 2)(x, weight, bias, module.stride, module.padding, module.dilation, module.groups)
    if isinstance(module, TRANSPOSED):
        return _CONV_TRANSPOSE[x.dim() - 2](x, weight, bias, module.stride, module.padding,
                                            _output_padding(module, x, output_shape), module.groups,
                                            module.dilation)
    raise TypeError(f"no linear forward for {type(module).__name__}")


class Adjoint:
    """Jᵀ: the input gradient of a layer's linear map with parameters ``weight``, prepared once.

    * ``Linear``: ``s W``.
    * transposed convolutions: the convolution with the same weight and settings.
    * convolutions: PyTorch's input gradient; a stride-1, one-group ``Conv3d`` instead runs the
      convolution with the flipped, transposed kernel and padding d(k − 1) − p through oneDNN
      (:func:`conv3d`), the flipped kernel built here once so a sweep's backward passes share it.
    * padding other than zeros, or given as a string: autograd through :func:`layer_forward`.
    """

    def __init__(self, module: nn.Module, weight: Tensor):
        if not has_weights(module):
            raise TypeError(f"no adjoint for {type(module).__name__}")
        self.module, self.weight = module, weight
        self.flipped, self.padding = None, None
        self.autograd = isinstance(module, CONVOLUTIONS) and (isinstance(module.padding, str)
                                                              or not _zero_padded(module))
        if (isinstance(module, nn.Conv3d) and module.groups == 1 and not self.autograd
                and all(v == 1 for v in module.stride)):
            padding = [d * (k - 1) - p for d, k, p in zip(module.dilation, weight.shape[2:], module.padding)]
            if min(padding) >= 0:
                self.flipped, self.padding = weight.flip(2, 3, 4).transpose(0, 1).contiguous(), padding

    def __call__(self, s: Tensor, input_shape: torch.Size) -> Tensor:
        """Jᵀ s for an input of ``input_shape`` (the batch size is taken from ``s``)."""
        module = self.module
        if isinstance(module, nn.Linear):
            return s.matmul(self.weight)
        rank = s.dim() - 2
        if isinstance(module, TRANSPOSED):
            return _conv(rank)(s, self.weight, None, module.stride, module.padding, module.dilation, module.groups)
        shape = (s.shape[0], *input_shape[1:])
        if self.autograd:
            return self._by_autograd(s, shape)
        if self.flipped is not None:
            out = conv3d(s, self.flipped, None, (1, 1, 1), self.padding, module.dilation, 1)
            if tuple(out.shape) == tuple(shape):
                return out
        return _CONV_INPUT_GRAD[rank](shape, self.weight, s, module.stride, module.padding, module.dilation,
                                      module.groups)

    def _by_autograd(self, s: Tensor, shape) -> Tensor:
        with torch.enable_grad():
            probe = torch.zeros(shape, dtype=s.dtype, device=s.device, requires_grad=True)
            (gradient,) = torch.autograd.grad(layer_forward(self.module, probe, self.weight, None), probe, s)
        return gradient


def layer_adjoint(module: nn.Module, s: Tensor, weight: Tensor, input_shape: torch.Size) -> Tensor:
    """Jᵀ s: the input gradient of the module's linear map with parameters ``weight``."""
    return Adjoint(module, weight)(s, input_shape)


def has_fast_forward(module: nn.Module) -> bool:
    """3-D (transposed) convolutions with zero padding, whose forward :func:`layer_forward` computes."""
    return isinstance(module, nn.Conv3d | nn.ConvTranspose3d) and _zero_padded(module)


def _fast_forward(module: nn.Module, x: Tensor, output_size=None) -> Tensor:
    """The layer's own forward, through the oneDNN dispatch (same values)."""
    if output_size is not None:
        return type(module).forward(module, x, output_size)
    return layer_forward(module, x, module.weight, module.bias)


@contextlib.contextmanager
def accelerated(modules: Iterable[nn.Module]) -> Iterator[None]:
    """Run these modules' forward through the oneDNN dispatch for the block; restored on exit, errors included."""
    swapped = []
    try:
        for module in modules:
            if has_fast_forward(module):
                swapped.append((module, module.__dict__.get("forward")))
                module.forward = functools.partial(_fast_forward, module)
        yield
    finally:
        for module, own in swapped:
            if own is None:
                del module.forward
            else:
                module.forward = own
