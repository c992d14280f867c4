"""ONNX export of a trained network, verified against PyTorch, and its inference session.

``export_onnx`` writes ``<path>.onnx`` (``torch.onnx.export(..., dynamo=True)`` with dynamic batch
and spatial dimensions), checks it with ``onnx.checker`` and compares onnxruntime (CPU) with
PyTorch on several grids (:func:`check_grids`: the model's own input grid — the training grid, or the
patch in ``native`` mode —, a larger non-cubic one and an odd small one); a maximum absolute
difference above ``atol`` (1e-4 for fp32) fails the export loudly and nothing is left behind. A JSON
sidecar (``<path>.json``) carries what a user needs without the training code: the preprocessing
settings (modalities in order, normalisation, training grid or patch, mode, target spacing, overlap)
and the build configuration. The exported graph is always a patch model: a volume larger than the
patch is predicted by the window loop around it.

``Segmenter`` wraps an onnxruntime session: it chooses TensorRT, CUDA or CPU in that order where
available and reports the provider actually used (``session.get_providers()``; onnxruntime-gpu
falls back to CPU silently), uses all CPU cores for intra-op threads, and binds inputs and outputs
on the GPU (:func:`binding_device`). With a :class:`inferers.SlidingWindow` it tiles a volume into
windows, runs them through onnxruntime ``window.batch`` at a time and stitches their logits with the
Gaussian importance map by the same :func:`inferers.sliding_window` as the PyTorch path
(:func:`benchmark.evaluation.inference.predict_probability`), then applies the softmax.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from inferers import SlidingWindow, sliding_window
from models.errors import ExportError, ModelFileError

CHECK_GRIDS: tuple[tuple[int, int, int], ...] = ((19, 48, 48), (25, 64, 48), (7, 20, 18))
"""(D, H, W) grids an export is verified on: the study's, a larger non-cubic one, an odd small one
(:func:`check_grids` puts the model's own grid first)."""

PROVIDER_ORDER = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")
GPU_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider")


def check_grids(preprocess: dict) -> tuple[tuple[int, int, int], ...]:
    """The three (D, H, W) grids an export is verified on: the model's own, then the last two of :data:`CHECK_GRIDS`.

    The model's own grid is ``preprocess["grid"]`` (X, Y, Z): the training grid in ``seed`` mode (the study's
    48×48×19 by default), the patch of every sliding window in ``native`` mode.
    """
    x, y, z = (int(n) for n in preprocess["grid"])
    own = (z, y, x)
    others = [g for g in CHECK_GRIDS if g != own]
    return (own, *others[-2:])


def binding_device(provider: str) -> str | None:
    """The onnxruntime device a session's input and output are bound on (I/O binding), or None to run plainly.

    ``cuda`` for the GPU providers (TensorRT, CUDA), as onnxruntime advises for them: the batch is placed on the
    device as an ``OrtValue`` before the run and the logits are allocated there by the session, then copied back
    once; None for the CPU provider, where ``session.run`` reads and writes host memory directly.
    """
    return "cuda" if provider in GPU_PROVIDERS else None


@contextlib.contextmanager
def atomic_file(target: Path) -> Iterator[Path]:
    """A temporary path beside ``target`` (same extension), renamed onto it only on success."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=f".tmp{target.suffix}", dir=target.parent)
    os.close(fd)
    try:
        yield Path(name)
        os.chmod(name, 0o644)
        os.replace(name, target)
    finally:
        Path(name).unlink(missing_ok=True)


@dataclass
class ExportReport:
    """What was written and how closely onnxruntime reproduces PyTorch on each grid."""

    onnx_path: Path
    sidecar_path: Path
    max_abs_diff: dict[str, float] = field(default_factory=dict)

    @property
    def worst(self) -> float:
        """The largest difference over the checked grids."""
        return max(self.max_abs_diff.values()) if self.max_abs_diff else 0.0


def sidecar_path(onnx_path: str | Path) -> Path:
    """``model.onnx`` → ``model.json``."""
    return Path(onnx_path).with_suffix(".json")


def export_onnx(model: nn.Module, path: str | Path, preprocess: dict, grids=None, atol: float = 1e-4,
                seed: int = 0) -> ExportReport:
    """Export, check and verify a model (see the module docstring).

    Args:
        model: a registry model (its ``build_config`` goes into the sidecar).
        path: target ``.onnx`` file.
        preprocess: :meth:`benchmark.data.preprocessing.PreprocessConfig.to_dict` of the model.
        grids: (D, H, W) grids to compare on (batch 1 and 2 alternate; the first one is traced); default
            :func:`check_grids` of ``preprocess``.
        atol: the largest accepted absolute difference of the logits.
        seed: for the random check inputs.

    Raises:
        ExportError: export or check failed, or a difference exceeded ``atol``.
    """
    import onnx
    import onnxruntime as ort
    from torch.export import Dim

    path = Path(path)
    grids = tuple(grids) if grids is not None else check_grids(preprocess)
    model = model.eval()
    # the exporter lists every torchvision operator it cannot register; strokelens uses none of them
    logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)
    channels = len(preprocess["modalities"])
    generator = torch.Generator().manual_seed(seed)
    example = torch.rand(1, channels, *grids[0], generator=generator)
    report = ExportReport(path, sidecar_path(path))
    with atomic_file(path) as tmp:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                torch.onnx.export(model, (example,), str(tmp), dynamo=True, input_names=["image"],
                                  output_names=["logits"], external_data=False, verbose=False,
                                  dynamic_shapes={"x": {0: Dim.AUTO, 2: Dim.AUTO, 3: Dim.AUTO, 4: Dim.AUTO}})
            onnx.checker.check_model(str(tmp), full_check=True)
        except Exception as exc:
            raise ExportError(f"ONNX export of {model.build_config.get('name', type(model).__name__)} failed "
                              f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})") from exc
        session = ort.InferenceSession(str(tmp), providers=["CPUExecutionProvider"])
        for k, grid in enumerate(grids):
            x = torch.rand(1 + k % 2, channels, *grid, generator=generator)
            with torch.no_grad():
                expected = model(x).numpy()
            got = session.run(None, {"image": x.numpy()})[0]
            diff = float(np.abs(got - expected).max())
            report.max_abs_diff["x".join(map(str, grid))] = diff
            if not diff <= atol:
                raise ExportError(f"onnxruntime differs from PyTorch by {diff:.3g} (> {atol}) on grid {grid}: "
                                  "the export is not trustworthy; report the architecture")
        sidecar = {"format": "strokelens-onnx/1", "input": "image", "output": "logits",
                   "input_layout": "(N, C, D, H, W) float32, D = NIfTI Z", "preprocess": preprocess,
                   "build_config": getattr(model, "build_config", {}), "max_abs_diff": report.max_abs_diff}
        with atomic_file(report.sidecar_path) as side:
            side.write_text(json.dumps(sidecar, indent=2) + "\n")
    return report


def read_sidecar(onnx_path: str | Path, side: str | Path | None = None) -> dict:
    """The JSON beside an ONNX file (or at ``side``), or a :class:`ModelFileError` saying it is missing."""
    side = Path(side) if side is not None else sidecar_path(onnx_path)
    if not side.is_file():
        raise ModelFileError(f"'{onnx_path}' has no preprocessing JSON ('{side.name}' beside it): export the model "
                        "with mlproject.export, which writes both")
    try:
        return json.loads(side.read_text())
    except ValueError as exc:
        raise ModelFileError(f"'{side}' is not valid JSON: export the model again") from exc


class Segmenter:
    """An onnxruntime session for a strokelens ONNX model.

    Args:
        onnx_path: the model.
        sidecar: its JSON (default: beside it, ``model.json`` for ``model.onnx``).
        providers: ``auto`` (TensorRT, CUDA, CPU in that order where available; GPU providers only
            when a CUDA device is visible) or a list.
        threads: CPU intra-op threads (default: all cores).
    """

    def __init__(self, onnx_path: str | Path, sidecar: str | Path | None = None, providers: str | list[str] = "auto",
                 threads: int | None = None):
        import onnxruntime as ort

        self.path = Path(onnx_path)
        if not self.path.is_file():
            raise ModelFileError(f"ONNX model '{self.path}' does not exist: export one with mlproject.export")
        self.meta = read_sidecar(self.path, sidecar)
        available = ort.get_available_providers()
        if providers == "auto":  # onnxruntime-gpu lists GPU providers without a GPU; ask for them only with one
            wanted = PROVIDER_ORDER if torch.cuda.is_available() else ("CPUExecutionProvider",)
            chosen = [p for p in wanted if p in available]
        else:
            chosen = list(providers)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or os.cpu_count() or 1
        options.log_severity_level = 3
        ort.set_default_logger_severity(3)  # a missing CUDA library on a CPU machine is no error of the user's
        try:
            self.session = ort.InferenceSession(str(self.path), options, providers=chosen)
        except Exception as exc:
            raise ModelFileError(f"cannot load ONNX model '{self.path}' ({type(exc).__name__}): the file is corrupt "
                            "or not an ONNX model; export it again") from exc
        self.provider = self.session.get_providers()[0]
        self.binding_device = binding_device(self.provider)
        self._check_meta(Path(sidecar) if sidecar is not None else sidecar_path(self.path))

    def _check_meta(self, side: Path) -> None:
        """The JSON must hold the preprocessing keys and one modality per input channel of the model."""
        preprocess = self.meta.get("preprocess") if isinstance(self.meta, dict) else None
        missing = [k for k in ("modalities", "normalization", "grid") if not isinstance(preprocess, dict)
                   or k not in preprocess]
        if missing:
            raise ModelFileError(f"'{side}' lacks the preprocessing settings {', '.join(missing)}: export the model "
                                 "again (mlproject.export writes them)")
        channels = self.session.get_inputs()[0].shape[1]
        if isinstance(channels, int) and channels != len(preprocess["modalities"]):
            raise ModelFileError(f"'{side}' lists {len(preprocess['modalities'])} modalities but '{self.path}' "
                                 f"takes {channels} input channels: use the JSON exported with this model")

    @property
    def modalities(self) -> list[str]:
        """Input channels in order."""
        return list(self.meta["preprocess"]["modalities"])

    def logits(self, image: np.ndarray, window: SlidingWindow | None = None,
               progress: Callable[[int], None] | None = None) -> np.ndarray:
        """(N, 2, D, H, W) logits of a (N, C, D, H, W) float32 batch.

        Args:
            image: the prepared input.
            window: None runs each volume whole (``seed`` grid); a sliding window tiles it into patches run
                ``window.batch`` at a time and stitches their logits with Gaussian weights
                (:func:`inferers.sliding_window`; a volume smaller than the patch is zero-padded and cropped back).
            progress: called with the number of windows done after each batch.
        """
        image = np.ascontiguousarray(image, dtype=np.float32)
        if window is None:
            return self._run(image)
        return sliding_window(image, self._run, window, progress)

    def _run(self, batch: np.ndarray) -> np.ndarray:
        """One onnxruntime call, bound on :attr:`binding_device` where there is one."""
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        if self.binding_device is None:
            return self.session.run(None, {"image": batch})[0]
        import onnxruntime as ort

        binding = self.session.io_binding()
        binding.bind_ortvalue_input("image", ort.OrtValue.ortvalue_from_numpy(batch, self.binding_device, 0))
        binding.bind_output("logits", self.binding_device)
        self.session.run_with_iobinding(binding)
        return binding.copy_outputs_to_cpu()[0]

    def probability(self, image: np.ndarray, window: SlidingWindow | None = None,
                    progress: Callable[[int], None] | None = None) -> np.ndarray:
        """(N, D, H, W) lesion probability: the softmax of the two (stitched) logits of :meth:`logits`."""
        logits = self.logits(image, window, progress)
        shifted = logits - logits.max(axis=1, keepdims=True)
        e = np.exp(shifted)
        return e[:, 1] / e.sum(axis=1)


def quantize_int8(onnx_path: str | Path, out_path: str | Path, calibration: list[np.ndarray]) -> Path:
    """Static int8 quantisation (QDQ, per-channel weights) calibrated on model inputs.

    Args:
        onnx_path: the fp32 model (its JSON sidecar is copied with ``"precision": "int8"``).
        out_path: target ``.onnx``.
        calibration: (1, C, D, H, W) float32 inputs, e.g. prepared training cases.

    Returns:
        ``out_path``; its sidecar sits beside it.
    """
    import logging

    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class _Reader(CalibrationDataReader):
        def __init__(self):
            self._inputs = iter([{"image": np.ascontiguousarray(x, dtype=np.float32)} for x in calibration])

        def get_next(self):
            return next(self._inputs, None)

    out_path = Path(out_path)
    meta = read_sidecar(onnx_path)
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # the quantiser advises pre-processing through warnings on the root logger
    try:
        with atomic_file(out_path) as tmp:
            quantize_static(str(onnx_path), str(tmp), _Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    finally:
        root.setLevel(level)
    with atomic_file(sidecar_path(out_path)) as side:
        side.write_text(json.dumps({**meta, "precision": "int8"}, indent=2) + "\n")
    return out_path
