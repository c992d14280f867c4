"""Slow: ``train``, ``predict`` and ``explain`` killed with SIGKILL and SIGTERM at random moments, rerun after each.

For ``train`` it asserts what the reliability issue promises: no MLflow run and no Optuna trial left
RUNNING, every trial that died either retried or never started training, no retried trial trained
again from scratch when its checkpoint existed, the study complete, every checkpoint loadable, and
the champion the best complete trial. For ``predict`` and ``explain``: after every kill each output
is complete (it loads) or absent, work finished before a run is never redone (file times unchanged),
the rerun that completes says how many cases or jobs it skipped and that count is right, no temporary
file is left, no MLflow run stays RUNNING, and ``--overwrite`` recomputes everything.
"""

import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import optuna
import pytest
from mlflow.tracking import MlflowClient

from benchmark.atomic import is_temporary
from benchmark.data.synthetic import write_dataset

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
KILLS = 10


def _train(workdir, data, *extra):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MLFLOW_TRACKING_URI": f"sqlite:///{workdir}/mlflow.db"}
    return subprocess.Popen([sys.executable, "-m", "mlproject.train", "--data", str(data), "--study", "kill",
                             "--storage", f"sqlite:///{workdir}/optuna.db", "--device", "cpu", "--architectures",
                             "unet3d,segresnet3d", "--widths", "0.0625", "--epochs", "3", "--trials", "2",
                             "--time-budget", "0", *extra], cwd=workdir, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)


def test_train_survives_sigkill_and_sigterm_at_random_points(tmp_path):
    data = write_dataset(tmp_path / "data", 6, seed=11, shapes=[(48, 48, 10)], test_cases=0, progress=False)
    rng = random.Random(0)
    codes = []
    for k in range(KILLS):
        process = _train(tmp_path, data, "--no-export")
        time.sleep(rng.uniform(4.0, 20.0))
        sig = signal.SIGKILL if k % 2 == 0 else signal.SIGTERM
        process.send_signal(sig)
        _, err = process.communicate(timeout=120)
        codes.append((sig, process.returncode))
        if sig == signal.SIGTERM and process.returncode == 143:
            assert "Traceback" not in err and err.strip().splitlines()[-1].endswith("to resume"), err
    final = _train(tmp_path, data)
    _, err = final.communicate(timeout=1800)
    assert final.returncode == 0, err[-3000:]
    assert any(code == -signal.SIGKILL for sig, code in codes if sig == signal.SIGKILL)

    study = optuna.load_study(study_name="kill", storage=f"sqlite:///{tmp_path}/optuna.db")
    trials = study.get_trials()
    states = {t.state for t in trials}
    assert optuna.trial.TrialState.RUNNING not in states and optuna.trial.TrialState.WAITING not in states
    retried = {n for t in trials for n in t.system_attrs.get("retry_history", [])}
    for t in trials:
        if t.state == optuna.trial.TrialState.FAIL:
            started = (tmp_path / "checkpoints" / "kill" / t.user_attrs.get("checkpoint", "-")).is_file()
            assert t.number in retried or not started, f"trial {t.number} died after training and was never retried"
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert not [r.info.run_id for r in runs if r.info.status == "RUNNING"]
    by_trial = {r.data.tags.get("strokelens.trial"): r for r in runs if r.data.tags.get("strokelens.kind") == "trial"}
    for t in trials:
        original = t.system_attrs.get("failed_trial")
        if original is None or str(t.number) not in by_trial:
            continue
        previous = tmp_path / "checkpoints" / "kill" / trials[original].user_attrs.get("checkpoint", "-")
        resumed = by_trial[str(t.number)].data.params.get("resumed_from", "")
        if previous.is_file():  # never trained twice from scratch
            assert resumed, f"retry {t.number} of trial {original} started from scratch"

    import torch

    from benchmark.training.loop import load_model

    for best in (tmp_path / "checkpoints" / "kill").rglob("*.pt"):
        assert isinstance(load_model(best), torch.nn.Module)
    complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert complete and study.best_trial.number == max(complete, key=lambda t: t.value).number
    champion = client.get_model_version_by_alias("strokelens-segmenter", "champion")
    assert client.get_run(champion.run_id).data.tags["strokelens.model_run"] == \
        study.best_trial.user_attrs["mlflow_run_id"]


def _cli(workdir, module, *args):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MLFLOW_TRACKING_URI": f"sqlite:///{workdir}/mlflow.db"}
    return subprocess.Popen([sys.executable, "-m", f"mlproject.{module}", *map(str, args)], cwd=workdir, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _kill_when(process, progress, target, rng, late=0.5, at_least=0.0):
    """Wait until ``progress()`` reaches ``target``, ``at_least`` seconds have passed, and a random moment more."""
    started = time.monotonic()
    while process.poll() is None and (progress() < target or time.monotonic() - started < at_least):
        time.sleep(0.1)
    time.sleep(rng.uniform(0.0, late))


def _stop(process, sig=None):
    """Send ``sig`` (None: none, wait for the end); the exit code, stdout and stderr."""
    if sig is not None and process.poll() is None:
        process.send_signal(sig)
    out, err = process.communicate(timeout=300)
    return process.returncode, out, err


def _loads(path: Path) -> None:
    if path.name.endswith(".nii.gz"):
        assert np.isfinite(np.asanyarray(nib.load(path).dataobj)).all(), path
    elif path.suffix == ".json":
        json.loads(path.read_text())
    elif path.suffix == ".png":
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.read_bytes()[-8:-4] == b"IEND", path


def _outputs(folder: Path) -> dict[str, int]:
    """Every finished output (not hidden) and its modification time; each must load completely."""
    found = {}
    for path in sorted(folder.iterdir()) if folder.is_dir() else []:
        if path.is_file() and not path.name.startswith("."):
            _loads(path)
            found[path.name] = path.stat().st_mtime_ns
    return found


def _names(folder: Path) -> set[str]:
    """Finished outputs by name only (cheap enough to poll)."""
    return {p.name for p in folder.iterdir() if not p.name.startswith(".")} if folder.is_dir() else set()


def _temporary(folder: Path) -> list[str]:
    return [p.name for p in folder.iterdir() if is_temporary(p.name)] if folder.is_dir() else []


@pytest.fixture(scope="module")
def onnx_model(tmp_path_factory):
    import models
    from benchmark.data.preprocessing import PreprocessConfig
    from benchmark.training.loop import seed_everything
    from models.onnx import export_onnx

    seed_everything(1)
    model = models.build("resunet3d", 6, width=0.0625).eval()
    config = PreprocessConfig(grid=(48, 48, 16))
    return export_onnx(model, tmp_path_factory.mktemp("onnx") / "model.onnx", config.to_dict()).onnx_path


def test_predict_survives_sigkill_and_sigterm_and_reruns_skip_finished_cases(onnx_model, tmp_path):
    data = write_dataset(tmp_path / "data", 18, seed=5, shapes=[(160, 160, 20)], test_cases=2, progress=False)
    out, rng = tmp_path / "out", random.Random(1)
    cases = 20  # about 0.3 s each on one CPU core: a kill lands inside a case or between two

    def complete() -> set[str]:
        names = _names(out)
        return {n[: -len("_lesion.nii.gz")] for n in names if n.endswith("_lesion.nii.gz")
                and n.replace("_lesion.", "_probability.") in names}

    kills = 0
    for _ in range(10):
        if kills >= 6 or len(complete()) >= cases - 3:
            break
        before, done = _outputs(out), complete()
        process = _cli(tmp_path, "predict", "-m", onnx_model, "-i", data, "-o", out)
        sig = signal.SIGKILL if kills % 2 == 0 else signal.SIGTERM
        _kill_when(process, lambda: len(complete()), len(done) + 1, rng, late=0.3)
        code, _, err = _stop(process, sig)
        kills += code in (-signal.SIGKILL, 143)
        if code == 143:
            assert "Traceback" not in err and err.strip().splitlines()[-1].endswith("to resume"), err
            assert not _temporary(out)  # SIGTERM unwinds: the write in progress is removed at once
        after = _outputs(out)  # every output complete (it loads) or absent
        assert {n: t for n, t in after.items() if n in before and n != "predictions.csv"} == \
            {n: t for n, t in before.items() if n != "predictions.csv"}, "a finished case was predicted again"
    assert kills >= 4
    done = complete()
    final = _cli(tmp_path, "predict", "-m", onnx_model, "-i", data, "-o", out)
    code, stdout, err = _stop(final, None)
    assert code == 0, err[-3000:]
    assert f"predicted {cases - len(done)} cases" in stdout and f"skipped {len(done)} with outputs" in stdout, stdout
    assert not _temporary(out) and len(complete()) == cases
    rows = (out / "predictions.csv").read_text().splitlines()
    assert len(rows) == cases + 1

    before = _outputs(out)

    def rewritten() -> int:
        return sum((out / n).stat().st_mtime_ns > t for n, t in before.items() if (out / n).is_file())

    process = _cli(tmp_path, "predict", "-m", onnx_model, "-i", data, "-o", out, "--overwrite")
    _kill_when(process, rewritten, 4, rng)
    assert _stop(process, signal.SIGTERM)[0] == 143
    code, stdout, err = _stop(_cli(tmp_path, "predict", "-m", onnx_model, "-i", data, "-o", out, "--overwrite"), None)
    assert code == 0 and f"predicted {cases} cases" in stdout and "skipped" not in stdout, stdout + err
    assert all(t > before[n] for n, t in _outputs(out).items() if n.endswith(".nii.gz"))
    assert not _temporary(out)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    import models
    from benchmark.data.cases import discover, read_case
    from benchmark.data.preprocessing import PreprocessConfig, prepare
    from benchmark.training.loop import TrainConfig, fit, seed_everything

    folder = tmp_path_factory.mktemp("explain")
    data = write_dataset(folder / "data", 5, seed=7, shapes=[(64, 64, 12)], test_cases=0, progress=False)
    config = PreprocessConfig(grid=(32, 32, 12))
    cases = [prepare(read_case(r), config) for r in discover(data, split="train")]
    seed_everything(0)
    fit(models.build("unet3d", 6, width=0.0625), cases, cases, TrainConfig(epochs=1, lr=3e-3, device="cpu"),
        checkpoint_dir=folder / "ckpt", progress=False)
    (folder / "ckpt" / "preprocess.json").write_text(json.dumps(config.to_dict()))
    return folder / "ckpt" / "best.pt", data


def test_explain_survives_sigkill_and_sigterm_and_reruns_reuse_finished_jobs(checkpoint, tmp_path):
    weights, data = checkpoint
    methods, filters = ["lrp_zplus_zbox", "gradient", "random", "lrp_epsilon"], "raw,pass_0_0.2"
    args = ["--model", weights, "--data", data, "--methods", ",".join(methods), "--filters", filters, "--cases", "5",
            "--heavy", "none", "--out", "expl"]
    jobs, rng = len(methods) * 5, random.Random(2)

    def folder() -> Path:
        found = [p for p in (tmp_path / "expl").glob("*") if p.is_dir()]
        assert len(found) <= 1, found
        return found[0] if found else tmp_path / "expl" / "none"

    def complete() -> set[str]:
        return {n for n in _names(folder()) if n.endswith(".json") and n != "settings.json"}

    kills, normal_ends = 0, 0  # a run may end before its kill lands
    for k, target in enumerate([3, 7, 11, 15, jobs, jobs]):  # the last two land while runs are logged to MLflow
        before, done = _outputs(folder()), complete()
        process = _cli(tmp_path, "explain", *args)
        _kill_when(process, lambda: len(complete()), target, rng, late=2.0 if target == jobs else 0.5,
                   at_least=rng.uniform(5.0, 9.0) if len(done) == jobs else 0.0)
        code, _, err = _stop(process, signal.SIGKILL if k % 2 == 0 else signal.SIGTERM)
        kills += code in (-signal.SIGKILL, 143)
        normal_ends += code == 0
        if code == 143:
            assert "Traceback" not in err and err.strip().splitlines()[-1].endswith("to resume"), err
            assert not _temporary(folder())
        after = _outputs(folder())  # every file complete (it loads) or absent
        finished = {f for n in done for f in [n, *json.loads((folder() / n).read_text())["files"]]}
        assert {n: after[n] for n in finished} == {n: before[n] for n in finished}, "a finished job was computed again"
        for name in complete():  # a job's record names only files that exist
            assert all((folder() / f).is_file() for f in json.loads((folder() / name).read_text())["files"])
        assert len(complete()) >= len(done)
    assert kills >= 4
    done = complete()
    code, stdout, err = _stop(_cli(tmp_path, "explain", *args), None)
    assert code == 0, err[-3000:]
    reused = re.search(r"computed (\d+) method × case jobs, reused (\d+)", stdout)
    assert reused and (int(reused[1]), int(reused[2])) == (jobs - len(done), len(done)), stdout
    assert not _temporary(folder()) and len(complete()) == jobs

    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert not [r.info.run_id for r in runs if r.info.status == "RUNNING"]
    parents = [r for r in runs if r.data.tags.get("strokelens.kind") == "explain" and r.info.status == "FINISHED"]
    assert len(parents) >= normal_ends + 1  # a kill after the run ended leaves it FINISHED, and complete
    for parent in parents:  # a FINISHED explain run is complete; every other one is FAILED
        children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
        assert len(children) == len(methods)  # one run per method, its filters in a table (LRP: raw and pass)
        assert all(r.data.params["cases"] == "5" and r.info.status == "FINISHED" for r in children)
        assert sorted(r.data.params["filters"] for r in children) == ["1", "1", "2", "2"]  # baselines: raw only

    before = _outputs(folder())
    code, stdout, err = _stop(_cli(tmp_path, "explain", *args, "--overwrite"), None)
    assert code == 0 and f"computed {jobs} method × case jobs, reused 0" in stdout, stdout + err
    assert all(t > before[n] for n, t in _outputs(folder()).items() if n != "settings.json")
