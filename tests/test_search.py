"""The search end to end on tiny data: MLflow run structure, resume, failures, bad input."""

import dataclasses
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from mlflow.tracking import MlflowClient

import benchmark.training.loop as loop
import benchmark.training.search as search
from benchmark.errors import DataError, ParameterError
from benchmark.training.profiles import PROFILES, Profile
from benchmark.training.search import SearchSettings, run_search

ROOT = Path(__file__).resolve().parents[1]
TINY = Profile(name="tiny", trials=2, epochs=2, architectures=("unet3d", "segresnet3d"), widths=(0.0625,),
               grid=(16, 16, 8), batch_size=2, patience=0, warmup=0,
               first={"architecture": "unet3d", "width": 0.0625, "lr": 3e-3, "weight_decay": 1e-5,
                      "loss": "dice_ce", "augment": 0.5})



def _settings(data, workdir, **kw):
    values = {"data": data, "trials": 2, "epochs": 2, "study": "s", "storage": f"sqlite:///{workdir}/optuna.db",
              "experiment": "e", "seed": 0, "device": "cpu", "profile": TINY,
              "checkpoints": workdir / "ckpt", "cache": None, "progress": False}
    return SearchSettings(**{**values, **kw})


def _runs(workdir):
    client = MlflowClient(f"sqlite:///{workdir}/mlflow.db")
    experiment = client.get_experiment_by_name("e")
    return client, client.search_runs([experiment.experiment_id])


def test_search_tracks_parent_and_nested_trial_runs(isles_dir, workdir):
    result = run_search(_settings(isles_dir, workdir))
    client, runs = _runs(workdir)
    parents = [r for r in runs if r.data.tags.get("strokelens.kind") == "search"]
    trials = [r for r in runs if r.data.tags.get("strokelens.kind") == "trial"]
    assert len(parents) == 1 and len(trials) == 2
    parent = parents[0]
    assert all(r.data.tags["mlflow.parentRunId"] == parent.info.run_id for r in trials)
    assert all(r.info.status == "FINISHED" for r in trials)
    states = {r.data.tags["strokelens.trial"]: r.data.tags["strokelens.state"] for r in trials}
    assert states["0"] == "complete" and states["1"] in ("complete", "pruned")
    assert {r.data.params["architecture"] for r in trials} <= {"unet3d", "segresnet3d"}
    first = next(r for r in trials if r.data.tags["strokelens.trial"] == "0")
    assert first.data.params["lr"] == "0.003"  # the profile's known-good start
    for r in trials:
        history = client.get_metric_history(r.info.run_id, "val_dice")
        assert [m.step for m in history] == ([0, 1] if states[r.data.tags["strokelens.trial"]] == "complete" else [0])
        assert {"train_loss", "val_hd95", "param_count"} <= set(r.data.metrics)
        artifacts = {a.path for a in client.list_artifacts(r.info.run_id, "checkpoint")}
        assert artifacts == {"checkpoint/best.pt", "checkpoint/last.pt", "checkpoint/preprocess.json"}
        figures = client.list_artifacts(r.info.run_id, "figures")
        assert figures and all(f.path.endswith(".png") for f in figures)
    assert parent.data.tags["strokelens.best_trial_run"] == result.best_run_id
    assert parent.data.metrics["study_best_val_dice"] == pytest.approx(result.best_value)
    assert "best_val_dice" not in parent.data.metrics  # the trials' metric name is theirs alone
    assert {a.path for a in client.list_artifacts(parent.info.run_id)} >= {"best_trial.json", "checkpoint"}


def test_same_study_resumes_and_a_new_direction_is_refused(isles_dir, workdir):
    run_search(_settings(isles_dir, workdir, trials=1))
    run_search(_settings(isles_dir, workdir, trials=1))
    study = optuna.load_study(study_name="s", storage=f"sqlite:///{workdir}/optuna.db")
    assert [t.number for t in study.trials] == [0, 1]
    optuna.create_study(study_name="other", storage=f"sqlite:///{workdir}/optuna.db", direction="minimize")
    with pytest.raises(ParameterError, match="study 'other'.*minimize"):
        run_search(_settings(isles_dir, workdir, study="other"))


def test_crash_and_ctrl_c_mark_the_trial_failed_and_the_study_resumable(isles_dir, workdir, monkeypatch):
    real_fit = search.fit
    calls = {"n": 0}

    def crashing_fit(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("simulated crash")
        on_epoch = kwargs["on_epoch"]

        def interrupt(epoch, row):
            on_epoch(epoch, row)
            raise KeyboardInterrupt

        return real_fit(*args, **{**kwargs, "on_epoch": interrupt})

    monkeypatch.setattr(search, "fit", crashing_fit)
    with pytest.raises(KeyboardInterrupt):
        run_search(_settings(isles_dir, workdir))
    client, runs = _runs(workdir)
    assert not [r for r in runs if r.info.status == "RUNNING"]
    assert {r.info.status for r in runs} == {"FAILED"}
    assert sorted(r.data.tags.get("strokelens.state", "-") for r in runs) == ["-", "failed", "failed"]
    study = optuna.load_study(study_name="s", storage=f"sqlite:///{workdir}/optuna.db")
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.FAIL] * 2
    monkeypatch.setattr(search, "fit", real_fit)
    run_search(_settings(isles_dir, workdir, trials=1))
    study = optuna.load_study(study_name="s", storage=f"sqlite:///{workdir}/optuna.db")
    retry = study.trials[-1]
    assert retry.state == optuna.trial.TrialState.COMPLETE
    assert search.retry_of(retry) == 1
    trial_runs = {r.data.tags["strokelens.trial"]: r for r in _runs(workdir)[1]
                  if r.data.tags.get("strokelens.kind") == "trial"}
    assert trial_runs[str(retry.number)].data.params["resumed_from"].endswith("trial_0001/last.pt")


def test_no_usable_case_is_an_error_before_any_run(tmp_path, workdir):
    (tmp_path / "training_1").mkdir()
    with pytest.raises(DataError):
        run_search(_settings(tmp_path, workdir))
    assert not (workdir / "mlflow.db").exists() or not _runs(workdir)[1]
    assert not (workdir / "optuna.db").exists() or not optuna.get_all_study_names(f"sqlite:///{workdir}/optuna.db")


def _train_cli(workdir, *args):
    return subprocess.run([sys.executable, "-m", "mlproject.train", *args], cwd=workdir, capture_output=True,
                          text=True, timeout=600, env={**__import__("os").environ, "PYTHONPATH": str(ROOT)})


@pytest.mark.parametrize("args,needle", [
    (["--profile", "huge"], "profile 'huge' is unknown"),
    (["--epochs", "0"], "epochs must be at least 1"),
    (["--trials", "0"], "trials must be at least 1"),
    (["--storage", "notaurl"], "storage 'notaurl'"),
    (["--architectures", "vnet"], "architecture 'vnet' is unknown"),
    (["--top-k", "0"], "top-k must be at least 1"),
])
def test_train_cli_bad_parameters(isles_dir, workdir, args, needle):
    result = _train_cli(workdir, "--data", str(isles_dir), *args)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], result.stderr
    if (workdir / "mlflow.db").exists():
        assert not [r for r in _runs(workdir)[1] if r.info.status == "RUNNING"]


def test_two_workers_share_one_study(isles_dir, workdir):
    args = ["--data", str(isles_dir), "--trials", "1", "--epochs", "1", "--study", "shared",
            "--storage", f"sqlite:///{workdir}/optuna.db", "--experiment", "e", "--device", "cpu",
            "--architectures", "segresnet3d", "--widths", "0.0625", "--no-export"]
    env = {**__import__("os").environ, "PYTHONPATH": str(ROOT)}
    workers = [subprocess.Popen([sys.executable, "-m", "mlproject.train", *args, "--seed", str(i)], cwd=workdir,
                                env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for i in range(2)]
    outputs = [w.communicate(timeout=600) for w in workers]
    assert [w.returncode for w in workers] == [0, 0], outputs
    study = optuna.load_study(study_name="shared", storage=f"sqlite:///{workdir}/optuna.db")
    assert sorted(t.number for t in study.trials) == [0, 1]
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials)
    _, runs = _runs(workdir)
    assert sum(r.data.tags.get("strokelens.kind") == "search" for r in runs) == 2


def test_train_exports_the_top_k_and_the_best_is_champion(isles_dir, workdir):
    result = _train_cli(workdir, "--data", str(isles_dir), "--trials", "2", "--epochs", "1", "--study", "k",
                        "--storage", f"sqlite:///{workdir}/optuna.db", "--device", "cpu", "--architectures",
                        "segresnet3d", "--widths", "0.0625", "--top-k", "2")
    assert result.returncode == 0, result.stderr
    client = MlflowClient(f"sqlite:///{workdir}/mlflow.db")
    versions = client.search_model_versions("name='strokelens-segmenter'")
    assert len(versions) == 2
    champion = client.get_model_version_by_alias("strokelens-segmenter", "champion")
    study = optuna.load_study(study_name="k", storage=f"sqlite:///{workdir}/optuna.db")
    exported_from = client.get_run(champion.run_id).data.tags["strokelens.model_run"]
    assert exported_from == study.best_trial.user_attrs["mlflow_run_id"]
    assert "int8_dice_change" in client.get_run(champion.run_id).data.metrics


def test_a_new_study_covers_every_architecture_once_then_searches(tmp_path):
    profile = dataclasses.replace(TINY, architectures=("unet3d", "segresnet3d", "resunet3d"), cover=True)
    storage = f"sqlite:///{tmp_path}/optuna.db"
    study = optuna.create_study(direction="maximize", storage=storage)
    search.prepare_study(study, storage, profile, tmp_path / "ckpt")
    waiting = [t.system_attrs["fixed_params"] for t in study.get_trials(states=(optuna.trial.TrialState.WAITING,))]
    assert [p["architecture"] for p in waiting] == ["unet3d", "segresnet3d", "resunet3d"]
    assert all({k: v for k, v in p.items() if k != "architecture"} ==
               {k: v for k, v in TINY.first.items() if k != "architecture"} for p in waiting)
    search.prepare_study(study, storage, profile, tmp_path / "ckpt")  # an existing study is not seeded again
    assert len(study.get_trials()) == 3
    assert PROFILES["default"].cover


def test_a_trial_resumes_on_another_host_from_its_mlflow_checkpoint(isles_dir, workdir, monkeypatch):
    real_fit = search.fit

    def interrupted_fit(*args, **kwargs):
        on_epoch = kwargs["on_epoch"]

        def interrupt(epoch, row):
            on_epoch(epoch, row)
            raise KeyboardInterrupt

        return real_fit(*args, **{**kwargs, "on_epoch": interrupt})

    monkeypatch.setattr(search, "fit", interrupted_fit)
    with pytest.raises(KeyboardInterrupt):
        run_search(_settings(isles_dir, workdir, trials=1))
    client, runs = _runs(workdir)
    (dead,) = [r for r in runs if r.data.tags.get("strokelens.kind") == "trial"]
    assert "checkpoint/last.pt" in {a.path for a in client.list_artifacts(dead.info.run_id, "checkpoint")}
    monkeypatch.setattr(search, "fit", real_fit)
    real_validate = loop.validate

    def worse(*args, **kwargs):  # epoch 1 never beats epoch 0: the best weights must come from the dead run
        means, rest = real_validate(*args, **kwargs)
        return {**means, "val_dice": -1.0}, rest

    monkeypatch.setattr(loop, "validate", worse)
    other_host = workdir / "elsewhere"  # a fresh checkpoint cache: only MLflow holds the resume point
    run_search(_settings(isles_dir, workdir, trials=1, checkpoints=other_host))
    study = optuna.load_study(study_name="s", storage=f"sqlite:///{workdir}/optuna.db")
    retry = study.trials[-1]
    assert retry.state == optuna.trial.TrialState.COMPLETE and search.retry_of(retry) == 0
    run = next(r for r in _runs(workdir)[1] if r.data.tags.get("strokelens.trial") == str(retry.number))
    assert run.data.params["resumed_from"].startswith(str(other_host))
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val_dice")] == [1]  # epoch 0 not redone
    assert "checkpoint/best.pt" in {a.path for a in client.list_artifacts(run.info.run_id, "checkpoint")}
    best = search.checkpoint_of(retry, other_host / "s").parent / "best.pt"
    assert loop.load_checkpoint(best)["epoch"] == 0


def test_trial_runs_record_system_metrics_and_the_code_version(isles_dir, workdir, monkeypatch):
    import tracking.runs
    from tracking.context import TAG_GIT_COMMIT, TAG_LOCK, lock_digest

    monkeypatch.setattr(tracking.runs, "SYSTEM_METRICS_INTERVAL_S", 1)
    monkeypatch.setattr(search, "fit", _slowed(search.fit))
    run_search(_settings(isles_dir, workdir, trials=1))
    _, runs = _runs(workdir)
    (trial,) = [r for r in runs if r.data.tags.get("strokelens.kind") == "trial"]
    assert any(k.startswith("system/cpu_utilization") for k in trial.data.metrics)
    assert any(k.startswith("system/system_memory_usage") for k in trial.data.metrics)
    for run in runs:
        assert run.data.tags[TAG_LOCK] == lock_digest() and len(run.data.tags[TAG_GIT_COMMIT]) >= 7


def _slowed(fit):
    """``fit`` whose every epoch lasts at least 1.5 s, so the 1 s system-metrics sampler takes a sample."""
    import time

    def slowed(*args, **kwargs):
        on_epoch = kwargs["on_epoch"]

        def wait(epoch, row):
            time.sleep(1.5)
            on_epoch(epoch, row)

        return fit(*args, **{**kwargs, "on_epoch": wait})

    return slowed


def test_the_experiment_opens_in_the_training_view_with_a_description(isles_dir, workdir):
    import tracking.runs

    client = MlflowClient(f"sqlite:///{workdir}/mlflow.db")
    mine = client.create_experiment("e", tags={tracking.runs.NOTE_TAG: "my own words"})
    tracking.runs.setup("e")
    tags = client.get_experiment(mine).tags
    assert tags["mlflow.experimentKind"] == "custom_model_development"
    assert tags[tracking.runs.NOTE_TAG] == "my own words"
    tracking.runs.setup("fresh")
    assert "strokelens.kind" in client.get_experiment_by_name("fresh").tags[tracking.runs.NOTE_TAG]
