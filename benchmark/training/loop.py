"""Training a segmentation network: losses, augmentation, validation, checkpoints, the loop.

The loop is a handful of small steps (:func:`train_epoch`, :func:`validate`,
:func:`save_checkpoint`, :class:`EarlyStopping`) that :func:`fit` strings together; a search
calls :func:`fit` with an ``on_epoch`` callback that reports to Optuna and MLflow.

Losses (``p`` = lesion probability, ``t`` = lesion fraction of the voxel, sums over the batch):

* ``ce`` (the study's training loss, ``nn.CrossEntropyLoss()`` in its
  ``pipeline/training_aux.py:24``): the voxel-mean cross-entropy of the two-class logits,
  ``−mean(t log p + (1 − t) log(1 − p))``; for t ∈ {0, 1} (the study's nearest-resized labels) it
  equals ``nn.CrossEntropyLoss`` with class indices, our resampled fractions are soft targets.
* ``dice`` (the study's soft Dice, smooth s = 1, which it reports but does not train with):
  ``1 − (2 Σ p t + s) / (Σ p + Σ t + s)``.
* ``dice_ce``: ``dice + ce``.

Augmentations (:class:`Augmenter`): ``flips`` (random flips and intensity jitter), ``study`` (the
study's rotation, translation and intensity crop), ``both`` (study, then flips), ``spatial`` (rotation and
scaling in the slice plane, then flips: the kind of ``native`` patches).

Two preprocessing modes (:class:`benchmark.data.preprocessing.PreprocessConfig`, passed to :func:`fit`):
``seed`` trains on whole volumes at the training grid; ``native`` trains on random patches of the
config's ``grid`` at the target spacing (:class:`benchmark.data.patches.PatchSampler`: one patch per
training case and epoch, a share ``TrainConfig.foreground`` of them, nnU-Net's 1/3, centred on lesion
voxels) and validates by Gaussian sliding windows (:meth:`PreprocessConfig.window`) over each whole
validation volume at the target spacing. In both modes the validation Dice is computed on the native
grid (the probability resampled back, :func:`benchmark.data.preprocessing.to_native`), so the two
modes' numbers compare.
"""

from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from benchmark.atomic import atomic_file
from benchmark.data.patches import FOREGROUND_SHARE, PatchSampler
from benchmark.data.preprocessing import PreparedCase, PreprocessConfig, to_native
from benchmark.errors import DataError, ParameterError
from benchmark.evaluation.inference import predict_probability
from benchmark.evaluation.segmentation import METRIC_NAMES, segmentation_metrics
from inferers import SlidingWindow

LOSSES: tuple[str, ...] = ("dice", "dice_ce", "ce")
"""Training losses (module docstring); ``ce`` is the study's."""

AUGMENTATIONS: tuple[str, ...] = ("flips", "study", "both", "spatial")
"""Augmentation kinds (:class:`Augmenter`); ``study`` is the study's ``rotate_then_clip_translate``, ``spatial``
rotation and scaling (nnU-Net's spatial transform in the slice plane) for ``native`` patches."""


@dataclass
class TrainConfig:
    """Settings of one training run (the study's Adam defaults).

    Attributes:
        epochs: maximum epochs.
        batch_size: volumes per step.
        lr: Adam learning rate.
        betas: Adam betas.
        weight_decay: Adam weight decay (L2; the study's Adam has none).
        loss: one of :data:`LOSSES`.
        augment: augmentation strength in [0, 1] (0 turns it off); for ``study`` the fraction of
            volumes augmented (the study: 9 of its 10 copies of a case, 0.9).
        augmentation: one of :data:`AUGMENTATIONS`.
        patience: early stopping after this many epochs without a better validation Dice
            (0 turns it off).
        seed: seeds Python, NumPy and torch (deterministic on CPU).
        device: ``cpu``, ``cuda`` or ``auto``.
        amp: mixed precision on CUDA.
        threshold: lesion probability above which a voxel is lesion.
        foreground: ``native`` mode: share of training patches centred on a lesion voxel (nnU-Net's 1/3).
    """

    epochs: int = 30
    batch_size: int = 2
    lr: float = 2e-4
    betas: tuple[float, float] = (0.5, 0.9)
    weight_decay: float = 1e-5
    loss: str = "dice"
    augment: float = 0.5
    augmentation: str = "flips"
    patience: int = 10
    seed: int = 0
    device: str = "auto"
    amp: bool = True
    threshold: float = 0.5
    foreground: float = FOREGROUND_SHARE

    def __post_init__(self):
        if self.epochs < 1:
            raise ParameterError(f"epochs must be at least 1 (got {self.epochs})")
        if self.batch_size < 1:
            raise ParameterError(f"batch_size must be at least 1 (got {self.batch_size})")
        if self.loss not in LOSSES:
            raise ParameterError(f"loss '{self.loss}' is unknown: choose {', '.join(LOSSES)}")
        if not 0 <= self.augment <= 1:
            raise ParameterError(f"augment must be within [0, 1] (got {self.augment})")
        if self.augmentation not in AUGMENTATIONS:
            raise ParameterError(f"augmentation '{self.augmentation}' is unknown: choose "
                                 f"{', '.join(AUGMENTATIONS)}")
        if not self.lr > 0:
            raise ParameterError(f"lr must be positive (got {self.lr})")
        if not 0 <= self.foreground <= 1:
            raise ParameterError(f"foreground share must be within [0, 1] (got {self.foreground})")


def resolve_device(name: str) -> torch.device:
    """``auto`` → CUDA when present, else CPU; ``cuda`` without CUDA is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ParameterError(f"device '{name}' asked for but no CUDA GPU is visible: use cpu or auto")
    if name != "cpu" and not name.startswith("cuda"):
        raise ParameterError(f"device '{name}' is unknown: use auto, cpu or cuda")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch and ask torch for deterministic kernels where it has them."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)


def soft_dice_loss(logits: torch.Tensor, target: torch.Tensor, smooth: float = 1.0) -> torch.Tensor:
    """The study's soft Dice loss on the lesion channel, ``1 − (2Σpt + s)/(Σp + Σt + s)``."""
    p = torch.softmax(logits.float(), dim=1)[:, 1]
    return 1.0 - (2.0 * (p * target).sum() + smooth) / (p.sum() + target.sum() + smooth)


def cross_entropy_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The study's loss: voxel-mean two-class cross-entropy against the target fraction (module docstring)."""
    log_p = torch.log_softmax(logits.float(), dim=1)
    return -(target * log_p[:, 1] + (1 - target) * log_p[:, 0]).mean()


def dice_ce_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Soft Dice plus voxel-mean cross-entropy against the target fraction."""
    return soft_dice_loss(logits, target) + cross_entropy_loss(logits, target)


def loss_function(name: str) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The loss called ``name`` (see :data:`LOSSES`)."""
    losses = {"dice": soft_dice_loss, "dice_ce": dice_ce_loss, "ce": cross_entropy_loss}
    if name not in losses:
        raise ParameterError(f"loss '{name}' is unknown: choose {', '.join(LOSSES)}")
    return losses[name]


STUDY_ROTATION_DEG = 20.0
"""θ ~ U(−20°, 20°), rounded to 0.1°, about the slice axis (the study's ``utils/custom_augment.py:18,34``)."""

STUDY_SHIFT_FRACTION = 0.2
"""Shifts up to ⌈0.2 · n⌉ voxels along each axis of n voxels (``utils/custom_augment.py:17,19-21,35-37``)."""

STUDY_CROP_LOW = 0.3
"""The intensity crop's upper bound c ~ U(0.3, 1), rounded to 0.01 (``utils/custom_augment.py:22,38``)."""

SPATIAL_ROTATION_DEG = 30.0
"""``spatial``: θ ~ U(−30°, 30°) about the slice axis (nnU-Net's 3-D rotation range, ``rotation_for_DA``)."""

SPATIAL_SCALE = (0.7, 1.4)
"""``spatial``: in-plane zoom k ~ U(0.7, 1.4) (nnU-Net's ``scale_range``); k > 1 magnifies the content."""


def rotate_slices(volume: torch.Tensor, degrees: float) -> torch.Tensor:
    """Rotate every axial slice of ``volume`` (…, H, W) about its centre exactly as ``PIL.Image.rotate`` does.

    Nearest neighbour, no expansion, zero fill, positive angles counter-clockwise on screen (the
    study's ``utils/augment.py:18-20``). Pillow maps output pixel (row i, column j) to input pixel
    (⌊y⌋, ⌊x⌋) with (x, y) = M · (j + ½, i + ½) + t, M the rotation by −θ about (W/2, H/2), in 16.16
    fixed point (its ``Image.rotate`` and ``affine_fixed`` in ``libImaging/Geometry.c``); the same
    integer arithmetic is done here, so the result is Pillow's voxel for voxel.
    """
    h, w = volume.shape[-2:]
    if degrees % 360.0 == 0:
        return volume.clone()
    angle = -math.radians(degrees % 360.0)
    a, b = round(math.cos(angle), 15), round(math.sin(angle), 15)
    d, e = round(-math.sin(angle), 15), round(math.cos(angle), 15)
    cx, cy = w / 2.0, h / 2.0
    c = a * -cx + b * -cy + cx
    f = d * -cx + e * -cy + cy

    def fix(v: float) -> int:
        return math.floor(v * 65536.0 + 0.5)

    rows = torch.arange(h, dtype=torch.int64)[:, None]
    cols = torch.arange(w, dtype=torch.int64)[None, :]
    xin = torch.div(fix(c + a * 0.5 + b * 0.5) + rows * fix(b) + cols * fix(a), 65536, rounding_mode="floor")
    yin = torch.div(fix(f + d * 0.5 + e * 0.5) + rows * fix(e) + cols * fix(d), 65536, rounding_mode="floor")
    valid = (xin >= 0) & (xin < w) & (yin >= 0) & (yin < h)
    return volume[..., yin.clamp(0, h - 1), xin.clamp(0, w - 1)] * valid.to(volume.dtype)


def translate(volume: torch.Tensor, voxels: int, axis: int) -> torch.Tensor:
    """Translate ``volume`` by ``voxels`` along ``axis`` (positive: towards higher indices), zero-filled."""
    if voxels == 0:
        return volume
    out = torch.zeros_like(volume)
    n = volume.shape[axis]
    k = min(abs(voxels), n)
    if voxels > 0:
        out.narrow(axis, k, n - k).copy_(volume.narrow(axis, 0, n - k))
    else:
        out.narrow(axis, 0, n - k).copy_(volume.narrow(axis, k, n - k))
    return out


class Augmenter:
    """Random 3-D augmentation of a batch, strength ``s`` in [0, 1], of one :data:`AUGMENTATIONS` kind.

    ``flips``: per volume, a flip along each spatial axis with probability 0.5·s (H and W) and
    0.25·s (D), intensity ``x × (1 + U(−0.15, 0.15)·s) + U(−0.1, 0.1)·s`` per channel, Gaussian
    noise of standard deviation 0.03·s. Labels get the same flips.

    ``study``: the study's ``rotate_then_clip_translate`` (``utils/custom_augment.py:32-64``,
    ``dataio/dataISLES2017.py:276-308``), applied to a volume with probability s (the study made 10
    copies of each case, the first unchanged: s = 0.9): every axial slice rotated by θ ~ U(−20°, 20°)
    (rounded to 0.1°, :func:`rotate_slices`, nearest neighbour), then shifted (:func:`translate`) by ⌊U(−r, r)⌋ voxels
    along D, H and W with r = ⌈0.2 · size⌉ (zero fill), and the image's intensities clipped to [0, c],
    c ~ U(0.3, 1) rounded to 0.01 (the study's "crop"; it assumes inputs in [0, 1], the ``minmax``
    normalisation). The label gets the same rotation and shifts (nearest, so fractions stay fractions),
    not the clip. The study drew its copies once before training; here they are drawn per batch.

    ``both``: ``study``, then ``flips``.

    ``spatial`` (for ``native`` patches): per volume, with probability s a rotation about the slice axis by
    θ ~ U(−30°, 30°) and, independently with probability s, an in-plane zoom k ~ U(0.7, 1.4) (nnU-Net's
    ranges; in the slice plane only, as nnU-Net augments anisotropic data, and assuming square in-plane
    voxels), resampled once: images trilinearly, labels as fractions the same way, zeros outside the
    patch (``grid_sample``, ``align_corners=False``); then ``flips``.

    Args:
        strength: s; 0 returns batches unchanged.
        seed: seeds the augmenter's own generator (independent of the model's).
        kind: one of :data:`AUGMENTATIONS`.
    """

    def __init__(self, strength: float, seed: int = 0, kind: str = "flips"):
        if kind not in AUGMENTATIONS:
            raise ParameterError(f"augmentation '{kind}' is unknown: choose {', '.join(AUGMENTATIONS)}")
        self.strength, self.kind = strength, kind
        self.generator = torch.Generator().manual_seed(seed)

    def _uniform(self, *shape: int) -> torch.Tensor:
        return torch.rand(*shape, generator=self.generator)

    def _between(self, low: float, high: float) -> float:
        return low + (high - low) * float(torch.rand(1, generator=self.generator, dtype=torch.float64))

    def __call__(self, image: torch.Tensor, label: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.strength <= 0:
            return image, label
        if self.kind in ("study", "both"):
            image, label = self.study(image, label)
        if self.kind == "spatial":
            image, label = self.spatial(image, label)
        if self.kind in ("flips", "both", "spatial"):
            image, label = self.flips(image, label)
        return image, label

    def spatial_theta(self, h: int, w: int) -> list[list[float]]:
        """One draw of the ``spatial`` kind as ``affine_grid``'s 3×4 matrix (output → input, normalised x, y, z).

        In voxel units (X = x·w/2, Y = y·h/2) the input point is the output point rotated by θ and divided
        by the zoom k; identity when neither was drawn.
        """
        degrees = self._between(-SPATIAL_ROTATION_DEG, SPATIAL_ROTATION_DEG) \
            if float(self._uniform(1)) < self.strength else 0.0
        zoom = self._between(*SPATIAL_SCALE) if float(self._uniform(1)) < self.strength else 1.0
        c, s = math.cos(math.radians(degrees)) / zoom, math.sin(math.radians(degrees)) / zoom
        return [[c, -s * h / w, 0.0, 0.0], [s * w / h, c, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0]]

    def spatial(self, image: torch.Tensor, label: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The rotation and zoom of the ``spatial`` kind on (N, C, D, H, W) images and (N, D, H, W) labels."""
        h, w = image.shape[-2:]
        theta = torch.tensor([self.spatial_theta(h, w) for _ in range(image.shape[0])], dtype=torch.float32)
        if torch.equal(theta, torch.eye(3, 4).expand_as(theta)):
            return image, label
        grid = F.affine_grid(theta, list(image.shape), align_corners=False)
        image = F.grid_sample(image.float(), grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        label = F.grid_sample(label.float()[:, None], grid, mode="bilinear", padding_mode="zeros",
                              align_corners=False)[:, 0]
        return image, label

    def study_parameters(self, grid: tuple[int, int, int]) -> dict:
        """One draw of the study's parameters for a (D, H, W) grid (its ``generate_random_augment_params``)."""
        shifts = []
        for n in grid:
            r = math.ceil(n * STUDY_SHIFT_FRACTION)
            shifts.append(math.floor(self._between(-r, r)))
        return {"degrees": round(self._between(-STUDY_ROTATION_DEG, STUDY_ROTATION_DEG), 1), "shifts": shifts,
                "crop": round(self._between(STUDY_CROP_LOW, 1.0), 2)}

    def study(self, image: torch.Tensor, label: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The ``study`` kind on (N, C, D, H, W) images and (N, D, H, W) labels (class docstring)."""
        image, label = image.clone(), label.clone()
        for i in range(image.shape[0]):
            if float(self._uniform(1)) >= self.strength:
                continue
            p = self.study_parameters(tuple(image.shape[2:]))
            x, y = rotate_slices(image[i], p["degrees"]), rotate_slices(label[i], p["degrees"])
            for axis, voxels in enumerate(p["shifts"]):
                x, y = translate(x, voxels, axis + 1), translate(y, voxels, axis)
            image[i], label[i] = x.clamp(0.0, p["crop"]), y
        return image, label

    def flips(self, image: torch.Tensor, label: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The ``flips`` kind (class docstring)."""
        s = self.strength
        image, label = image.clone(), label.clone()
        n, c = image.shape[:2]
        for i in range(n):
            for axis, chance in ((1, 0.25 * s), (2, 0.5 * s), (3, 0.5 * s)):
                if float(self._uniform(1)) < chance:
                    image[i] = image[i].flip(axis)
                    label[i] = label[i].flip(axis - 1)
        scale = 1 + (self._uniform(n, c, 1, 1, 1) * 0.3 - 0.15) * s
        shift = (self._uniform(n, c, 1, 1, 1) * 0.2 - 0.1) * s
        noise = torch.randn(image.shape, generator=self.generator) * (0.03 * s)
        return image * scale + shift + noise, label


def stack_batch(cases: Sequence[PreparedCase]) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, C, D, H, W) images and (N, D, H, W) label fractions of prepared cases."""
    image = torch.from_numpy(np.stack([c.image for c in cases]))
    label = torch.from_numpy(np.stack([c.label for c in cases]))
    return image, label


def optimizer_step(loss: torch.Tensor, optimizer: torch.optim.Optimizer,
                   scaler: torch.amp.GradScaler | None) -> None:
    """Back-propagate ``loss`` and step, through the gradient scaler under mixed precision."""
    if scaler is not None:
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
    else:
        loss.backward()
        optimizer.step()


def train_epoch(model: nn.Module, cases: Sequence[PreparedCase], optimizer: torch.optim.Optimizer,
                loss_fn, augmenter: Augmenter, batch_size: int, device: torch.device,
                scaler: torch.amp.GradScaler | None, order: torch.Generator,
                sampler: PatchSampler | None = None) -> float:
    """One pass over ``cases`` in a random order (whole volumes, or one ``sampler`` patch each); the mean loss."""
    model.train()
    permutation = torch.randperm(len(cases), generator=order).tolist()
    losses = []
    for start in range(0, len(cases), batch_size):
        batch = [cases[i] for i in permutation[start:start + batch_size]]
        image, label = augmenter(*(stack_batch(batch) if sampler is None else sampler.batch(batch)))
        image, label = image.to(device), label.to(device)
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, enabled=scaler is not None):
            loss = loss_fn(model(image), label)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"training loss became {loss.item()}: lower the learning rate")
        optimizer_step(loss, optimizer, scaler)
        losses.append(float(loss.detach()))
    return float(np.mean(losses))


@torch.no_grad()
def validate(model: nn.Module, cases: Sequence[PreparedCase], device: torch.device,
             threshold: float = 0.5, amp: bool = False,
             window: SlidingWindow | None = None) -> tuple[dict[str, float], list[dict]]:
    """Segmentation metrics on each case's native grid.

    The whole prepared volume is predicted at once (``window`` None, ``seed`` mode) or by Gaussian sliding
    windows (``native`` mode), then resampled to the native grid and thresholded there.

    Returns:
        (mean of each metric over cases as ``val_<metric>``, per-case dicts with ``case``).
    """
    per_case = []
    for case in cases:
        if case.native_label is None:
            raise DataError(f"validation case {case.case_id} has no ground truth: use training cases")
        probability = predict_probability(model, torch.from_numpy(case.image[None]), device, amp, window)
        native = to_native(probability, case.native_shape)[0]
        metrics = segmentation_metrics(native > threshold, case.native_label, case.spacing)
        per_case.append({"case": case.case_id, **metrics})
    means = {f"val_{k}": float(np.mean([c[k] for c in per_case])) for k in METRIC_NAMES}
    return means, per_case


@dataclass
class EarlyStopping:
    """Stop after ``patience`` epochs without improving the best score by more than ``min_delta``."""

    patience: int
    min_delta: float = 1e-4
    best: float = -math.inf
    best_epoch: int = -1
    history: list[float] = field(default_factory=list)

    def update(self, score: float, epoch: int) -> bool:
        """Record a score; True when it is a new best."""
        self.history.append(score)
        if score > self.best + self.min_delta:
            self.best, self.best_epoch = score, epoch
            return True
        return False

    def should_stop(self, epoch: int) -> bool:
        """True when ``patience`` epochs passed since the best one."""
        return self.patience > 0 and epoch - self.best_epoch >= self.patience


def save_checkpoint(path: str | Path, model: nn.Module, optimizer: torch.optim.Optimizer | None,
                    epoch: int, history: list[dict], extra: dict | None = None) -> Path:
    """Atomically write weights, optimiser state, epoch, history and the build config (JSON).

    The file loads with ``torch.load(path, weights_only=True)``: the build configuration and
    everything else that is not a tensor are stored as JSON strings.
    """
    payload = {
        "state_dict": model.state_dict(),
        "optimizer": optimizer.state_dict() if optimizer is not None else {},
        "epoch": int(epoch),
        "build_config": json.dumps(getattr(model, "build_config", {})),
        "history": json.dumps(history),
        "extra": json.dumps(extra or {}),
    }
    with atomic_file(path) as tmp:
        torch.save(payload, tmp)
    return Path(path)


def load_checkpoint(path: str | Path) -> dict:
    """Read a checkpoint with ``weights_only=True``; JSON fields are decoded.

    Raises:
        DataError: the file is missing or not a strokelens checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"checkpoint '{path}' does not exist: give a path written by training")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
        for key in ("build_config", "history", "extra"):
            payload[key] = json.loads(payload[key])
    except Exception as exc:
        raise DataError(f"'{path}' is not a strokelens checkpoint ({type(exc).__name__}): "
                        "give a checkpoint written by training") from exc
    return payload


def load_model(path: str | Path) -> nn.Module:
    """Rebuild a model from a checkpoint (architecture from its build config), in eval mode."""
    from models.registry import build_from_config

    payload = load_checkpoint(path)
    model = build_from_config(payload["build_config"])
    model.load_state_dict(payload["state_dict"])
    return model.eval()


@dataclass
class FitResult:
    """What :func:`fit` returns: best validation Dice and epoch, history, timings."""

    best_dice: float
    best_epoch: int
    history: list[dict]
    seconds_per_epoch: float
    best_checkpoint: Path | None
    stopped_early: bool
    out_of_time: bool = False
    """The deadline stopped training before its last epoch (a budget cut, not early stopping)."""


def fit(model: nn.Module, train_cases: Sequence[PreparedCase], val_cases: Sequence[PreparedCase],
        config: TrainConfig, *, checkpoint_dir: str | Path | None = None,
        resume: str | Path | None = None, on_epoch: Callable[[int, dict], None] | None = None,
        deadline: float | None = None, progress: bool = True,
        preprocess: PreprocessConfig | None = None) -> FitResult:
    """Train ``model`` with validation every epoch, checkpoints, early stopping and resume.

    Args:
        model: a registry model (its ``build_config`` goes into checkpoints).
        train_cases: prepared training cases (with labels).
        val_cases: prepared validation cases (with native labels).
        config: the training settings.
        checkpoint_dir: writes ``last.pt`` every epoch and ``best.pt`` at each new best.
        resume: a ``last.pt`` to continue from (weights, optimiser, epoch, history).
        on_epoch: called as ``on_epoch(epoch, metrics)`` after validation; it may raise (for
            example ``optuna.TrialPruned``) to stop.
        deadline: a ``time.monotonic()`` value after which no new epoch starts (time budgets).
        progress: show a progress bar over epochs.
        preprocess: how the cases were prepared; ``native`` mode trains on patches of its ``grid`` and
            validates by sliding windows (module docstring); None or ``seed``: whole volumes. ``best.pt``
            records it under ``extra["preprocess"]``.

    Returns:
        The :class:`FitResult`.
    """
    from tqdm import tqdm

    if not train_cases or not val_cases:
        raise DataError(f"training needs training and validation cases (got {len(train_cases)} and "
                        f"{len(val_cases)}): give a data folder with at least 2 labelled cases")
    seed_everything(config.seed)
    device = resolve_device(config.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    model.to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, betas=config.betas,
                                 weight_decay=config.weight_decay)
    scaler = torch.amp.GradScaler("cuda") if config.amp and device.type == "cuda" else None
    loss_fn = loss_function(config.loss)
    augmenter = Augmenter(config.augment, seed=config.seed + 1, kind=config.augmentation)
    order = torch.Generator().manual_seed(config.seed + 2)
    native = preprocess is not None and preprocess.mode == "native"
    sampler = PatchSampler(preprocess.grid_dhw, config.foreground, seed=config.seed + 3) if native else None
    window = preprocess.window() if native else None
    recorded = {"train": asdict(config), **({"preprocess": preprocess.to_dict()} if preprocess is not None else {})}
    stopper = EarlyStopping(config.patience)
    history: list[dict] = []
    start_epoch = 0
    if resume is not None:
        state = load_checkpoint(resume)
        model.load_state_dict(state["state_dict"])
        if state["optimizer"]:
            optimizer.load_state_dict(state["optimizer"])
        history = state["history"]
        start_epoch = state["epoch"] + 1
        for row in history:
            stopper.update(row["val_dice"], row["epoch"])
        extra = state["extra"]
        if "rng" in extra:
            torch.set_rng_state(torch.tensor(extra["rng"]["torch"], dtype=torch.uint8))
            augmenter.generator.set_state(torch.tensor(extra["rng"]["augment"], dtype=torch.uint8))
            order.set_state(torch.tensor(extra["rng"]["order"], dtype=torch.uint8))
            if sampler is not None and "patches" in extra["rng"]:
                sampler.generator.set_state(torch.tensor(extra["rng"]["patches"], dtype=torch.uint8))
    folder = Path(checkpoint_dir) if checkpoint_dir is not None else None
    best_path = folder / "best.pt" if folder is not None else None
    stopped = out_of_time = False
    bar = tqdm(range(start_epoch, config.epochs), desc="epochs", unit="epoch", disable=not progress,
               leave=False)
    for epoch in bar:
        started = time.perf_counter()
        train_loss = train_epoch(model, train_cases, optimizer, loss_fn, augmenter, config.batch_size,
                                 device, scaler, order, sampler)
        means, _ = validate(model, val_cases, device, config.threshold, config.amp, window)
        row = {"epoch": epoch, "train_loss": train_loss, **means,
               "epoch_seconds": time.perf_counter() - started}
        history.append(row)
        improved = stopper.update(means["val_dice"], epoch)
        if folder is not None:
            rng = {"torch": torch.get_rng_state().tolist(),
                   "augment": augmenter.generator.get_state().tolist(),
                   "order": order.get_state().tolist(),
                   **({"patches": sampler.generator.get_state().tolist()} if sampler is not None else {})}
            save_checkpoint(folder / "last.pt", model, optimizer, epoch, history, {"rng": rng})
            if improved:
                save_checkpoint(best_path, model, None, epoch, history, recorded)
        bar.set_postfix(loss=f"{train_loss:.3f}", dice=f"{means['val_dice']:.3f}")
        if on_epoch is not None:
            on_epoch(epoch, row)
        early = stopper.should_stop(epoch)
        if early or (deadline is not None and time.monotonic() > deadline):
            stopped, out_of_time = True, not early and epoch + 1 < config.epochs
            break
    seconds = float(np.mean([r["epoch_seconds"] for r in history])) if history else 0.0
    return FitResult(stopper.best, stopper.best_epoch, history, seconds, best_path, stopped, out_of_time)
