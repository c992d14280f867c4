"""Scale-out for real: 3 workers on one study through an MLflow server on PostgreSQL, one SIGKILLed.

Every worker runs in its own folder with only the two URIs (``MLFLOW_TRACKING_URI`` and
``--storage``), as on separate hosts: no file is shared but the data. The killed worker's command is
run again from a fresh folder (another host): it recovers the dead trial at once (its process is
gone), resumes it from the checkpoint its run logged to the server, then exports the study's best.
A fourth process, again with only the URIs, builds the report.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pandas as pd
import pytest

from benchmark.training.studies import retry_of
from tracking.errors import TrackingError
from tracking.services import LocalPostgres, TrackingServer

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]


def _command(data, storage, *extra):
    return [sys.executable, "-m", "mlproject.train", "--data", str(data), "--trials", "2", "--epochs", "4",
            "--study", "scale", "--storage", storage, "--experiment", "scale", "--architectures",
            "unet3d,segresnet3d", "--widths", "0.0625", "--time-budget", "0", "--device", "cpu", *extra]


def _env(server_url):
    return {**os.environ, "MLFLOW_TRACKING_URI": server_url, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}


def _wait_for_epoch(storage, pid, timeout=300):
    """Block until worker ``pid`` runs a trial that has reported an epoch."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            trials = optuna.load_study(study_name="scale", storage=storage).get_trials()
        except KeyError:
            trials = []
        for t in trials:
            if (t.state == optuna.trial.TrialState.RUNNING and (t.user_attrs.get("worker") or {}).get("pid") == pid
                    and t.intermediate_values):
                return t.number
        time.sleep(0.5)
    raise AssertionError("the worker never reported an epoch")


def test_three_workers_on_postgresql_through_the_server_survive_a_sigkill(isles_dir, tmp_path):
    try:
        postgres = LocalPostgres()
        postgres.__enter__()
    except TrackingError as exc:
        if os.environ.get("CI"):
            raise
        pytest.skip(f"no PostgreSQL here: {exc}")
    try:
        with TrackingServer(postgres.url("mlflow"), tmp_path / "artifacts") as server:
            storage, env = postgres.url("optuna"), _env(server.url)
            hosts = [tmp_path / f"host{i}" for i in range(5)]
            for host in hosts:
                host.mkdir()
            workers = [subprocess.Popen(_command(isles_dir, storage, "--no-export"), cwd=hosts[i], env=env,
                                        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
                       for i in range(3)]
            killed = _wait_for_epoch(storage, workers[0].pid)
            workers[0].send_signal(signal.SIGKILL)
            workers[0].wait()
            for w in workers[1:]:
                _, err = w.communicate(timeout=900)
                assert w.returncode == 0, err
            again = subprocess.run(_command(isles_dir, storage), cwd=hosts[3], env=env, capture_output=True,
                                   text=True, timeout=900)
            assert again.returncode == 0, again.stderr

            trials = optuna.load_study(study_name="scale", storage=storage).get_trials()
            states = {t.number: t.state for t in trials}
            assert states[killed] == optuna.trial.TrialState.FAIL
            retries = [t for t in trials if retry_of(t) == killed]
            assert len(retries) == 1 and retries[0].state == optuna.trial.TrialState.COMPLETE
            finished = [t for t in trials if t.state != optuna.trial.TrialState.FAIL]
            assert all(t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
                       for t in finished)
            params = [tuple(sorted(t.params.items())) for t in finished]
            assert len(set(params)) == len(params)  # no two workers trained the same configuration

            from mlflow.tracking import MlflowClient

            client = MlflowClient(server.url)
            experiment = client.get_experiment_by_name("scale")
            runs = client.search_runs([experiment.experiment_id], max_results=1000)
            assert not [r for r in runs if r.info.status == "RUNNING"]
            trial_runs = [r for r in runs if r.data.tags.get("strokelens.kind") == "trial"]
            pids = {json.loads(r.data.tags["strokelens.worker"])["pid"] for r in trial_runs}
            assert len(pids) == 4  # the three workers and the rerun all logged to the one experiment
            complete = [r for r in trial_runs if r.data.tags.get("strokelens.state") == "complete"]
            for run in complete:
                assert "checkpoint/best.pt" in {a.path for a in client.list_artifacts(run.info.run_id, "checkpoint")}
            resumed = next(r for r in trial_runs if r.data.tags.get("strokelens.trial") == str(retries[0].number))
            assert resumed.data.params["resumed_from"].startswith(str(hosts[3]))  # fetched from the server

            best = max((t for t in finished if t.state == optuna.trial.TrialState.COMPLETE), key=lambda t: t.value)
            champion = client.get_model_version_by_alias("strokelens-segmenter", "champion")
            assert champion.tags["trial_run"] == best.user_attrs["mlflow_run_id"]

            reports = []
            for host in hosts[3:5]:
                made = subprocess.run([sys.executable, "-m", "mlproject.report", "--study", "scale", "--experiment",
                                       "scale", "--out", str(host / "reports")], cwd=host, env=env,
                                      capture_output=True, text=True, timeout=600)
                assert made.returncode == 0, made.stderr
                reports.append(pd.read_csv(host / "reports" / "scale" / "architectures.csv"))
            shown = ["name", "dice_mean", "trials", "pruned", "failed", "run_id"]
            pd.testing.assert_frame_equal(reports[0][shown], reports[1][shown])
            assert set(reports[1]["name"]) >= {"unet3d", "segresnet3d"}
    finally:
        postgres.__exit__(None, None, None)
