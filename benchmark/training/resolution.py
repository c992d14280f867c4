"""Training for the resolution study: one configuration trained at several input resolutions.

A setting is a preprocessing (:class:`~benchmark.data.preprocessing.PreprocessConfig`): the study's
``seed`` grids (48×48×19, and its other grids 96×96×19, 144×144×19, 192×192×19, X×Y×Z) or ``native``
mode from the data set's plan (target spacing, patches, sliding windows). Everything else is held
fixed across settings, so input resolution is the only thing that differs:

* the same architecture, width, loss, learning rate, weight decay, augmentation (kind and strength),
  epochs, batch size, seed (so the same initial weights) and training cases;
* the same normalisation for every setting (the plan's, z-score inside the brain mask by default;
  the study's min-max would change two things at once);
* one optimiser step per ``batch_size`` training cases in both modes (a ``native`` epoch draws one
  patch per case, :class:`~benchmark.data.patches.PatchSampler`), no early stopping, and the weights
  of the **last** epoch are the setting's model: no epoch is selected on the cases the study then
  scores, so no setting profits from selection.

Each setting trains in ``<checkpoints>/resolution-<study>/<setting>/`` and resumes from its ``last.pt``
when stopped; a setting whose ``final.pt`` exists for the same configuration is not trained again.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from benchmark.data.preprocessing import PreparedCase, PreprocessConfig
from benchmark.errors import ParameterError
from benchmark.training.loop import TrainConfig, fit, load_checkpoint, save_checkpoint, seed_everything
from models.registry import build

STUDY_GRIDS: tuple[tuple[int, int, int], ...] = ((48, 48, 19), (96, 96, 19), (144, 144, 19), (192, 192, 19))
"""The reproduced study's input grids (X, Y, Z); 48×48×19 is the seed grid every setting is compared with."""
CPU_GRIDS: tuple[tuple[int, int, int], ...] = STUDY_GRIDS[:2]
"""The grids trained by default on a CPU: 144×144×19 and 192×192×19 cost 9× and 16× the 48×48×19 voxels per
step (about 6 and 10 minutes per setting at 24 epochs on 2 cores), so they are asked for with ``--grids``."""
NATIVE = "native"
"""The name of the native-mode setting."""
FINAL = "final.pt"
"""A setting's trained weights (the last epoch), beside its ``settings.json``."""


@dataclass(frozen=True)
class Setting:
    """One input resolution of the study: a name (``48x48x19`` or ``native``) and its preprocessing."""

    name: str
    preprocess: PreprocessConfig


@dataclass(frozen=True)
class StudyTraining:
    """The configuration every setting trains with (module docstring).

    Attributes:
        architecture: the registry name.
        width: its width multiplier.
        epochs: epochs per setting.
        batch_size: volumes (``seed``) or patches (``native``) per step.
        lr: Adam's learning rate.
        weight_decay: Adam's weight decay.
        loss: a :data:`benchmark.training.loop.LOSSES` name.
        augment: augmentation strength.
        augmentation: augmentation kind (the same for every setting).
        seed: the seed of the initial weights and of the training order.
        device: ``cpu``, ``cuda`` or ``auto``.
    """

    architecture: str = "unet3d"
    width: float = 0.25
    epochs: int = 24
    batch_size: int = 2
    lr: float = 1e-3
    weight_decay: float = 1e-5
    loss: str = "dice_ce"
    augment: float = 0.3
    augmentation: str = "flips"
    seed: int = 0
    device: str = "auto"

    def train_config(self) -> TrainConfig:
        """The :class:`TrainConfig` of every setting: no early stopping."""
        return TrainConfig(epochs=self.epochs, batch_size=self.batch_size, lr=self.lr,
                           weight_decay=self.weight_decay, loss=self.loss, augment=self.augment,
                           augmentation=self.augmentation, patience=0, seed=self.seed, device=self.device)


def parse_grid(text: str) -> tuple[int, int, int]:
    """``'96x96x19'`` → (96, 96, 19); a :class:`ParameterError` names a bad grid."""
    try:
        grid = tuple(int(v) for v in text.lower().split("x"))
    except ValueError:
        grid = ()
    if len(grid) != 3 or min(grid) < 8:
        raise ParameterError(f"grid '{text}' is not X x Y x Z voxels of at least 8 each, like 96x96x19")
    return grid  # type: ignore[return-value]


def settings(grids: Sequence[tuple[int, int, int]], native: PreprocessConfig | None) -> list[Setting]:
    """The seed grids at ``native``'s normalisation and modalities (or the defaults), then ``native`` when given.

    The first setting is the comparison's reference (the seed grid 48×48×19 when it is among ``grids``).
    """
    if not grids and native is None:
        raise ParameterError("the resolution study needs at least one grid or the native setting")
    base = native or PreprocessConfig(normalization="robust")
    ordered = sorted(dict.fromkeys(tuple(g) for g in grids), key=lambda g: g[0] * g[1] * g[2])
    chosen = [Setting("x".join(map(str, g)), PreprocessConfig(modalities=base.modalities,
                                                             normalization=base.normalization, grid=g))
              for g in ordered]
    if native is not None:
        if native.mode != NATIVE:
            raise ParameterError(f"the native setting needs a native preprocessing (got mode '{native.mode}')")
        chosen.append(Setting(NATIVE, native))
    return chosen


def _fingerprint(setting: Setting, training: StudyTraining, train_ids: Sequence[str]) -> dict:
    return {"setting": setting.name, "preprocess": setting.preprocess.to_dict(), "training": asdict(training),
            "train_cases": sorted(train_ids)}


def train_setting(setting: Setting, train: Sequence[PreparedCase], val: Sequence[PreparedCase],
                  training: StudyTraining, folder: Path, progress: bool = True,
                  on_epoch: Callable[[int, dict], None] | None = None) -> tuple[nn.Module, list[dict], bool]:
    """Train (or reload) one setting's model; returns (model at its last epoch, epoch history, trained now).

    Validation Dice is computed every epoch (on the native grid, sliding windows in ``native`` mode) for the
    curves; it selects nothing.
    """
    folder.mkdir(parents=True, exist_ok=True)
    wanted = _fingerprint(setting, training, [c.case_id for c in train])
    marker, final = folder / "settings.json", folder / FINAL
    same = marker.is_file() and json.loads(marker.read_text()) == wanted
    seed_everything(training.seed)  # every setting starts from the same initial weights
    model = build(training.architecture, len(setting.preprocess.modalities), width=training.width)
    if same and final.is_file():
        state = load_checkpoint(final)
        model.load_state_dict(state["state_dict"])
        return model.eval(), state["history"], False
    resume = folder / "last.pt" if same and (folder / "last.pt").is_file() else None
    marker.write_text(json.dumps(wanted, indent=2) + "\n")
    result = fit(model, train, val, training.train_config(), checkpoint_dir=folder, resume=resume,
                 on_epoch=on_epoch, progress=progress, preprocess=setting.preprocess)
    model = model.cpu().eval()
    save_checkpoint(final, model, None, result.history[-1]["epoch"], result.history,
                    {"train": asdict(training.train_config()), "preprocess": setting.preprocess.to_dict()})
    return model, result.history, True


def free(model: nn.Module) -> None:
    """Release a setting's model before the next one trains (large grids hold hundreds of MB on a GPU)."""
    model.cpu()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
