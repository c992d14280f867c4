"""Hyper-parameter search with Optuna, one MLflow child run per trial.

The objective follows Optuna's pattern: :func:`suggest_hparams` is the only place that calls
``trial.suggest_*`` and returns a plain dict; :class:`Objective` builds the model from that dict,
trains it with :func:`benchmark.training.loop.fit`, reports validation Dice each epoch and raises
``TrialPruned`` when the pruner says so. Models never import Optuna.

The train/validation split is made once per study (:mod:`benchmark.data.splits`) and saved
as ``<checkpoints>/<study>/split.json`` and in every search run of the study (an artifact and an
MLflow dataset input); a search that resumes the study reads it back (the local file, else the
newest search run in MLflow that logged one) and refuses data that changed since. With ``folds`` K > 1
the split holds K cross-validation folds and the search selects on fold 0; the other folds (and
``repeats``) are trained afterwards by :mod:`benchmark.training.folds`.

Each study uses one preprocessing (``SearchSettings.preprocessing``): ``seed`` (the study's 48×48×19 grid,
the default) or ``native`` (the data set's plan, :mod:`benchmark.data.planning`: target spacing, patch and
batch size; patch training and sliding-window validation, :func:`benchmark.training.loop.fit`). A native
study keeps its plan beside its split (``<checkpoints>/<study>/plan.json``: the ``--plan`` given, else one
made from the data on the first search) and logs it to every search run (``plan/plan.json``); the mode is a
study user attribute (``preprocessing``), a search-run and trial-run parameter, and part of the study's
settings, so a study never mixes modes.

Studies live in ``storage`` (``sqlite:///optuna.db`` on one host; ``postgresql://…`` or
``journal:///…`` for many, see :mod:`benchmark.training.studies`). Running the same command again
adds ``trials`` more trials to the same study; a trial that was interrupted (Ctrl-C, SIGTERM),
killed (its heartbeat stopped, or its process on this host is gone) or crashed after writing a
checkpoint is retried first through Optuna's ``RetryHeartbeatStaleTrialCallback``, resuming from its
checkpoint (stored relative to the study's checkpoint root, so another folder or host finds it).
"""

from __future__ import annotations

import json
import math
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import optuna

from benchmark.data.cases import check_labels
from benchmark.data.planning import PLAN_FILE, Plan, make_plan
from benchmark.data.preprocessing import MODES, PreprocessCache, PreprocessConfig
from benchmark.data.splits import DEFAULT_SPLIT_SEED, DEFAULT_VAL_FRACTION, SPLIT_FILE, Split, make_split
from benchmark.errors import DataError, ParameterError
from benchmark.figures import overlay_figures
from benchmark.paths import check_name, check_writable
from benchmark.training.budgets import CUT_ATTR, FamilyPruner, enqueue_cover, is_cover, stop_after
from benchmark.training.loop import TrainConfig, fit, load_model, resolve_device, seed_everything
from benchmark.training.profiles import Profile
from benchmark.training.studies import (
    INTERRUPTED_ATTR,
    WORKER_ATTR,
    TrialSeededTPE,
    check_settings,
    open_storage,
    quiet_interrupts,
    recover,
    retry_of,
    storage_kind,
    study_lock,
    worker_alive,
    worker_identity,
)
from models.registry import build, parameter_count
from tracking import recovery
from tracking import runs as tracking
from tracking.records import Store, download_resume_point, download_split

DEFAULT_CHECKPOINTS = Path("checkpoints")
"""Where searches keep per-epoch checkpoints and each study's split (``<checkpoints>/<study>/``)."""


def suggest_hparams(trial: optuna.Trial, profile: Profile) -> dict:
    """The only place that asks Optuna for values; returns a plain dict of hyper-parameters."""
    if profile.fixed is not None:
        for key, value in profile.fixed.items():
            trial.set_user_attr(key, value)
        return dict(profile.fixed)
    return {
        "architecture": trial.suggest_categorical("architecture", list(profile.architectures)),
        "width": trial.suggest_categorical("width", list(profile.widths)),
        "lr": trial.suggest_float("lr", *profile.lr, log=True),
        "weight_decay": trial.suggest_float("weight_decay", *profile.weight_decay, log=True),
        "loss": trial.suggest_categorical("loss", list(profile.losses)),
        "augment": trial.suggest_float("augment", *profile.augment),
    }


RESUME_UPLOAD_S = 30.0
"""Seconds between two uploads of a trial's resume point (``last.pt``) to its MLflow run (and after the last
epoch): a trial killed on one host resumes on any other from at most this much earlier."""


@dataclass
class SearchSettings:
    """Everything one search invocation needs (each field is one CLI flag)."""

    data: Path
    trials: int
    epochs: int
    study: str
    storage: str
    experiment: str
    seed: int
    device: str
    profile: Profile
    time_budget: float | None = None
    checkpoints: Path = DEFAULT_CHECKPOINTS
    cache: Path | None = Path(".cache") / "preprocessed"
    progress: bool = True
    val_fraction: float = DEFAULT_VAL_FRACTION
    """Fraction of the labelled cases on the validation side (used when the study's split is made)."""
    split_seed: int = DEFAULT_SPLIT_SEED
    """Random seed of the split, independent of ``seed`` so that every worker of a study agrees."""
    folds: int = 1
    """K cross-validation folds saved in the study's split (1: one train/validation split); see
    :mod:`benchmark.training.folds`."""
    repeats: int = 1
    """R trainings of each fold, with seeds derived from ``seed``."""
    preprocessing: str = "seed"
    """``seed`` (whole volumes at the profile's grid) or ``native`` (the data set's plan; module docstring)."""
    plan: Path | None = None
    """``native``: the ``plan.json`` to use (None: the study's saved plan, else one made from ``data``)."""

    def __post_init__(self):
        if self.preprocessing not in MODES:
            raise ParameterError(f"preprocessing '{self.preprocessing}' is unknown: choose {' or '.join(MODES)}")
        if self.plan is not None and self.preprocessing != "native":
            raise ParameterError(f"--plan {self.plan} is for native preprocessing: add --preprocessing native "
                                 "or drop --plan")
        if self.folds < 1 or self.repeats < 1:
            raise ParameterError(f"folds and repeats must be at least 1 (got folds {self.folds}, "
                                 f"repeats {self.repeats})")
        if not 0.0 < self.val_fraction < 1.0:
            raise ParameterError(f"val-fraction must lie inside (0, 1) (got {self.val_fraction})")
        if self.trials < 1:
            raise ParameterError(f"trials must be at least 1 (got {self.trials})")
        if self.epochs < 1:
            raise ParameterError(f"epochs must be at least 1 (got {self.epochs})")
        check_name(self.study, "study")  # it becomes <checkpoints>/<study>/: one safe path component
        if self.experiment:
            check_name(self.experiment, "experiment")
        check_writable(self.checkpoints, "checkpoints folder")
        storage_kind(self.storage)  # a storage that is no URL is refused before anything is touched


@dataclass
class SearchResult:
    """What a search invocation returns."""

    study: str
    parent_run_id: str
    best_run_id: str | None
    best_value: float | None
    best_params: dict = field(default_factory=dict)
    states: dict = field(default_factory=dict)
    ranked_run_ids: list[str] = field(default_factory=list)
    """MLflow runs of the study's complete trials, best first (what top-k export takes)."""
    experiment: str = ""
    """The MLflow experiment that holds the search (under ``mlflow run``, the project run's)."""
    split: Split | None = None
    """The study's train/validation split, as saved in ``split_file`` and logged to the search run."""
    split_file: Path | None = None


def open_study(name: str, storage: str, seed: int, profile: Profile) -> optuna.Study:
    """Create or load the study (maximising validation Dice) with its sampler and pruner.

    The storage has a heartbeat and retries dead trials (:mod:`benchmark.training.studies`); the
    sampler re-seeds per trial, so workers sharing the study sample differently.

    Raises:
        ParameterError: the storage cannot be opened, or the study maximises nothing / minimises.
    """
    sampler = TrialSeededTPE(seed, n_startup_trials=4)
    pruner = FamilyPruner(warmup=profile.warmup)
    storage_obj = open_storage(storage)
    with study_lock(storage, name):
        try:
            study = optuna.create_study(study_name=name, storage=storage_obj, sampler=sampler,
                                        pruner=pruner, direction="maximize", load_if_exists=True)
        except ValueError as exc:
            raise ParameterError(f"study '{name}' in '{storage}' cannot be used ({exc}): choose another "
                                 "study name") from exc
    if len(study.directions) != 1 or study.direction != optuna.study.StudyDirection.MAXIMIZE:
        raise ParameterError(f"study '{name}' in '{storage}' was created to "
                             f"{[d.name.lower() for d in study.directions]}, but strokelens maximises "
                             "validation Dice: choose another study name")
    return study


def study_settings(s: SearchSettings, plan: Plan | None = None) -> dict:
    """What makes two trials of a study comparable; a resumed study must keep it (see ``check_settings``).

    The loss is in ``losses`` (searched) and in ``fixed`` (a fixed profile such as ``paper``: ``ce``);
    ``augmentation`` appears when it is not ``flips``, the kind every study before it used, so those resume;
    ``preprocessing`` (the native plan's settings and batch size) only in ``native`` mode, for the same reason.
    """
    p = s.profile
    settings = {"profile": p.name, "epochs": s.epochs, "grid": list(p.grid), "architectures": list(p.architectures),
                "widths": list(p.widths), "losses": list(p.losses), "batch_size": p.batch_size, "fixed": p.fixed}
    if p.augmentation != "flips":
        settings["augmentation"] = p.augmentation
    if plan is not None:
        settings["preprocessing"] = {**plan.preprocess().to_dict(), "batch_size": plan.batch_size}
    return settings


def plan_file(checkpoints: str | Path, study: str) -> Path:
    """Where a native study's plan lies beside its split: ``<checkpoints>/<study>/plan.json``."""
    return Path(checkpoints) / study / PLAN_FILE


def study_plan(s: SearchSettings) -> Plan | None:
    """The plan of a ``native`` search (None in ``seed`` mode): ``--plan``, else the study's saved one, else a new one.

    A new plan is made from ``s.data`` for the device's memory budget and the widest network the profile
    searches (its first architecture). Nothing is saved here (see :func:`run_search`).

    Raises:
        DataError: native mode without a usable plan: the ``--plan`` file is missing or broken, or no plan
            could be made from the data.
    """
    if s.preprocessing != "native":
        return None
    if s.plan is not None:
        return Plan.load(s.plan)
    saved = plan_file(s.checkpoints, s.study)
    if saved.is_file():
        return Plan.load(saved)
    p = s.profile
    architecture = (p.fixed or p.first or {}).get("architecture", p.architectures[0])
    try:
        return make_plan(s.data, device=resolve_device(s.device).type, architecture=architecture,
                         width=max(p.widths), progress=s.progress)
    except (DataError, ParameterError) as exc:
        raise DataError(f"native preprocessing needs a plan and none could be made from '{s.data}' "
                        f"({' '.join(str(exc).split())}): give --plan PATH written by python -m mlproject.plan, "
                        "or use --preprocessing seed") from exc


def prepare_study(study: optuna.Study, storage: str, profile: Profile, checkpoints: Path) -> list[int]:
    """Recover dead, interrupted or crashed trials, then seed a new study with the profile's start (and cover) once.

    Args:
        study: the study.
        storage: its URL (for the study lock).
        profile: the search profile (its first trial and cover).
        checkpoints: the study's checkpoint root; a failed trial with a checkpoint there is resumable.

    Returns:
        The numbers of the trials handed to Optuna's retry callback.
    """
    retried = recover(study, lambda trial: (checkpoint_of(trial, checkpoints) or Path("/nonexistent")).is_file())
    with study_lock(storage, study.study_name):
        if study.user_attrs.get("seeded") or study.get_trials(deepcopy=False):
            return retried
        if profile.first is not None and profile.fixed is None:
            if profile.cover:
                enqueue_cover(study, profile.first, profile.architectures)
            else:
                study.enqueue_trial(profile.first)
        study.set_user_attr("seeded", True)
    return retried


def checkpoint_of(trial, root: Path) -> Path | None:
    """A trial's last checkpoint: relative to the study's checkpoint root (or absolute, older studies)."""
    stored = trial.user_attrs.get("checkpoint") or trial.user_attrs.get("last_checkpoint")
    if not stored:
        return None
    path = Path(stored)
    return path if path.is_absolute() or not trial.user_attrs.get("checkpoint") else root / path


class Objective:
    """Optuna objective: train one configuration and return its best validation Dice."""

    def __init__(self, settings: SearchSettings, train: list, val: list, preprocess: PreprocessConfig,
                 deadline: float | None = None, batch_size: int | None = None):
        self.s = settings
        self.train, self.val, self.preprocess = train, val, preprocess
        self.deadline = deadline
        self.batch_size = settings.profile.batch_size if batch_size is None else batch_size

    def __call__(self, trial: optuna.Trial) -> float:
        try:
            return self._run(trial)
        except KeyboardInterrupt:  # Ctrl-C or SIGTERM: Optuna fails the trial, the next start retries it
            trial.set_user_attr(INTERRUPTED_ATTR, True)
            raise

    def _run(self, trial: optuna.Trial) -> float:
        hp = suggest_hparams(trial, self.s.profile)
        root = self.s.checkpoints / self.s.study
        original = retry_of(trial)
        previous = checkpoint_of(trial, root) if original is not None else None  # copied from the dead trial
        folder = root / f"trial_{trial.number:04d}"
        resume = str(previous) if previous is not None and previous.is_file() else None
        if original is not None and resume is None:  # the dead trial ran on another host: its run has the point
            found = download_resume_point(trial.user_attrs.get("mlflow_run_id", ""), folder / "resume")
            resume = str(found) if found is not None else None
        trial.set_user_attr("checkpoint", f"{folder.name}/last.pt")  # relative to the study's checkpoint root
        trial.set_user_attr(WORKER_ATTR, worker_identity())
        folder.mkdir(parents=True, exist_ok=True)
        if resume is not None:  # the best epoch so far stays the trial's best unless a later epoch beats it
            inherited = Path(resume).parent / "best.pt"
            if inherited.is_file() and not (folder / "best.pt").is_file():
                shutil.copyfile(inherited, folder / "best.pt")
        (folder / "preprocess.json").write_text(json.dumps(self.preprocess.to_dict(), indent=2) + "\n")
        params = {**hp, "epochs": self.s.epochs, "batch_size": self.batch_size,
                  "augmentation": self.s.profile.augmentation, **preprocessing_params(self.preprocess),
                  "grid": "x".join(map(str, self.preprocess.grid)), "seed": self.s.seed,
                  "phase": "cover" if is_cover(trial) else "search", "resumed_from": resume or "",
                  "retry_of": "" if original is None else original}
        with tracking.trial_run(self.s.study, trial.number, hp["architecture"], params) as run:
            trial.set_user_attr("mlflow_run_id", run.info.run_id)
            recovery.tag_worker(worker_identity())
            number = trial.number if original is None else original
            seed_everything(self.s.seed + number)  # the same seed builds the same initial weights
            model = build(hp["architecture"], len(self.preprocess.modalities), width=hp["width"])
            cover = is_cover(trial)  # the equal budget: all epochs, no early stop, no deadline
            config = TrainConfig(epochs=self.s.epochs, batch_size=self.batch_size, lr=hp["lr"],
                                 weight_decay=hp["weight_decay"], loss=hp["loss"], augment=hp["augment"],
                                 augmentation=self.s.profile.augmentation,
                                 patience=0 if cover else self.s.profile.patience, seed=self.s.seed + trial.number,
                                 device=self.s.device)
            tracking.log_summary({"param_count": parameter_count(model)})

            rows: list[dict] = []
            uploaded = {"at": -math.inf, "best": None}

            def on_epoch(epoch: int, row: dict) -> None:
                rows.append(row)
                tracking.log_epoch(row)
                if time.monotonic() - uploaded["at"] >= RESUME_UPLOAD_S or epoch + 1 == config.epochs:
                    best = folder / "best.pt"
                    stamp = best.stat().st_mtime_ns if best.is_file() else None
                    tracking.log_resume_point(folder / "last.pt", best if stamp != uploaded["best"] else None)
                    uploaded.update(at=time.monotonic(), best=stamp)
                trial.report(row["val_dice"], epoch)
                if trial.should_prune():
                    raise optuna.TrialPruned(f"pruned at epoch {epoch}")

            pruned = None
            try:
                result = fit(model, self.train, self.val, config, checkpoint_dir=folder, resume=resume,
                             on_epoch=on_epoch, deadline=None if cover else self.deadline,
                             progress=self.s.progress, preprocess=self.preprocess)
            except optuna.TrialPruned as exc:
                pruned = exc
            if pruned is None and result.out_of_time:  # fewer epochs than its budget: not a complete trial
                trial.set_user_attr(CUT_ATTR, len(result.history))
                pruned = optuna.TrialPruned(f"cut by the time budget after {len(result.history)} of "
                                            f"{config.epochs} epochs")
            self._log_best(folder)
            history = rows if pruned is not None else result.history  # a resumed fit knows earlier epochs
            if history:
                best = max(history, key=lambda r: r["val_dice"])
                tracking.log_summary({"best_val_dice": best["val_dice"], "best_epoch": best["epoch"],
                                      "seconds_per_epoch": float(np.mean([r["epoch_seconds"] for r in history])),
                                      "epochs_run": len(history)})
            tracking.set_state(tracking.STATE_COMPLETE if pruned is None else tracking.STATE_PRUNED)
        if pruned is not None:  # outside the run, so MLflow marks it FINISHED, not FAILED
            raise pruned
        return result.best_dice

    def _log_best(self, folder: Path) -> None:
        best = folder / "best.pt"
        if not best.is_file():
            return
        tracking.log_checkpoint(best, self.preprocess.to_dict())
        model = load_model(best)
        figures = overlay_figures(model, self.val[:3], folder / "figures", self.preprocess.modalities)
        tracking.log_figures(figures)


def preprocessing_params(preprocess: PreprocessConfig) -> dict:
    """MLflow parameters naming a run's preprocessing: its mode, and in ``native`` mode spacing (mm) and overlap."""
    if preprocess.mode != "native":
        return {"preprocessing": preprocess.mode}
    return {"preprocessing": preprocess.mode, "spacing": "x".join(f"{v:g}" for v in preprocess.spacing),
            "overlap": preprocess.overlap}


def split_file(checkpoints: str | Path, study: str) -> Path:
    """Where a study's split lies beside its checkpoints: ``<checkpoints>/<study>/split.json``."""
    return Path(checkpoints) / study / SPLIT_FILE


def logged_split(search_run: str) -> Split | None:
    """The split a search run logged to MLflow, or None when it logged none."""
    with tempfile.TemporaryDirectory() as tmp:
        path = download_split(search_run, Path(tmp))
        return None if path is None else Split.load(path, f"split.json of MLflow run {search_run}")


def study_split(study: str, experiment: str, checkpoints: str | Path = DEFAULT_CHECKPOINTS,
                search_run: str | None = None) -> Split | None:
    """The split a study's search saved, or None when it saved none.

    Read from MLflow first (``search_run``, else the newest search run of the study in
    ``experiment`` that logged one), else from ``<checkpoints>/<study>/split.json``.
    """
    runs = [search_run] if search_run else [r.run_id for r in Store(experiment).runs("search", study)]
    for run_id in runs:
        split = logged_split(run_id)
        if split is not None:
            return split
    path = split_file(checkpoints, study)
    return Split.load(path) if path.is_file() else None


def _the_study_split(s: SearchSettings, experiment: str, modalities: tuple[str, ...]) -> tuple[Split, Path]:
    """The study's split: the saved one (local, else in MLflow) checked against the settings, else a new one."""
    path = split_file(s.checkpoints, s.study)
    split = Split.load(path) if path.is_file() else study_split(s.study, experiment, s.checkpoints)
    if split is None:
        split = make_split(s.data, modalities, s.val_fraction, s.split_seed, s.folds)
    elif (split.seed, split.folds, split.modalities) != (s.split_seed, s.folds, modalities) or (
            split.folds == 1 and split.val_fraction != s.val_fraction):
        raise ParameterError(f"study '{s.study}' was split with {split.folds} fold(s), val-fraction "
                             f"{split.val_fraction}, split seed {split.seed} and modalities "
                             f"{','.join(split.modalities)} ({split.source}); a study keeps its split: drop "
                             "--folds/--val-fraction/--split-seed, or use a new --study")
    if not path.is_file():
        split.save(path)
    return split, path


def run_search(s: SearchSettings) -> SearchResult:
    """Run ``s.trials`` trials of the study inside one parent MLflow run.

    Raises:
        DataError: the data has too few labelled cases, or changed since the study's split was saved.
        ParameterError: the study cannot be used, or asks for another split than the saved one.
    """
    from tqdm import tqdm

    device = resolve_device(s.device)
    plan = study_plan(s)
    preprocess = PreprocessConfig(grid=s.profile.grid) if plan is None else plan.preprocess()
    experiment = tracking.experiment_name(tracking.setup(s.experiment or
                                                         tracking.default_experiment(s.profile.experiment)))
    split, path = _the_study_split(s, experiment, tuple(preprocess.modalities))
    train_refs, val_refs = split.resolve(s.data)
    cache = PreprocessCache(preprocess, s.cache)
    refs = train_refs + val_refs
    cases = [cache.get(r) for r in tqdm(refs, desc="preparing cases", unit="case", disable=not s.progress)]
    check_labels(cases)
    by_id = {c.case_id: c for c in cases}
    train = [by_id[r.case_id] for r in train_refs]
    val = [by_id[r.case_id] for r in val_refs]
    study = open_study(s.study, s.storage, s.seed, s.profile)  # only once the data is known to be usable
    params = {"data": str(s.data), "trials": s.trials, "epochs": s.epochs, "study": s.study,
              "storage": s.storage, "seed": s.seed, "device": str(device), "profile": s.profile.name,
              "train_cases": len(train), "val_cases": len(val), "grid": "x".join(map(str, preprocess.grid)),
              "val_fraction": split.val_fraction, "split_seed": split.seed, "folds": split.folds,
              "repeats": s.repeats, **preprocessing_params(preprocess),
              **({"plan": plan.digest(), "batch_size": plan.batch_size} if plan is not None else {})}
    check_settings(study, {**study_settings(s, plan), "split_digest": split.digest})
    study.set_user_attr("preprocessing", preprocess.mode)
    saved_plan = plan_file(s.checkpoints, s.study)
    if plan is not None:
        study.set_user_attr("plan", plan.digest())
        if not saved_plan.is_file() or Plan.load(saved_plan).digest() != plan.digest():
            plan.save(saved_plan)
    retried = prepare_study(study, s.storage, s.profile, s.checkpoints / s.study)
    dead_runs = [t.user_attrs["mlflow_run_id"] for t in study.get_trials(deepcopy=False)
                 if t.number in retried and "mlflow_run_id" in t.user_attrs]
    recovery.fail_stale_runs(experiment, s.study, lambda worker: worker_alive(worker) is False, tuple(dead_runs))
    with tracking.search_run(s.study, params, s.profile.name) as parent:
        recovery.tag_worker(worker_identity())
        tracking.log_split(path, split.rows(), split.digest, Path(split.data).name, Path(s.data))
        if plan is not None:
            tracking.log_artifacts([saved_plan], "plan")
        started = time.monotonic()
        deadline = None if s.time_budget is None else started + s.time_budget
        with quiet_interrupts():
            study.optimize(Objective(s, train, val, preprocess, deadline, None if plan is None else plan.batch_size),
                           n_trials=s.trials,
                           callbacks=[stop_after(deadline)], catch=(FloatingPointError, RuntimeError))
        result = study_result(study, parent.info.run_id, experiment, split, path)
        tracking.log_summary({"search_seconds": time.monotonic() - started,
                              **{f"trials_{k}": v for k, v in result.states.items()}})
        if result.best_run_id is None:
            return result
        best = study.best_trial
        tracking.log_best_trial(result.best_run_id, best.number, best.params or best.user_attrs,
                                tracking.best_epoch_metrics(result.best_run_id))
        best_checkpoint = checkpoint_of(best, s.checkpoints / s.study)
        best_folder = best_checkpoint.parent if best_checkpoint is not None else Path("/nonexistent")
        if (best_folder / "best.pt").is_file():
            tracking.log_checkpoint(best_folder / "best.pt", preprocess.to_dict())
            tracking.log_figures(sorted((best_folder / "figures").glob("*.png")))
        return result


def study_result(study: optuna.Study, parent_run_id: str, experiment: str, split: Split | None,
                 path: Path | None) -> SearchResult:
    """The study as it stands: trial states, its best complete trial and its complete trials' runs, best first."""
    trials = study.get_trials(deepcopy=False)
    finished = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    states = {state.name.lower(): sum(t.state == state for t in trials) for state in optuna.trial.TrialState}
    if not finished:
        return SearchResult(study.study_name, parent_run_id, None, None, {}, states, experiment=experiment,
                            split=split, split_file=path)
    best = study.best_trial
    ranked = [t.user_attrs["mlflow_run_id"] for t in sorted(finished, key=lambda t: -t.value)
              if "mlflow_run_id" in t.user_attrs]
    return SearchResult(study.study_name, parent_run_id, best.user_attrs.get("mlflow_run_id"), best.value,
                        dict(best.params), states, ranked, experiment, split, path)


def result_after_workers(s: SearchSettings) -> SearchResult:
    """The study's result once its workers have finished (no new MLflow run: each worker logged its own)."""
    experiment = tracking.experiment_name(tracking.setup(s.experiment or
                                                         tracking.default_experiment(s.profile.experiment)))
    split, path = _the_study_split(s, experiment, tuple(PreprocessConfig(grid=s.profile.grid).modalities))
    study = optuna.load_study(study_name=s.study, storage=open_storage(s.storage))
    return study_result(study, "", experiment, split, path)


def describe(result: SearchResult) -> str:
    """A one-paragraph summary for the terminal."""
    states = ", ".join(f"{v} {k}" for k, v in result.states.items() if v)
    if result.best_run_id is None:
        return f"study {result.study}: no finished trial ({states})"
    return (f"study {result.study}: best validation Dice {result.best_value:.3f} "
            f"(MLflow run {result.best_run_id}, {json.dumps(result.best_params)}); trials: {states}")

