"""Equal budgets: cover trials are never pruned, later trials are pruned only against their own family."""

import dataclasses

import optuna
import pytest
from optuna.trial import TrialState

import benchmark.training.search as search
from benchmark.training.budgets import COVER, CUT_ATTR, PHASE_ATTR, FamilyPruner, cover_waiting, is_cover, stop_after
from benchmark.training.profiles import Profile

PROFILE = Profile(name="tiny", trials=2, epochs=2, architectures=("unet3d", "segresnet3d", "resunet3d"),
                  widths=(0.0625,), cover=True,
                  first={"architecture": "unet3d", "width": 0.0625, "lr": 3e-3, "weight_decay": 1e-5,
                         "loss": "dice_ce", "augment": 0.5})


def _trial(study, architecture, curve, cover=False):
    """A running trial of ``architecture`` that reported ``curve`` (one validation Dice per epoch)."""
    study.enqueue_trial({"architecture": architecture}, user_attrs={PHASE_ATTR: COVER} if cover else {})
    trial = study.ask({"architecture": optuna.distributions.CategoricalDistribution(PROFILE.architectures)})
    assert trial.params["architecture"] == architecture
    for epoch, value in enumerate(curve):
        trial.report(value, epoch)
    return trial


def _prunes(study, trial) -> bool:
    frozen = study._storage.get_trial(trial._trial_id)
    return study.pruner.prune(study, frozen)


@pytest.fixture
def study():
    return optuna.create_study(direction="maximize", pruner=FamilyPruner(warmup=0))


def test_a_trial_is_compared_only_with_its_own_family(study):
    study.tell(_trial(study, "unet3d", [0.8, 0.9, 0.9]), 0.9)
    lagging = _trial(study, "segresnet3d", [0.1, 0.2, 0.3])
    assert not _prunes(study, lagging)  # far below the U-Net, but no complete segresnet3d trial yet
    study.tell(lagging, 0.3)
    worse = _trial(study, "segresnet3d", [0.05, 0.1, 0.1])
    assert _prunes(study, worse)  # below its own family's median
    better = _trial(study, "segresnet3d", [0.2, 0.4, 0.5])
    assert not _prunes(study, better)


def test_a_cover_trial_is_never_pruned(study):
    study.tell(_trial(study, "segresnet3d", [0.8, 0.9]), 0.9)
    cover = _trial(study, "segresnet3d", [0.0, 0.0], cover=True)
    assert is_cover(cover) and not _prunes(study, cover)


def test_the_time_budget_waits_for_the_cover_phase(tmp_path):
    storage = f"sqlite:///{tmp_path}/optuna.db"
    study = optuna.create_study(direction="maximize", storage=storage)
    search.prepare_study(study, storage, PROFILE, tmp_path / "ckpt")
    waiting = study.get_trials(states=(TrialState.WAITING,))
    assert [t.user_attrs[PHASE_ATTR] for t in waiting] == [COVER] * 3 and cover_waiting(study)
    stopped = []
    study.stop = lambda: stopped.append(True)
    expired = stop_after(deadline=0.0, clock=lambda: 1.0)
    expired(study, waiting[0])
    assert not stopped  # cover trials still wait: they run whatever the clock says
    for _ in waiting:
        trial = study.ask()
        study.tell(trial, 0.5)
    assert not cover_waiting(study)
    expired(study, waiting[0])
    assert stopped == [True]
    stop_after(deadline=None)(study, waiting[0])
    stop_after(deadline=2.0, clock=lambda: 1.0)(study, waiting[0])
    assert stopped == [True]


def test_a_profile_without_cover_enqueues_only_its_first_trial(tmp_path):
    storage = f"sqlite:///{tmp_path}/optuna.db"
    study = optuna.create_study(direction="maximize", storage=storage)
    search.prepare_study(study, storage, dataclasses.replace(PROFILE, cover=False), tmp_path / "ckpt")
    (waiting,) = study.get_trials(states=(TrialState.WAITING,))
    assert not is_cover(waiting)


def test_cover_trials_train_every_epoch_whatever_the_time_budget(isles_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    profile = dataclasses.replace(PROFILE, architectures=("unet3d", "segresnet3d"), grid=(16, 16, 8), epochs=3,
                                  patience=1, warmup=0, time_budget=0.001)
    settings = search.SearchSettings(data=isles_dir, trials=3, epochs=3, study="s", storage=f"sqlite:///{tmp_path}/o.db",
                                     experiment="e", seed=0, device="cpu", profile=profile,
                                     checkpoints=tmp_path / "ckpt", cache=None, progress=False,
                                     time_budget=profile.time_budget)
    search.run_search(settings)
    trials = optuna.load_study(study_name="s", storage=settings.storage).get_trials()
    cover = [t for t in trials if is_cover(t)]
    assert [t.params["architecture"] for t in cover] == ["unet3d", "segresnet3d"]
    assert all(t.state == TrialState.COMPLETE and len(t.intermediate_values) == 3 for t in cover)
    assert len(trials) == 2  # the budget had run out: no trial after the cover phase started


def test_a_trial_the_time_budget_cuts_short_is_pruned_not_complete(isles_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    profile = dataclasses.replace(PROFILE, architectures=("unet3d",), grid=(16, 16, 8), epochs=3, patience=0,
                                  warmup=0, time_budget=0.001, cover=False)
    settings = search.SearchSettings(data=isles_dir, trials=1, epochs=3, study="s", storage=f"sqlite:///{tmp_path}/o.db",
                                     experiment="e", seed=0, device="cpu", profile=profile,
                                     checkpoints=tmp_path / "ckpt", cache=None, progress=False,
                                     time_budget=profile.time_budget)
    search.run_search(settings)
    (trial,) = optuna.load_study(study_name="s", storage=settings.storage).get_trials()
    assert trial.state == TrialState.PRUNED and trial.user_attrs[CUT_ATTR] == 1
    assert len(trial.intermediate_values) == 1  # one epoch of three before the budget ran out
