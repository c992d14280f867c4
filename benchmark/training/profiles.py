"""Search profiles: the budget, the space searched and the training grid, chosen by name.

``default`` fits a 2-core CPU in minutes: every family trains one cover trial of 24 epochs with the
same hyper-parameters (5 families × 24 epochs, about 8 minutes at 48×48×19 and width 0.25), and the
500 s time budget then cuts the TPE trials that follow, so ``make run`` stays within 15 minutes.
``gpu`` is what ``default`` becomes on CUDA; ``paper``
trains the study's network (``unet3d_reference``) with the study's settings, read from its public code
(``../shared/seed/code/isles2017``):

* loss: plain cross-entropy, ``criterion = nn.CrossEntropyLoss()`` (``pipeline/training_aux.py:24``,
  used in ``utils/loss.py:62``); soft Dice is only an evaluation metric there;
* optimiser: Adam, lr 2e-4, betas (0.5, 0.9) (``config.json:25-29``), and no weight decay: its Adam
  branch passes only lr and betas (``utils/optimizer.py:14-15``; the configured ``weight_decay``
  1e-5 reaches SGD only, ``utils/optimizer.py:9-11``);
* augmentation: ``rotate_then_clip_translate`` (``dataio/dataISLES2017.py:200-213``,
  ``utils/custom_augment.py:17-64``): 10 copies per case, the first unchanged, so a volume is
  augmented with probability 0.9 (:class:`benchmark.training.loop.Augmenter`, ``study``). The
  study's shipped configurations select ``no_augmentation`` (``config.json:45-47``); the profile
  uses the augmentation its code offers (``--augmentation flips`` with augment 0, or a new profile,
  turns it off);
* batch size: 1 (``config.json:16``); input grid 48×48×19 (``config.json:22``).

Epochs are not among the published settings (the shipped ``config.json:17`` says 2); the profile keeps 100.

``smoke`` is the newcomer's first run, about 2 minutes of the whole pipeline on a 2-core CPU
(``python -m mlproject.main --profile smoke``): two families at width 0.125 for 3 epochs, one
validation case explained by two LRP variants and the random floor, unfiltered. It has its own study
(``smoke``) and experiments (``strokelens-smoke``, ``strokelens-smoke-evaluation``, …), so it never
mixes with ``make run``'s.

A profile carries the study and the MLflow experiment its runs go to by default (``--study`` and
``--experiment`` override them); :func:`experiment_of` gives a study's default experiment to the
stages that are called with a study only (evaluate, report, experiments).

Preprocessing: ``default`` and ``paper`` train the study's ``seed`` grid (``paper`` reproduces the study
exactly; native patches at about 1.7×1.7×4.8 mm cost about ten times the voxels per step of the 48×48×19
grid, which no longer fits ``make run``'s 15 minutes on 2 CPU cores); ``gpu`` trains in ``native`` mode
(the data set's plan, patches, sliding windows) with ``spatial`` augmentation. ``--preprocessing`` chooses
per study (:func:`with_preprocessing`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from benchmark.errors import ParameterError
from benchmark.training.loop import AUGMENTATIONS, LOSSES
from models.registry import available


@dataclass(frozen=True)
class Profile:
    """A search set-up: budget, the space searched, and the training grid.

    Attributes:
        name: the profile's name.
        trials: trials per invocation.
        epochs: maximum epochs per trial.
        architectures: families searched.
        widths: width multipliers searched.
        grid: training grid (X, Y, Z).
        lr: (low, high) log-uniform learning-rate range.
        weight_decay: (low, high) log-uniform range.
        losses: losses searched.
        augment: (low, high) augmentation strength range.
        augmentation: the augmentation kind (:data:`benchmark.training.loop.AUGMENTATIONS`; not searched).
        batch_size: volumes per step.
        patience: early-stopping patience in epochs.
        warmup: epochs before the pruner may stop a trial.
        fixed: when set, every trial uses exactly these hyper-parameters (no search).
        first: hyper-parameters of the first trial of a new study (a known-good start).
        time_budget: seconds after which no new trial or epoch starts (None: no limit).
        cover: a new study follows ``first`` with one trial per other architecture (``first``'s
            hyper-parameters, that family), so every family reaches the leaderboard.
        folds: K cross-validation folds (:mod:`benchmark.training.folds`): after the search, each
            architecture's best trial is trained again on folds 1 … K − 1, and evaluation scores every
            labelled case out of fold. ``default`` and ``gpu`` keep 1: ``make run`` must finish within
            15 minutes on a 2-core CPU, where each extra fold costs one more full training per architecture
            (5 families × 24 epochs); ``paper`` uses nnU-Net's 5.
        repeats: R trainings of each fold with seeds derived from the study's seed (1: no repeats).
        study: the study's name when ``--study`` is not given.
        experiment: the MLflow experiment (the study's; its sections are named after it,
            :func:`tracking.names.experiment_for`) when ``--experiment`` is not given.
        explain_methods: the methods ``mlproject.main`` explains the champion with (None: all).
        explain_filters: its filters (None: the pipeline's default, raw and the study's strongest pass).
        explain_cases: validation cases explained.
        latency_repeats: timed repeats of each latency in the evaluation.
        preprocessing: ``seed`` (the study's grid) or ``native`` (the data set's plan; :func:`with_preprocessing`).
    """

    name: str
    trials: int
    epochs: int
    architectures: tuple[str, ...]
    widths: tuple[float, ...]
    grid: tuple[int, int, int] = (48, 48, 19)
    lr: tuple[float, float] = (5e-4, 5e-3)
    weight_decay: tuple[float, float] = (1e-6, 1e-4)
    losses: tuple[str, ...] = ("dice", "dice_ce")
    augment: tuple[float, float] = (0.0, 0.8)
    augmentation: str = "flips"
    batch_size: int = 2
    patience: int = 8
    warmup: int = 4
    fixed: dict | None = None
    first: dict | None = None
    time_budget: float | None = None
    cover: bool = False
    folds: int = 1
    repeats: int = 1
    study: str = "strokelens"
    experiment: str = "strokelens"
    explain_methods: tuple[str, ...] | None = None
    explain_filters: tuple[str, ...] | None = None
    explain_cases: int = 2
    latency_repeats: int = 5
    preprocessing: str = "seed"


SEARCHED: tuple[str, ...] = tuple(a for a in available() if a != "unet3d_reference")
"""Families the default and gpu searches compare; ``unet3d_reference`` (the study's exact network, for
reproducing its maps) is the same family as ``unet3d`` and is trained only when named."""

PROFILES: dict[str, Profile] = {
    "default": Profile(
        name="default", trials=6, epochs=24, architectures=SEARCHED, widths=(0.125, 0.25),
        patience=10, warmup=6, time_budget=500.0, cover=True,
        first={"architecture": "unet3d", "width": 0.25, "lr": 3e-3, "weight_decay": 1e-5,
               "loss": "dice_ce", "augment": 0.5}),
    "gpu": Profile(
        name="gpu", trials=20, epochs=150, architectures=SEARCHED, widths=(0.5, 1.0),
        lr=(1e-4, 3e-3), batch_size=4, patience=25, warmup=15, cover=True, preprocessing="native",
        first={"architecture": "unet3d", "width": 1.0, "lr": 1e-3, "weight_decay": 1e-5,
               "loss": "dice_ce", "augment": 0.5}),
    "paper": Profile(
        name="paper", trials=1, epochs=100, architectures=("unet3d_reference",), widths=(1.0,), batch_size=1,
        patience=0, warmup=10**6, folds=5, losses=("ce",), augmentation="study",
        fixed={"architecture": "unet3d_reference", "width": 1.0, "lr": 2e-4, "weight_decay": 0.0,
               "loss": "ce", "augment": 0.9}),
    "smoke": Profile(
        name="smoke", trials=2, epochs=3, architectures=("unet3d", "segresnet3d"), widths=(0.125,),
        patience=0, warmup=10**6, cover=True, study="smoke", experiment="strokelens-smoke",
        first={"architecture": "unet3d", "width": 0.125, "lr": 3e-3, "weight_decay": 1e-5,
               "loss": "dice_ce", "augment": 0.5},
        explain_methods=("lrp_epsilon", "lrp_zplus", "random"), explain_filters=("raw",), explain_cases=1,
        latency_repeats=2),
}

DEFAULT_PROFILE = "default"
DEFAULT_STUDY = PROFILES[DEFAULT_PROFILE].study
"""The study of the commands that take a study and no profile (evaluate, report, experiments)."""


def experiment_of(study: str) -> str:
    """The default MLflow experiment of a study: the experiment of the profile whose study it is, else the default's."""
    return next((p.experiment for p in PROFILES.values() if p.study == study), PROFILES[DEFAULT_PROFILE].experiment)


def resolve_profile(name: str, device: torch.device) -> Profile:
    """The profile called ``name``; ``default`` becomes ``gpu`` when training on CUDA."""
    if name not in PROFILES:
        raise ParameterError(f"profile '{name}' is unknown: choose one of {', '.join(PROFILES)}")
    if name == DEFAULT_PROFILE and device.type == "cuda":
        return PROFILES["gpu"]
    return PROFILES[name]


def restrict(profile: Profile, architectures: list[str], widths: list[str]) -> Profile:
    """The profile with its search space narrowed to the given architectures and widths.

    Raises:
        ParameterError: an unknown architecture or a width that is not a positive number.
    """
    changes: dict = {}
    if architectures:
        unknown = [a for a in architectures if a not in available()]
        if unknown:
            raise ParameterError(f"architecture '{unknown[0]}' is unknown: choose from {', '.join(available())}")
        changes["architectures"] = tuple(architectures)
    if widths:
        try:
            values = tuple(float(w) for w in widths)
        except ValueError:
            values = (0.0,)
        if min(values) <= 0:
            raise ParameterError(f"widths {','.join(widths)} must be positive numbers such as 0.25")
        changes["widths"] = values
    if not changes:
        return profile
    first = profile.first
    if first is not None and (first["architecture"] not in changes.get("architectures", (first["architecture"],))
                              or first["width"] not in changes.get("widths", (first["width"],))):
        first = None
    if profile.fixed is not None:
        raise ParameterError(f"profile '{profile.name}' fixes its architecture: drop --architectures/--widths")
    return dataclasses.replace(profile, first=first, **changes)


def with_training(profile: Profile, loss: str = "", augmentation: str = "") -> Profile:
    """The profile with its loss and/or augmentation kind replaced (empty or ``auto``: the profile's).

    A fixed profile gets the loss in ``fixed``; a search searches that loss only (its first trial too).

    Raises:
        ParameterError: an unknown loss or augmentation.
    """
    changes: dict = {}
    if loss and loss != "auto":
        if loss not in LOSSES:
            raise ParameterError(f"loss '{loss}' is unknown: choose {', '.join(LOSSES)} (or auto: the profile's)")
        changes["losses"] = (loss,)
        if profile.fixed is not None:
            changes["fixed"] = {**profile.fixed, "loss": loss}
        if profile.first is not None:
            changes["first"] = {**profile.first, "loss": loss}
    if augmentation and augmentation != "auto":
        if augmentation not in AUGMENTATIONS:
            raise ParameterError(f"augmentation '{augmentation}' is unknown: choose {', '.join(AUGMENTATIONS)} "
                                 "(or auto: the profile's)")
        changes["augmentation"] = augmentation
    return dataclasses.replace(profile, **changes) if changes else profile


def with_preprocessing(profile: Profile, mode: str = "") -> Profile:
    """The profile in preprocessing ``mode`` (empty or ``auto``: the profile's own).

    In ``native`` mode a profile's ``flips`` augmentation becomes ``spatial`` (rotation and zoom in the slice
    plane, then the same flips: :class:`benchmark.training.loop.Augmenter`), nnU-Net's augmentation of
    patches; ``--augmentation`` still chooses any kind afterwards (:func:`with_training`).

    Raises:
        ParameterError: an unknown mode.
    """
    from benchmark.data.preprocessing import MODES

    mode = (mode or "auto").strip()
    if mode == "auto":
        mode = profile.preprocessing
    if mode not in MODES:
        raise ParameterError(f"preprocessing '{mode}' is unknown: choose {', '.join(MODES)} (or auto: the profile's)")
    augmentation = "spatial" if mode == "native" and profile.augmentation == "flips" else profile.augmentation
    return dataclasses.replace(profile, preprocessing=mode, augmentation=augmentation)
