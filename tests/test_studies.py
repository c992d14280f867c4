"""Studies that survive stops and cooperate: storage URLs, per-trial seeds, recovery, settings."""

import subprocess
import sys

import optuna
import pytest

from benchmark.errors import ParameterError
from benchmark.training import studies
from tracking.services import free_port

optuna.logging.set_verbosity(optuna.logging.WARNING)


def _space(trial):
    return trial.suggest_float("x", 0, 1) + trial.suggest_float("y", 0, 1)


@pytest.mark.parametrize("url,needle", [
    ("sqlite:///", "names no file"), ("journal:///", "names no file"), ("notaurl", "is not a storage URL"),
    ("mysql://h/db", "is not a storage URL")])
def test_bad_storage_urls_are_one_line_errors(url, needle):
    with pytest.raises(ParameterError, match=needle):
        studies.open_storage(url)


def test_unreachable_postgresql_is_a_bounded_one_line_error():
    with pytest.raises(ParameterError, match=r"cannot be opened \(OperationalError"):
        studies.open_storage(f"postgresql://postgres@127.0.0.1:{free_port()}/optuna")


def test_journal_storage_runs_a_study(tmp_path):
    url = f"journal:///{tmp_path}/optuna.log"
    study = optuna.create_study(storage=studies.open_storage(url), study_name="j", direction="maximize",
                                sampler=studies.TrialSeededTPE(0))
    study.optimize(_space, n_trials=3)
    again = optuna.load_study(study_name="j", storage=studies.open_storage(url))
    assert len(again.trials) == 3 and (tmp_path / "optuna.log").is_file()


def test_one_worker_is_reproducible_and_two_workers_differ(tmp_path):
    def params(url, name):
        study = optuna.create_study(storage=url, study_name=name, sampler=studies.TrialSeededTPE(7),
                                    direction="maximize")
        study.optimize(_space, n_trials=6)
        return [tuple(t.params.values()) for t in study.trials]

    url = f"sqlite:///{tmp_path}/a.db"
    assert params(url, "one") == params(url, "two")  # the same seed, one worker each: the same sequence
    shared = f"sqlite:///{tmp_path}/shared.db"
    workers = [optuna.create_study(storage=shared, study_name="s", sampler=studies.TrialSeededTPE(7),
                                   direction="maximize", load_if_exists=True) for _ in range(2)]
    for _ in range(4):  # interleaved, as two processes would be: both built TPE(seed=7)
        for worker in workers:
            trial = worker.ask()
            worker.tell(trial, _space(trial))
    trials = optuna.load_study(study_name="s", storage=shared).trials
    drawn = [tuple(t.params.values()) for t in trials]
    assert len(set(drawn)) == len(drawn) == 8
    assert len({t.user_attrs[studies.SAMPLER_SEED_ATTR] for t in trials}) == 8


def test_a_trial_of_a_dead_process_is_failed_and_retried_with_its_attributes(tmp_path):
    url = f"sqlite:///{tmp_path}/optuna.db"
    study = optuna.create_study(storage=studies.open_storage(url), study_name="r", direction="maximize")
    trial = study.ask({"x": optuna.distributions.FloatDistribution(0, 1)})
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    identity = {**studies.worker_identity(), "pid": int(dead.stdout)}
    trial.set_user_attr(studies.WORKER_ATTR, identity)
    trial.set_user_attr("checkpoint", "trial_0000/last.pt")
    alive = study.ask({"x": optuna.distributions.FloatDistribution(0, 1)})
    alive.set_user_attr(studies.WORKER_ATTR, studies.worker_identity())  # this process: alive
    assert studies.worker_alive(identity) is False and studies.worker_alive(studies.worker_identity()) is True
    assert studies.worker_alive({"host": "elsewhere", "pid": 1}) is None
    assert studies.recover(study) == [0]
    states = [t.state for t in study.get_trials()]
    assert states == [optuna.trial.TrialState.FAIL, optuna.trial.TrialState.RUNNING, optuna.trial.TrialState.WAITING]
    retry = study.get_trials()[2]
    assert studies.retry_of(retry) == 0 and retry.user_attrs["checkpoint"] == "trial_0000/last.pt"
    assert retry.params == study.get_trials()[0].params
    assert studies.recover(study) == []  # retried once only


def test_interrupted_trials_are_retried_once(tmp_path):
    study = optuna.create_study(storage=f"sqlite:///{tmp_path}/o.db", direction="maximize")

    def objective(trial):
        trial.suggest_float("x", 0, 1)
        trial.set_user_attr(studies.INTERRUPTED_ATTR, True)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt), studies.quiet_interrupts():
        study.optimize(objective, n_trials=1)
    assert studies.recover(study) == [0] and studies.recover(study) == []
    assert study.get_trials()[1].state == optuna.trial.TrialState.WAITING


def test_a_study_refuses_other_settings(tmp_path):
    study = optuna.create_study(storage=f"sqlite:///{tmp_path}/o.db", study_name="set", direction="maximize")
    studies.check_settings(study, {"epochs": 40, "profile": "default"})
    studies.check_settings(study, {"epochs": 40, "profile": "default"})
    with pytest.raises(ParameterError, match=r"epochs: study 40, now 3.*--study set-2"):
        studies.check_settings(study, {"epochs": 3, "profile": "default"})
