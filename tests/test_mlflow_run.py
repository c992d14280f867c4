"""Slow: the MLflow-native way, `mlflow run . -e train` then `-e report` (`--env-manager local`), on small settings."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_mlflow_run_train_entry_point(isles_dir, tmp_path):
    mlflow_cli = Path(sys.executable).with_name("mlflow")
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/mlflow.db",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    params = {"data": str(isles_dir), "trials": "2", "epochs": "2", "study": "slow",
              "storage": f"sqlite:///{tmp_path}/optuna.db", "architectures": "segresnet3d", "widths": "0.0625",
              "seed": "3"}
    command = [str(mlflow_cli), "run", str(ROOT), "-e", "train", "--env-manager", "local",
               "--experiment-name", "slow"]
    for key, value in params.items():
        command += ["-P", f"{key}={value}"]
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("slow").experiment_id])
    parent = [r for r in runs if r.data.tags.get("strokelens.kind") == "search"]
    trials = [r for r in runs if r.data.tags.get("strokelens.kind") == "trial"]
    assert len(parent) == 1 and len(trials) == 2
    assert parent[0].data.params["seed"] == "3" and parent[0].data.params["trials"] == "2"  # parameters arrive
    assert {r.data.params["architecture"] for r in trials} == {"segresnet3d"}
    # later stages under `mlflow run` read the project run's experiment and write their kind's (slow-report)
    report = subprocess.run([str(mlflow_cli), "run", str(ROOT), "-e", "report", "--env-manager", "local",
                             "--experiment-name", "slow", "-P", "study=slow", "-P", f"out={tmp_path / 'reports'}"],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert report.returncode == 0, report.stderr[-3000:]
    assert (tmp_path / "reports" / "slow" / "leaderboard.html").is_file()
    runs = client.search_runs([client.get_experiment_by_name("slow-report").experiment_id])
    reports = [r for r in runs if r.data.tags.get("strokelens.kind") == "report"]
    assert [r.data.tags.get("strokelens.study") for r in reports] == ["slow"]
    launcher = [r for r in client.search_runs([client.get_experiment_by_name("slow").experiment_id])
                if r.data.tags.get("strokelens.stage_run")]
    assert [r.data.tags["strokelens.stage_run"] for r in launcher] == [reports[0].info.run_id]  # it says where
    # named after the kind's experiment, the project run is the stage's run
    report = subprocess.run([str(mlflow_cli), "run", str(ROOT), "-e", "report", "--env-manager", "local",
                             "--experiment-name", "slow-report", "-P", "study=slow",
                             "-P", f"out={tmp_path / 'reports'}"],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert report.returncode == 0, report.stderr[-3000:]
    runs = client.search_runs([client.get_experiment_by_name("slow-report").experiment_id])
    assert len(runs) == 2 and all(r.data.tags.get("strokelens.kind") == "report" for r in runs)


def test_under_mlflow_run_the_search_is_the_project_run_and_exports_get_their_own(isles_dir, tmp_path):
    """What `mlflow run . -e train` hands the command: MLFLOW_RUN_ID of a run it made (here made by hand)."""
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(uri)
    project = client.create_run(client.create_experiment("proj"), run_name="mlflow-run-made-this")
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "MLFLOW_RUN_ID": project.info.run_id, "PYTHONPATH": str(ROOT)}
    result = subprocess.run([sys.executable, "-m", "mlproject.train", "--data", str(isles_dir), "--trials", "1",
                             "--epochs", "1", "--study", "p", "--storage", f"sqlite:///{tmp_path}/optuna.db",
                             "--device", "cpu", "--architectures", "segresnet3d", "--widths", "0.0625",
                             "--experiment", ""], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    runs = {r.info.run_id: r for r in client.search_runs([project.info.experiment_id])}
    searched = runs[project.info.run_id]
    assert searched.data.tags["strokelens.kind"] == "search" and searched.data.tags["mlflow.runName"] == "search-p"
    assert searched.info.status == "FINISHED" and "split.json" in {a.path for a in client.list_artifacts(
        project.info.run_id)}
    exports = [r for r in runs.values() if r.data.tags.get("strokelens.kind") == "export"]
    assert len(exports) == 1 and exports[0].info.run_id != project.info.run_id
    assert not exports[0].data.tags.get("mlflow.parentRunId")
    trials = [r for r in runs.values() if r.data.tags.get("strokelens.kind") == "trial"]
    assert [t.data.tags["mlflow.parentRunId"] for t in trials] == [project.info.run_id]
    assert client.get_experiment_by_name("strokelens") is None  # nothing went to the default experiment
