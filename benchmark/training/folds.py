"""Cross-validation folds and repeated seeds of a study's best configurations, as nnU-Net trains its folds.

The study's split file holds K folds (:mod:`benchmark.data.splits`); the search selects
hyper-parameters on fold 0 (its train/validation sides). Afterwards :func:`train_folds` takes each
architecture's best trial (:func:`best_trials`: the same trial the evaluation and the leaderboard
show, complete trials first) and trains its configuration again:

* on every fold k = 0 … K − 1 and repeat r = 0 … R − 1 except (0, 0), which is the trial itself;
* with the trial's hyper-parameters (architecture, width, lr, weight decay, loss, augmentation
  strength and kind),
  its epoch budget and batch size (its logged ``epochs`` and ``batch_size``), its preprocessing,
  the same early-stopping patience (none for a cover trial) and no pruning and no time budget;
* with the seed :func:`fold_seed` = ``trial seed + trial number + 10000 · r``: repeat 0 of every
  fold starts from the trial's own initial weights, repeat r from another draw;
* in ``<checkpoints>/<study>/<architecture>/fold_<k>/`` (repeat 0) or ``…/fold_<k>/repeat_<r>/``,
  each as one nested MLflow run under ``folds-<study>`` (tags fold, repeat, architecture, study and the
  trial run, see :func:`tracking.runs.fold_run`) that logs its epochs and best weights.

A fold whose complete run with weights exists for the same trial is skipped, so a stopped command
resumes: run it again; an interrupted fold continues from its local ``last.pt``. When an
architecture's best trial changes (more trials), its folds are trained again for the new trial.
:func:`fold_models` finds the K × R models of a trial for evaluation and the ensemble export.
This module does not import Optuna: it reads the trials from MLflow.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from benchmark.data.cases import check_labels
from benchmark.data.preprocessing import PreprocessCache, PreprocessConfig
from benchmark.data.splits import Split
from benchmark.errors import ParameterError
from benchmark.training.loop import TrainConfig, fit, load_model, resolve_device, seed_everything
from models.registry import build, parameter_count
from tracking import model_registry
from tracking import runs as tracking
from tracking.records import RunRecord, Store, best_trial_per_architecture

REPEAT_SEED_STRIDE = 10_000
"""Seed offset between two repeats of a fold (larger than any study's number of trials)."""
FOLD_FILE = "fold.json"
"""Written in a fold's folder: the trial it trains, so a folder of an older best trial is not resumed."""
HPARAMS = ("architecture", "width", "lr", "weight_decay", "loss", "augment")


@dataclass(frozen=True)
class FoldModel:
    """One trained model of a configuration: its fold, repeat and the MLflow run that holds its weights."""

    fold: int
    repeat: int
    run_id: str


@dataclass
class FoldsResult:
    """What :func:`train_folds` did.

    Attributes:
        run_id: the ``folds-<study>`` run ("" when there was nothing to train).
        folds: K.
        repeats: R.
        trained: (architecture, fold, repeat) trained now.
        skipped: (architecture, fold, repeat) finished earlier.
    """

    run_id: str
    folds: int
    repeats: int
    trained: list[tuple[str, int, int]] = field(default_factory=list)
    skipped: list[tuple[str, int, int]] = field(default_factory=list)

    def line(self) -> str:
        """The summary line the command line prints."""
        where = f" under MLflow run {self.run_id}" if self.run_id else ""
        return (f"cross-validation: {self.folds} fold(s) × {self.repeats} repeat(s); trained {len(self.trained)} "
                f"model(s), skipped {len(self.skipped)} finished earlier{where}")


def fold_seed(trial_seed: int, trial_number: int, repeat: int) -> int:
    """The seed of repeat ``repeat`` of a trial's configuration: ``trial_seed + trial_number + 10000 · repeat``."""
    return trial_seed + trial_number + REPEAT_SEED_STRIDE * repeat


def fold_folder(root: Path, architecture: str, fold: int, repeat: int) -> Path:
    """``<root>/<architecture>/fold_<k>/`` for repeat 0, ``…/fold_<k>/repeat_<r>/`` for later repeats."""
    folder = Path(root) / architecture / f"fold_{fold}"
    return folder if repeat == 0 else folder / f"repeat_{repeat}"


def best_trials(store: Store, study: str) -> dict[str, RunRecord]:
    """Per architecture, its best trial run with weights (complete first, then pruned), as evaluation ranks them."""
    return {a: t for a, t in best_trial_per_architecture(store.runs("trial", study)).items()
            if store.has_checkpoint(t.run_id)}


def finished_folds(store: Store, study: str, trial_run: str) -> dict[tuple[int, int], str]:
    """(fold, repeat) → run id of the complete fold runs with weights of ``trial_run``, newest first wins."""
    out: dict[tuple[int, int], str] = {}
    for run in store.runs("fold", study, f"tags.`{tracking.TAG_MODEL_RUN}` = '{trial_run}'"):
        key = (int(run.tags.get(tracking.TAG_FOLD, -1)), int(run.tags.get(tracking.TAG_REPEAT, -1)))
        if run.state == tracking.STATE_COMPLETE and key not in out and store.has_checkpoint(run.run_id):
            out[key] = run.run_id
    return out


def fold_models(store: Store, study: str, trial_run: str, folds: int, repeats: int | None = None
                ) -> list[FoldModel]:
    """The K × R models of a trial's configuration, fold-major; (0, 0) is the trial itself.

    Args:
        store: the experiment's runs.
        study: the study.
        trial_run: the trial whose configuration the folds train.
        folds: K, from the study's split.
        repeats: R; None: as many as fold 0 has (1 when no repeat was trained).

    Raises:
        ParameterError: a fold or repeat has no finished model; the message names them and the command.
    """
    found = {(0, 0): trial_run, **finished_folds(store, study, trial_run)}
    if repeats is None:
        repeats = 1 + max((r for k, r in found if k == 0), default=0)
    missing = [(k, r) for k in range(folds) for r in range(repeats) if (k, r) not in found]
    if missing:
        named = ", ".join(f"fold {k} repeat {r}" for k, r in missing[:6]) + (" …" if len(missing) > 6 else "")
        raise ParameterError(f"trial run {trial_run} of study '{study}' has no finished model for {named}: train "
                             f"them with mlflow run . -e train -P study={study} -P folds={folds} -P repeats={repeats} "
                             "-P trials=1 (finished folds are skipped)")
    return [FoldModel(k, r, found[(k, r)]) for k in range(folds) for r in range(repeats)]


def _trial_config(trial: RunRecord, patience: int, device: str, seed: int) -> tuple[dict, TrainConfig]:
    """The trial's hyper-parameters and its training settings (from its logged parameters) with ``seed``."""
    p = trial.params
    try:
        hp = {"architecture": p["architecture"], "width": float(p["width"]), "lr": float(p["lr"]),
              "weight_decay": float(p["weight_decay"]), "loss": p["loss"], "augment": float(p["augment"])}
        config = TrainConfig(epochs=int(p["epochs"]), batch_size=int(p["batch_size"]), lr=hp["lr"],
                             weight_decay=hp["weight_decay"], loss=hp["loss"], augment=hp["augment"],
                             augmentation=p.get("augmentation", "flips"),
                             patience=0 if p.get("phase") == "cover" else patience, seed=seed, device=device)
    except (KeyError, ValueError) as exc:
        raise ParameterError(f"trial run {trial.run_id} lacks the parameter {exc} or holds a wrong value: its "
                             "folds cannot be trained with the same settings; use a new --study") from exc
    return hp, config


def train_folds(study: str, experiment: str, split: Split, repeats: int, data: str | Path, patience: int,
                checkpoints: Path, device: str = "auto", cache: Path | None = None, progress: bool = True,
                on_line: Callable[[str], None] | None = None) -> FoldsResult:
    """Train folds 0 … K − 1 × repeats 0 … R − 1 of each architecture's best trial (see the module docstring).

    Args:
        study: the study.
        experiment: its MLflow experiment (name).
        split: the study's split with its K folds.
        repeats: R.
        data: the data folder (verified against the split).
        patience: early-stopping patience of the search's profile (a cover trial's folds use none).
        checkpoints: the checkpoint root (the study's folder lies below it).
        device: auto, cpu or cuda.
        cache: the preprocessing cache folder (None: no cache).
        progress: show progress bars.
        on_line: receives one line per fold model trained or skipped.

    Raises:
        ParameterError: ``repeats`` below 1, or a trial whose settings cannot be read.
        DataError: the data changed since the split was saved.
    """
    from tqdm import tqdm

    if repeats < 1:
        raise ParameterError(f"repeats must be at least 1 (got {repeats})")
    say = on_line or (lambda line: None)
    result = FoldsResult("", split.folds, repeats)
    store = Store(experiment)
    trials = best_trials(store, study)
    jobs = []
    for architecture, trial in trials.items():
        done = finished_folds(store, study, trial.run_id)
        for k in range(split.folds):
            for r in range(repeats):
                if (k, r) == (0, 0):
                    continue
                if (k, r) in done:
                    result.skipped.append((architecture, k, r))
                    say(f"{architecture} fold {k} repeat {r}: finished earlier (MLflow run {done[(k, r)]}), skipped")
                else:
                    jobs.append((architecture, trial, k, r))
    if not jobs:
        return result
    resolve_device(device)
    by_fold = [split.resolve(data, fold=k) for k in range(split.folds)]
    params = {"study": study, "folds": split.folds, "repeats": repeats, "split": split.digest,
              "architectures": ",".join(sorted({a for a, *_ in jobs})), "models": len(jobs)}
    prepared: dict[tuple, dict] = {}
    with tracking.folds_run(study, params) as parent:
        result.run_id = parent.info.run_id
        for architecture, trial, k, r in tqdm(jobs, desc="training folds", unit="model", disable=not progress):
            _, preprocess, _ = model_registry.resolve_model(trial.run_id, experiment)
            config = PreprocessConfig.from_dict(preprocess) if preprocess else PreprocessConfig()
            if config.key() not in prepared:
                cases = PreprocessCache(config, cache)
                labelled = [ref for side in by_fold[0] for ref in side]  # fold 0's two sides: every labelled case
                prepared[config.key()] = {ref.case_id: cases.get(ref) for ref in labelled}
                check_labels(list(prepared[config.key()].values()))
            by_id = prepared[config.key()]
            train = [by_id[ref.case_id] for ref in by_fold[k][0]]
            held_out = [by_id[ref.case_id] for ref in by_fold[k][1]]
            dice = _train_one(study, trial, k, r, train, held_out, config, patience, device,
                              Path(checkpoints) / study, progress)
            result.trained.append((architecture, k, r))
            say(f"{architecture} fold {k} repeat {r}: best hold-out Dice {dice:.3f} on {len(held_out)} cases")
    return result


def _train_one(study: str, trial: RunRecord, fold: int, repeat: int, train: list, held_out: list,
               preprocess: PreprocessConfig, patience: int, device: str, root: Path, progress: bool) -> float:
    """Train one fold × repeat of a trial's configuration in its nested MLflow run; returns its best hold-out Dice."""
    number = int(trial.tags.get(tracking.TAG_TRIAL, 0))
    seed = fold_seed(int(float(trial.params.get("seed", 0))), number, repeat)
    hp, config = _trial_config(trial, patience, device, seed)
    folder = fold_folder(root, hp["architecture"], fold, repeat)
    folder.mkdir(parents=True, exist_ok=True)
    marker = folder / FOLD_FILE
    same_trial = marker.is_file() and json.loads(marker.read_text()).get("trial_run") == trial.run_id
    resume = folder / "last.pt" if same_trial and (folder / "last.pt").is_file() else None
    marker.write_text(json.dumps({"trial_run": trial.run_id, "fold": fold, "repeat": repeat, "seed": seed}) + "\n")
    (folder / "preprocess.json").write_text(json.dumps(preprocess.to_dict(), indent=2) + "\n")
    params = {**hp, "epochs": config.epochs, "batch_size": config.batch_size, "patience": config.patience,
              "augmentation": config.augmentation,
              "grid": "x".join(map(str, preprocess.grid)), "seed": seed, "fold": fold, "repeat": repeat,
              "trial_run": trial.run_id, "train_cases": len(train), "holdout_cases": len(held_out),
              "resumed_from": str(resume or "")}
    with tracking.fold_run(study, hp["architecture"], trial.run_id, fold, repeat, params):
        seed_everything(seed)
        model = build(hp["architecture"], len(preprocess.modalities), width=hp["width"])
        tracking.log_summary({"param_count": parameter_count(model)})
        result = fit(model, train, held_out, config, checkpoint_dir=folder, resume=resume,
                     on_epoch=lambda epoch, row: tracking.log_epoch(row), progress=progress, preprocess=preprocess)
        if (folder / "best.pt").is_file():
            tracking.log_checkpoint(folder / "best.pt", preprocess.to_dict())
        history = result.history
        if history:
            best = max(history, key=lambda row: row["val_dice"])
            tracking.log_summary({"best_val_dice": best["val_dice"], "best_epoch": best["epoch"],
                                  "seconds_per_epoch": float(np.mean([row["epoch_seconds"] for row in history])),
                                  "epochs_run": len(history)})
        tracking.set_state(tracking.STATE_COMPLETE)
    return result.best_dice


def load_fold_models(models: list[FoldModel], experiment: str) -> list:
    """The PyTorch models (eval mode) of ``models``, in their order."""
    return [load_model(model_registry.resolve_model(m.run_id, experiment)[0]) for m in models]
