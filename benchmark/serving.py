"""A served request → the lesion probability, mask and volume of one case, by an exported ONNX model.

The registered model (:mod:`tracking.serving`) loads :func:`load_predictor` by the dotted path in its
MLflow model config and hands it each request's ``inputs``. A request is one case at its native grid:

* **arrays** (JSON): one key per model modality (the names of the model's preprocessing JSON, e.g.
  ``ADC``, ``MTT``, ``rCBF``, ``rCBV``, ``Tmax``, ``TTP``), each an X×Y×Z array of numbers in NIfTI
  voxel order (what ``nibabel.load(f).get_fdata()`` gives), plus ``spacing``: the voxel size
  (X, Y, Z) in mm (``header.get_zooms()[:3]``) and/or ``affine``: the 4×4 voxel-to-world matrix
  (spacing = its column norms; both given must agree).
* **nifti** (compact): each modality key holds the bytes of that modality's NIfTI file
  (``.nii`` or ``.nii.gz``) in base64; spacing, affine and header come from the files.

Optional ``threshold`` (default 0.5): mask = probability > threshold. Optional ``relevance``: the
name of an LRP method whose relevance ONNX model the served model ships (``lrp_epsilon``,
``lrp_zplus``: exported with ``python -m mlproject.export --lrp-onnx``). The answer holds
``probability`` (float32) and ``mask`` (uint8) on the input's grid — arrays in (X, Y, Z) order, or
base64 NIfTI files with the first modality's affine and header (gzip-compressed when the request's
files were) —, ``lesion_ml`` = mask voxels × voxel volume (product of the spacing in mm / 1000),
``lesion_voxels``, ``threshold``, ``encoding``, the grid, spacing and onnxruntime provider; with
``relevance`` also ``relevance``: one volume per modality (float32, the same encoding as the
probability), ``relevance_method``, ``relevance_target`` (the explained target, the sum of the lesion
logit over the predicted lesion on the model's grid: what a conservative rule's relevance sums to) and
``relevance_share`` (each modality's share of the summed relevance on the model's grid).

Relevance is computed by the method's relevance ONNX model (:mod:`explain.onnx_export`: the LRP pass
written as forward operations, verified against ``explain.attribute`` at export) in onnxruntime —
no PyTorch at serve time — on the prepared case (the segmenter's input), and mapped back to the
input's grid per modality with :func:`benchmark.data.preprocessing.to_native`, as the probability and
as the ``explanations`` stage writes its relevance NIfTI files (area-weighted mean where the grid
shrinks, trilinear where it grows: values are per voxel, not re-normalised to keep their sum).

The computation is :mod:`benchmark.stages.predict`'s: a :class:`benchmark.data.cases.Case` goes through
:func:`benchmark.data.preprocessing.prepare` (the model's own normalisation and resampling to its
training grid, or to its target spacing in ``native`` mode), :meth:`models.onnx.Segmenter.probability`
(Gaussian sliding windows of the patch in ``native`` mode) and
:func:`benchmark.data.preprocessing.to_native`, so a served answer equals ``predict``'s files.

Everything a client can get wrong raises :class:`RequestError` with a short message that never
repeats the payload: a missing or unknown key, mixed encodings, a non-numeric or non-3-D array,
NaN/Inf voxels, modalities on different grids, a spacing that is not three positive numbers,
bad base64 or NIfTI bytes, more than :data:`MAX_VOXELS` voxels per modality (a gzip stream is inflated
only up to the largest file such a modality can be, so a small compressed request cannot expand
without bound).
"""

from __future__ import annotations

import binascii
import gzip
import math
import os
import zlib
from collections.abc import Mapping
from pathlib import Path

import nibabel as nib
import numpy as np
import pybase64

from benchmark.data.cases import Case
from benchmark.data.nifti import spacing_of, to_dhw, to_xyz
from benchmark.data.preprocessing import PreprocessConfig, prepare, to_native
from benchmark.errors import ParameterError, StrokelensError
from models.onnx import Segmenter

ENCODINGS: tuple[str, ...] = ("arrays", "nifti")
"""How a request carries its volumes (see the module docstring)."""
MAX_VOXELS = 1 << 24
"""The most voxels one modality may have (16,777,216, e.g. 512×512×64)."""
DEFAULT_THRESHOLD = 0.5
RELEVANCE_KEY = "relevance"
OPTIONAL_KEYS: tuple[str, ...] = ("spacing", "affine", "threshold", RELEVANCE_KEY)
_NIFTI_HEADER_BYTES = 544  # NIfTI-2's header; NIfTI-1's is 348 (+ 4 extension bytes)
_GZIP_LEVEL = 1  # the answer's gzip level: level 6 costs 5× the time for ~10 % fewer bytes on probabilities


class RequestError(ParameterError):
    """A request the model cannot answer; the message names the key and the fix, never the payload."""


def _short(value: object) -> str:
    """A type name for messages (never the value: it may be megabytes)."""
    return type(value).__name__


def _as_text(value: object) -> str | None:
    """The string a value holds (a str, or the 0-d string array MLflow's scoring server makes), else None."""
    if isinstance(value, str):
        return value
    if isinstance(value, np.ndarray) and value.ndim == 0 and value.dtype.kind in "US":
        return str(value.item())
    return None


def _as_numbers(key: str, value: object, shape: tuple[int, ...] | None = None) -> np.ndarray:
    """``value`` as a finite float64 array (of ``shape`` when given), or a :class:`RequestError`."""
    try:
        array = np.asarray(value)
    except ValueError:  # ragged nested lists
        raise RequestError(f"'{key}' is a ragged array: send one rectangular array") from None
    if array.dtype.kind not in "biuf":
        raise RequestError(f"'{key}' must hold numbers (got {array.dtype.kind!r} data of {_short(value)})")
    array = array.astype(np.float64, copy=False)
    if shape is not None and array.shape != shape:
        raise RequestError(f"'{key}' must have shape {shape}, got {array.shape}")
    if not np.isfinite(array).all():
        raise RequestError(f"'{key}' holds {int((~np.isfinite(array)).sum())} NaN/Inf values: replace them")
    return array


def _check_grid(key: str, shape: tuple[int, ...]) -> None:
    if len(shape) != 3 or min(shape) < 1:
        raise RequestError(f"'{key}' must be one 3-D volume (X, Y, Z), got shape {shape}")
    voxels = math.prod(shape)
    if voxels > MAX_VOXELS:
        raise RequestError(f"'{key}' has {voxels} voxels, more than the {MAX_VOXELS} a request may carry: "
                           "crop or resample the case")


def _finite_float32(key: str, data: np.ndarray) -> np.ndarray:
    """``data`` as float32 (as :func:`benchmark.data.nifti.read_volume` converts), refusing NaN/Inf."""
    if data.dtype.kind not in "biuf":
        raise RequestError(f"'{key}' must hold numbers (got {data.dtype} voxels)")
    volume = np.array(data, dtype=np.float32)
    if not np.isfinite(volume).all():
        raise RequestError(f"'{key}' holds {int((~np.isfinite(volume)).sum())} NaN/Inf voxels: replace them")
    return volume


def _inflate(key: str, raw: bytes) -> bytes:
    """Inflate a gzip stream, refusing one that expands past a modality's largest file (a gzip bomb)."""
    limit = _NIFTI_HEADER_BYTES + 16 + MAX_VOXELS * 8
    inflater = zlib.decompressobj(wbits=31)
    try:
        out = inflater.decompress(raw, limit)
    except zlib.error:
        raise RequestError(f"'{key}' is not a valid gzip stream: send the .nii.gz file's bytes unchanged") from None
    if inflater.unconsumed_tail:
        raise RequestError(f"'{key}' inflates to more than {limit} bytes: crop or resample the case")
    return out


def _nifti(key: str, text: str) -> tuple[np.ndarray, nib.Nifti1Image, bool]:
    """(X, Y, Z) float32 voxels, the image and whether it was gzip-compressed, from base64 NIfTI bytes."""
    try:
        raw = pybase64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise RequestError(f"'{key}' is not valid base64: send base64.b64encode(file bytes).decode()") from None
    compressed = raw[:2] == b"\x1f\x8b"
    if compressed:
        raw = _inflate(key, raw)
    image = None
    for kind in (nib.Nifti1Image, nib.Nifti2Image):
        try:
            image = kind.from_bytes(raw)
            break
        except Exception:  # nibabel raises many types for a foreign header
            continue
    if image is None:
        raise RequestError(f"'{key}' is not a NIfTI file: send the bytes of a .nii or .nii.gz file")
    shape = tuple(int(n) for n in image.shape)
    while len(shape) > 3 and shape[-1] == 1:
        shape = shape[:-1]
    _check_grid(key, shape)
    try:
        data = np.asanyarray(image.dataobj).reshape(shape)
    except Exception:
        raise RequestError(f"'{key}' holds fewer voxels than its header declares: send the whole file") from None
    return _finite_float32(key, data), image, compressed


def _encode_nifti(data_dhw: np.ndarray, affine: np.ndarray, header, dtype, compressed: bool) -> str:
    """Base64 NIfTI bytes of a (D, H, W) array, written as :func:`benchmark.data.nifti.write_volume` writes."""
    array = to_xyz(np.asarray(data_dhw)).astype(dtype)
    image = nib.Nifti1Image(array, np.asarray(affine, dtype=np.float64),
                            header=header.copy() if header is not None else None)
    image.set_data_dtype(array.dtype)
    image.header.set_xyzt_units("mm", "sec")
    raw = image.to_bytes()
    if compressed:
        raw = gzip.compress(raw, compresslevel=_GZIP_LEVEL, mtime=0)
    return pybase64.b64encode(raw).decode("ascii")


class Predictor:
    """One exported model answering served requests (see the module docstring).

    Args:
        onnx_path: the ONNX model.
        sidecar: its preprocessing JSON (default: beside it).
        threads: onnxruntime CPU intra-op threads (default: all cores).
        relevance: LRP method → its relevance ONNX model (:class:`RelevanceModels`), answering requests
            with a ``relevance`` field.

    Attributes:
        client_errors: the exceptions that mean a bad request (the server answers 400 for them).
    """

    client_errors: tuple[type[Exception], ...] = (StrokelensError,)

    def __init__(self, onnx_path: str | Path, sidecar: str | Path | None = None, threads: int | None = None,
                 relevance: Mapping[str, str | Path] | None = None):
        self.segmenter = Segmenter(onnx_path, sidecar, threads=threads)
        self.config = PreprocessConfig.from_dict(self.segmenter.meta["preprocess"])
        self.modalities: tuple[str, ...] = self.config.modalities
        self.relevance = RelevanceModels(relevance or {}, self.provider, threads)

    @property
    def provider(self) -> str:
        """The onnxruntime execution provider in use."""
        return self.segmenter.provider

    def decode(self, inputs: Mapping) -> tuple[Case, str, bool]:
        """(the request as a :class:`Case`, its encoding, whether its NIfTI files were compressed)."""
        if not isinstance(inputs, Mapping):
            raise RequestError(f"'inputs' must be an object with one key per modality ({', '.join(self.modalities)}), "
                               f"got {_short(inputs)}")
        unknown = sorted(set(inputs) - set(self.modalities) - set(OPTIONAL_KEYS))
        missing = [m for m in self.modalities if m not in inputs]
        if unknown or missing:
            parts = ([f"missing {', '.join(missing)}"] if missing else []) + \
                    ([f"unknown {', '.join(str(k)[:40] for k in unknown[:6])}"] if unknown else [])
            raise RequestError(f"inputs: {'; '.join(parts)}: send {', '.join(self.modalities)} (+ spacing, "
                               "affine, threshold, relevance)")
        texts = [_as_text(inputs[m]) for m in self.modalities]
        if all(t is not None for t in texts):
            return self._decode_nifti(inputs, texts)
        if any(t is not None for t in texts):
            raise RequestError("mixed encodings: send every modality as base64 NIfTI bytes or every one as an array")
        return self._decode_arrays(inputs), "arrays", False

    def _decode_nifti(self, inputs: Mapping, texts: list) -> tuple[Case, str, bool]:
        if "spacing" in inputs or "affine" in inputs:
            raise RequestError("'spacing' and 'affine' come from the NIfTI headers: leave them out with base64 files")
        volumes, first = [], None
        compressed = False
        for name, text in zip(self.modalities, texts, strict=True):
            data, image, gz = _nifti(name, text)
            compressed = compressed or gz
            if first is None:
                first = (name, data.shape, np.asarray(image.affine, dtype=np.float64), image)
            elif data.shape != first[1]:
                raise RequestError(f"'{name}' has grid {data.shape} (X, Y, Z) but '{first[0]}' has {first[1]}: "
                                   "resample the case's files to one grid")
            elif not np.allclose(image.affine, first[2], atol=1e-3):
                raise RequestError(f"'{name}' and '{first[0]}' have different affines: resample the case's files "
                                   "to one grid")
            volumes.append(to_dhw(data))
        _, _, affine, image = first
        zooms = image.header.get_zooms()[:3]
        spacing = (float(zooms[2]), float(zooms[1]), float(zooms[0]))
        case = Case("request", np.stack(volumes), self.modalities, None, affine, spacing, header=image.header)
        return case, "nifti", compressed

    def _decode_arrays(self, inputs: Mapping) -> Case:
        volumes, shape = [], None
        for name in self.modalities:
            array = _as_numbers(name, inputs[name])
            _check_grid(name, array.shape)
            if shape is not None and array.shape != shape:
                raise RequestError(f"'{name}' has grid {array.shape} (X, Y, Z) but '{self.modalities[0]}' has "
                                   f"{shape}: send every modality on one grid")
            shape = array.shape
            volumes.append(to_dhw(_finite_float32(name, array)))  # a value beyond float32's range is Inf there
        affine = _as_numbers("affine", inputs["affine"], (4, 4)) if "affine" in inputs else None
        if "spacing" in inputs:
            spacing_xyz = tuple(float(v) for v in _as_numbers("spacing", inputs["spacing"], (3,)))
            if min(spacing_xyz) <= 0:
                raise RequestError("'spacing' must be three positive voxel sizes (X, Y, Z) in mm")
            if affine is not None and not np.allclose(spacing_of(affine)[::-1], spacing_xyz, rtol=1e-3):
                raise RequestError("'spacing' disagrees with the column norms of 'affine': send one of them")
        elif affine is not None:
            spacing_xyz = spacing_of(affine)[::-1]
        else:
            raise RequestError("'spacing' is missing: send the voxel size (X, Y, Z) in mm, e.g. header.get_zooms()[:3]")
        if affine is None:
            affine = np.diag([*spacing_xyz, 1.0])
        if min(spacing_xyz) <= 0:
            raise RequestError("'affine' has a zero column: send a voxel-to-world matrix of positive voxel sizes")
        return Case("request", np.stack(volumes), self.modalities, None, affine, tuple(spacing_xyz[::-1]))

    def probability(self, case: Case) -> np.ndarray:
        """(D, H, W) lesion probability on the case's grid, computed exactly as ``predict`` does."""
        image = prepare(case, self.config).image[None]
        return to_native(self.segmenter.probability(image, window=self.config.window()), case.shape)[0]

    def predict(self, inputs: Mapping) -> dict:
        """The answer to one request's ``inputs`` (see the module docstring).

        Raises:
            RequestError: the request is malformed (the message is short and names the key).
        """
        threshold = DEFAULT_THRESHOLD
        if "threshold" in inputs:
            value = _as_numbers("threshold", inputs["threshold"], ())
            threshold = float(value)
            if not 0.0 < threshold < 1.0:
                raise RequestError("'threshold' must be a lesion probability strictly between 0 and 1")
        method = self.relevance.method(inputs[RELEVANCE_KEY]) if RELEVANCE_KEY in inputs else None
        case, encoding, compressed = self.decode(inputs)
        probability = self.probability(case).astype(np.float32)
        mask = (probability > threshold).astype(np.uint8)
        voxels = int(mask.sum())
        answer = {"lesion_ml": voxels * case.voxel_ml, "lesion_voxels": voxels, "threshold": threshold,
                  "encoding": encoding, "shape": list(case.shape[::-1]), "spacing": list(case.spacing[::-1]),
                  "provider": self.provider}
        if encoding == "nifti":
            answer["probability"] = _encode_nifti(probability, case.affine, case.header, np.float32, compressed)
            answer["mask"] = _encode_nifti(mask, case.affine, case.header, np.uint8, compressed)
        else:
            answer["probability"] = to_xyz(probability)
            answer["mask"] = to_xyz(mask)
        if method is not None:
            answer.update(self.relevance_answer(case, method, encoding, compressed))
        return answer

    def relevance_answer(self, case: Case, method: str, encoding: str, compressed: bool) -> dict:
        """The ``relevance*`` fields of an answer (module docstring) for a decoded case."""
        relevance, target = self.relevance.run(method, prepare(case, self.config).image[None])
        totals = relevance.reshape(len(self.modalities), -1).sum(axis=1, dtype=np.float64)
        whole = float(totals.sum())
        native = to_native(relevance, case.shape).astype(np.float32)  # (C, D, H, W) on the input's grid
        if encoding == "nifti":
            maps = {m: _encode_nifti(v, case.affine, case.header, np.float32, compressed)
                    for m, v in zip(self.modalities, native, strict=True)}
        else:
            maps = {m: to_xyz(v) for m, v in zip(self.modalities, native, strict=True)}
        return {"relevance": maps, "relevance_method": method, "relevance_target": target,
                "relevance_share": {m: float(t / whole) if whole else 0.0
                                    for m, t in zip(self.modalities, totals, strict=True)}}


class RelevanceModels:
    """The relevance ONNX models a served model ships (:mod:`explain.onnx_export`), run by onnxruntime.

    Args:
        paths: LRP method → its ``.onnx`` file (input ``image``, outputs ``relevance``, ``logits``,
            ``target``).
        provider: the segmenter's onnxruntime provider (CPU is the fallback).
        threads: CPU intra-op threads (default: all cores).
    """

    def __init__(self, paths: Mapping[str, str | Path], provider: str = "CPUExecutionProvider",
                 threads: int | None = None):
        import onnxruntime as ort

        self.paths = {str(k): Path(v) for k, v in sorted(paths.items())}
        self._sessions: dict = {}
        self._providers = list(dict.fromkeys([provider, "CPUExecutionProvider"]))
        self._options = ort.SessionOptions()
        self._options.intra_op_num_threads = threads or os.cpu_count() or 1
        for method in self.paths:  # loaded now: a broken file fails the server's start, not a request
            self._session(method)

    @property
    def methods(self) -> tuple[str, ...]:
        """The methods a request may name."""
        return tuple(self.paths)

    def _session(self, method: str):
        if method not in self._sessions:
            import onnxruntime as ort

            self._sessions[method] = ort.InferenceSession(str(self.paths[method]), self._options,
                                                          providers=self._providers)
        return self._sessions[method]

    def method(self, value: object) -> str:
        """The method a request's ``relevance`` field names, or a :class:`RequestError` naming the allowed ones."""
        name = _as_text(value)
        if not self.methods:
            raise RequestError("'relevance' cannot be answered: this model ships no relevance models (export it "
                               "with python -m mlproject.export --lrp-onnx)")
        if name not in self.methods:
            got = f"'{name[:40]}'" if name is not None else f"a {_short(value)}"
            raise RequestError(f"'relevance' must be one of {', '.join(self.methods)} (got {got})")
        return name

    def run(self, method: str, image: np.ndarray) -> tuple[np.ndarray, float]:
        """((C, D, H, W) relevance, explained target) of one prepared image (1, C, D, H, W)."""
        relevance, _, target = self._session(method).run(None, {"image": np.ascontiguousarray(image, np.float32)})
        return relevance[0], float(target[0])


def load_predictor(onnx_path: str | Path, sidecar: str | Path | None = None, **options) -> Predictor:
    """The factory the served model loads by its dotted path (``benchmark.serving:load_predictor``)."""
    return Predictor(onnx_path, sidecar, **options)


def encode_file(path: str | Path) -> str:
    """A NIfTI file's bytes in base64, as a request's compact encoding carries them."""
    return pybase64.b64encode(Path(path).read_bytes()).decode("ascii")


def decode_volume(text: str) -> np.ndarray:
    """The (X, Y, Z) voxels of a base64 NIfTI answer (``probability`` or ``mask``)."""
    raw = pybase64.b64decode(text)
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    return np.asanyarray(nib.Nifti1Image.from_bytes(raw).dataobj)

