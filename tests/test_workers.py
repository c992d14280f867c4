"""``train --workers N``: N processes on one study, devices shared out, failures reported."""

import dataclasses

import optuna
import pytest

from benchmark.errors import ParameterError
from benchmark.stages.train import search_and_export
from benchmark.training.search import SearchSettings
from benchmark.training.studies import WORKER_ATTR
from benchmark.training.workers import run_workers, worker_environment
from tests.test_search import TINY


def test_devices_and_threads_are_shared_out():
    assert [worker_environment(i, 3, gpus=2, cores=16)["CUDA_VISIBLE_DEVICES"] for i in range(3)] == ["0", "1", "0"]
    cpu = worker_environment(1, 2, gpus=0, cores=16)
    assert cpu == {"CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "8", "MKL_NUM_THREADS": "8"}
    assert worker_environment(0, 4, gpus=0, cores=2)["OMP_NUM_THREADS"] == "1"


def _settings(data, tmp_path, **kw):
    values = dict(data=data, trials=1, epochs=1, study="w", storage=f"sqlite:///{tmp_path}/optuna.db",
                  experiment="e", seed=0, device="cpu", profile=dataclasses.replace(TINY, cover=False),
                  checkpoints=tmp_path / "ckpt", cache=None, progress=False)
    return SearchSettings(**{**values, **kw})


def test_two_cpu_workers_share_one_study(isles_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    settings = _settings(isles_dir, tmp_path)
    result = search_and_export(settings, export=False, workers=2)
    assert result.failed_workers == 0 and result.search.best_run_id
    trials = optuna.load_study(study_name="w", storage=settings.storage).get_trials()
    assert len(trials) == 2 and all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    assert len({t.user_attrs[WORKER_ATTR]["pid"] for t in trials}) == 2  # one trial each
    assert trials[0].params != trials[1].params
    assert sorted(p.name for p in (tmp_path / "ckpt" / "w" / "workers").iterdir()) == ["worker_0.log",
                                                                                       "worker_1.log"]


def test_a_failing_worker_is_reported(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    outcomes = run_workers(_settings(tmp_path / "no-data", tmp_path), 2, gpus=0, progress=False)
    assert [o.exitcode for o in outcomes] == [2, 2]
    assert "no-data" in outcomes[0].line() and "worker_0.log" in outcomes[0].line()
    with pytest.raises(ParameterError, match="workers must be at least 1"):
        run_workers(_settings(tmp_path, tmp_path), 0)
