"""Every cause of the reliability issue's "one line, never a traceback" list, driven through the real CLIs.

Each command runs as ``python -m mlproject.X`` in a fresh folder: exit 2 (130 for Ctrl-C), exactly
one stderr line that names the cause, no traceback, and nothing created that should not be.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

import models
from benchmark.atomic import is_temporary, remove_temporary
from benchmark.data.preprocessing import PreprocessConfig
from benchmark.errors import ParameterError
from benchmark.paths import check_name, check_writable
from benchmark.training.loop import seed_everything
from models.onnx import export_onnx
from tracking import model_registry, recovery
from tracking import runs as tracking
from tracking.errors import TrackingError

ROOT = Path(__file__).resolve().parents[1]
CONFIG = PreprocessConfig(grid=(16, 16, 8))


def _cli(workdir, module, *args, timeout=600):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MLFLOW_TRACKING_URI": f"sqlite:///{workdir}/mlflow.db"}
    return subprocess.run([sys.executable, "-m", f"mlproject.{module}", *map(str, args)], cwd=workdir, env=env,
                          capture_output=True, text=True, timeout=timeout)


def _one_line(result, needle, code=2):
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == code, result.stderr[-3000:]
    assert "Traceback" not in result.stderr and len(lines) == 1, result.stderr[-3000:]
    assert needle in lines[0] and lines[0].startswith("strokelens "), lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def onnx_model(tmp_path_factory):
    seed_everything(1)
    model = models.build("resunet3d", 6, width=0.0625).eval()
    return export_onnx(model, tmp_path_factory.mktemp("onnx") / "model.onnx", CONFIG.to_dict()).onnx_path


@pytest.fixture
def workdir(tmp_path):
    (tmp_path / "afile").write_text("a user's file")
    return tmp_path


TRAIN = ["--device", "cpu", "--architectures", "segresnet3d", "--widths", "0.0625", "--epochs", "1", "--trials", "1",
         "--no-export"]


@pytest.mark.parametrize("where,needle", [("afile/ck", "lies under the file"), ("/proc/strokelens-ck", "cannot be "
                                                                                  "written")])
def test_train_unwritable_checkpoints(isles_dir, workdir, where, needle):
    result = _cli(workdir, "train", "--data", isles_dir, *TRAIN, "--checkpoints", where,
                  "--storage", f"sqlite:///{workdir}/optuna.db")
    assert "checkpoints folder" in _one_line(result, needle)
    assert not (workdir / "optuna.db").exists() and not (workdir / "mlflow.db").exists()  # refused before anything


@pytest.mark.parametrize("args,needle", [
    (["--storage", "sqlite:///"], "names no file"),
    (["--experiment", "../../escape"], "experiment name '../../escape' is not allowed: use letters"),
    (["--experiment", ".hidden"], "not starting with '.'"),
    (["--study", "../../escape"], "study name '../../escape' is not allowed"),
])
def test_train_bad_storage_and_names(isles_dir, workdir, args, needle):
    _one_line(_cli(workdir, "train", "--data", isles_dir, *TRAIN, *args), needle)
    assert not (workdir / "checkpoints").exists() and not (workdir.parent / "escape").exists()


@pytest.mark.parametrize("args,needle", [
    (["--out", "afile/reports"], "lies under the file"),
    (["--out", "/proc/strokelens-reports"], "cannot be written"),
    (["--study", "../../escape"], "study name '../../escape' leads outside 'reports'"),
    (["--study", ".hidden"], "study name '.hidden' leads outside 'reports' or is hidden"),
    (["--experiment", "a/b"], "experiment name 'a/b' is not allowed"),
])
def test_report_bad_out_and_names(workdir, args, needle):
    _one_line(_cli(workdir, "report", *args), needle)
    assert (workdir / "afile").read_text() == "a user's file"


@pytest.mark.parametrize("out,needle", [("afile/data", "lies under the file"),
                                        ("/proc/strokelens-data", "cannot be written")])
def test_synth_unwritable_out(workdir, out, needle):
    _one_line(_cli(workdir, "synth", "--out", out, "--cases", "1", "--shape", "16x16x8"), needle)


@pytest.mark.parametrize("output,needle", [("afile/out", "lies under the file"),
                                           ("/proc/strokelens-out", "cannot be written")])
def test_predict_unwritable_output(onnx_model, isles_dir, workdir, output, needle):
    _one_line(_cli(workdir, "predict", "-m", onnx_model, "-i", isles_dir / "test_1", "-o", output), needle)


@pytest.mark.parametrize("threshold", ["nan", "1.5"])
def test_predict_threshold_outside_0_1(onnx_model, isles_dir, workdir, threshold):
    _one_line(_cli(workdir, "predict", "-m", onnx_model, "-i", isles_dir / "test_1", "-o", "out",
                   f"--threshold={threshold}"), "strictly between 0 and 1")
    assert not (workdir / "out").exists()


@pytest.mark.parametrize("change,needle", [
    (lambda meta: meta["preprocess"].pop("grid"), "lacks the preprocessing settings grid"),
    (lambda meta: meta.pop("preprocess"), "lacks the preprocessing settings modalities, normalization, grid"),
    (lambda meta: meta["preprocess"]["modalities"].pop(), "lists 5 modalities but"),
])
def test_predict_broken_preprocessing_json(onnx_model, isles_dir, workdir, change, needle):
    model = workdir / "m" / "model.onnx"
    model.parent.mkdir()
    shutil.copy(onnx_model, model)
    meta = json.loads(Path(onnx_model).with_suffix(".json").read_text())
    change(meta)
    model.with_suffix(".json").write_text(json.dumps(meta))
    _one_line(_cli(workdir, "predict", "-m", model, "-i", isles_dir / "test_1", "-o", "out"), needle)
    assert not (workdir / "out").exists()


def test_preprocessing_settings_without_their_keys_name_them():
    with pytest.raises(ParameterError, match="lack 'normalization', 'grid'"):
        PreprocessConfig.from_dict({"modalities": ["ADC"]})


def test_explain_unwritable_out_and_bad_experiment(isles_dir, workdir):
    _one_line(_cli(workdir, "explain", "--model", "x.pt", "--data", isles_dir, "--out", "afile/x"),
              "explanations folder 'afile/x' lies under the file")
    _one_line(_cli(workdir, "explain", "--model", "x.pt", "--experiment", "..", "--data", isles_dir),
              "experiment name '..' is not allowed")
    assert not (workdir / "mlflow.db").exists()


def test_experiment_names_are_checked_where_they_reach_mlflow(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    for hostile in ("../x", ".x", "a\\b", "x" * 129):
        with pytest.raises(TrackingError, match="experiment name .* is not allowed: use letters"):
            tracking.setup(hostile)
    assert not (tmp_path / "mlflow.db").exists()  # refused before the store is touched
    assert check_name(model_registry.REGISTERED_MODEL, "registered model") == "strokelens-segmenter"


def test_check_writable_creates_nothing(tmp_path):
    target = tmp_path / "a" / "b"
    assert check_writable(target, "out") == target
    assert sorted(tmp_path.iterdir()) == []
    (tmp_path / "f").write_text("x")
    with pytest.raises(ParameterError, match="is a file, not a folder"):
        check_writable(tmp_path / "f", "out")


def test_only_atomic_temporary_names_are_removed(tmp_path):
    names = {".case_lesion.nii.gz.ab12cd_9.tmp.nii.gz": True, ".predictions.csv.abcdefgh.tmp.csv": True,
             ".x_random.json.k2j4l5m6.tmp.json": True, "notes.tmp.nii.gz": False, ".my_notes.txt": False,
             ".a.png.abcdefgh.tmp.csv": False, "a.png.abcdefgh.tmp.png": False}
    for name in names:
        (tmp_path / name).write_text("x")
    assert {n: is_temporary(n) for n in names} == names
    assert remove_temporary(tmp_path) == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(n for n, temporary in names.items() if not temporary)


def test_stale_explain_runs_and_their_nested_runs_are_failed(tmp_path, monkeypatch):
    import mlflow

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    tracking.setup("e")
    client = MlflowClient(tracking.tracking_uri())
    parent = client.create_run(client.get_experiment_by_name("e").experiment_id,
                               tags={tracking.TAG_KIND: "explain", recovery.TAG_WORKER: json.dumps({"pid": -1})})
    child = client.create_run(parent.info.experiment_id, tags={tracking.TAG_KIND: "explanation",
                                                               "mlflow.parentRunId": parent.info.run_id})
    with mlflow.start_run(run_name="alive") as alive:  # a run of a live process, no owner tag: kept
        mlflow.set_tag(tracking.TAG_KIND, "explain")
        ended = recovery.fail_stale_runs("e", None, lambda worker: worker["pid"] == -1, kind="explain")
    assert sorted(ended) == sorted([parent.info.run_id, child.info.run_id])
    assert {client.get_run(r).info.status for r in ended} == {"FAILED"}
    assert client.get_run(alive.info.run_id).info.status == "FINISHED"


def test_ctrl_c_during_a_trial_is_one_line_without_an_optuna_traceback(isles_dir, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/mlflow.db"}
    child = subprocess.Popen([sys.executable, "-m", "mlproject.train", "--data", str(isles_dir), "--device", "cpu",
                              "--architectures", "segresnet3d", "--widths", "0.0625", "--epochs", "200", "--trials",
                              "50", "--no-export", "--storage", f"sqlite:///{tmp_path}/optuna.db"], cwd=tmp_path,
                             env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    seen = ""
    while "A new study created" not in seen:  # Optuna's own line: the first trial starts now
        line = child.stderr.readline()
        assert line, seen
        seen += line
    time.sleep(3.0)  # 50 trials last minutes even on an idle machine (early stopping ends each in seconds)
    child.send_signal(signal.SIGINT)
    _, err = child.communicate(timeout=300)
    err = seen + err
    assert child.returncode == 130, err[-3000:]
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err[-3000:]
    assert err.strip().splitlines()[-1] == "strokelens train: interrupted"
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert runs and not [r for r in runs if r.info.status == "RUNNING"]
