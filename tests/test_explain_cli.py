"""``python -m mlproject.explain`` end to end on a tiny checkpoint, and its bad inputs."""

import json
import os
import subprocess
import sys
from pathlib import Path

import mlflow
import nibabel as nib
import numpy as np
import pytest
from mlflow.tracking import MlflowClient

import models
from benchmark.data.cases import discover, read_case
from benchmark.data.preprocessing import PreprocessConfig, prepare
from benchmark.training.loop import TrainConfig, fit, seed_everything

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def checkpoint(isles_dir, tmp_path_factory):
    folder = tmp_path_factory.mktemp("ckpt")
    config = PreprocessConfig(grid=(16, 16, 8))
    cases = [prepare(read_case(r), config) for r in discover(isles_dir, split="train")]
    seed_everything(0)
    fit(models.build("unet3d", 6, width=0.0625), cases, cases,
        TrainConfig(epochs=2, lr=3e-3, device="cpu"), checkpoint_dir=folder, progress=False)
    (folder / "preprocess.json").write_text(json.dumps(config.to_dict()))
    return folder / "best.pt"


def _run(workdir, *args):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MLFLOW_TRACKING_URI": f"sqlite:///{workdir}/mlflow.db"}
    return subprocess.run([sys.executable, "-m", "mlproject.explain", *args], cwd=workdir, env=env,
                          capture_output=True, text=True, timeout=600)


def _runs(workdir):
    client = MlflowClient(f"sqlite:///{workdir}/mlflow.db")
    experiment = client.get_experiment_by_name("strokelens-explanations")
    return client, ([] if experiment is None else client.search_runs([experiment.experiment_id]))


def test_explain_logs_one_run_per_method_with_its_filters_as_a_table(isles_dir, checkpoint, tmp_path):
    result = _run(tmp_path, "--model", str(checkpoint), "--data", str(isles_dir), "--methods",
                  "lrp_zplus_zbox,random", "--filters", "raw,pass_0_0.2", "--cases", "training_2", "--heavy", "raw")
    assert result.returncode == 0, result.stderr
    client, runs = _runs(tmp_path)
    parent = [r for r in runs if r.data.tags.get("strokelens.kind") == "explain"]
    children = {r.info.run_name: r for r in runs if r.data.tags.get("strokelens.kind") == "explanation"}
    assert len(parent) == 1 and set(children) == {"unet3d-lrp_zplus_zbox", "unet3d-random"}  # one run per method
    assert parent[0].data.tags["strokelens.architecture"] == "unet3d"
    assert all(r.data.tags["mlflow.parentRunId"] == parent[0].info.run_id for r in children.values())
    lrp = children["unet3d-lrp_zplus_zbox"]
    assert lrp.data.params["method"] == "lrp_zplus_zbox" and lrp.data.params["architecture"] == "unet3d"
    assert {"strokelens.architecture", "strokelens.model_run", "strokelens.study"} <= set(lrp.data.tags)
    assert {"evidence_mass_accuracy", "blrp_to_ot", "blrp_to_ot_ADC", "faithfulness", "randomisation_spearman",
            "conservation_error", "seconds_per_volume", "sparseness", "retained_relevance",
            "evidence_rank_accuracy"} <= set(lrp.data.metrics)  # the unfiltered row's means
    assert lrp.data.params["best_filter"] == "pass_0_0.2" and "best_filter/faithfulness" in lrp.data.metrics
    assert lrp.data.metrics["conservation_error"] < 1.0 and lrp.data.metrics["retained_relevance"] == 1.0
    assert all(np.isfinite(v) for r in runs for v in r.data.metrics.values())  # no NaN is ever logged
    table = json.loads(Path(mlflow.artifacts.download_artifacts(
        run_id=lrp.info.run_id, artifact_path="filters.json", tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    ).read_text())
    rows = {row[table["columns"].index("filter")]: dict(zip(table["columns"], row)) for row in table["data"]}
    assert set(rows) == {"raw", "pass_0_0.2"}
    assert rows["pass_0_0.2"]["faithfulness"] is not None and "randomisation_spearman" not in [
        k for k, v in rows["pass_0_0.2"].items() if v is not None]  # heavy=raw: randomisation on raw only
    assert rows["raw"]["faithfulness"] == pytest.approx(lrp.data.metrics["faithfulness"])
    assert rows["pass_0_0.2"]["retained_relevance"] > 0
    artifacts = {a.path for a in client.list_artifacts(lrp.info.run_id, "relevance")}
    assert artifacts == {"relevance/training_2_lrp_zplus_zbox.nii.gz", "relevance/training_2_lrp_zplus_zbox.png"}
    local = mlflow.artifacts.download_artifacts(run_id=lrp.info.run_id, artifact_path="relevance",
                                                tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    image = nib.load(Path(local) / "training_2_lrp_zplus_zbox.nii.gz")
    case = read_case(discover(isles_dir, split="train")[1])
    assert image.shape == (case.shape[2], case.shape[1], case.shape[0], 6)
    assert np.allclose(image.affine, case.affine)
    assert {a.path for a in client.list_artifacts(parent[0].info.run_id)} >= {"explanations.csv", "cases.csv"}


def test_explain_architectures_needs_a_study(isles_dir, checkpoint, tmp_path):
    result = _run(tmp_path, "--architectures", "all", "--data", str(isles_dir), "--methods", "random")
    assert result.returncode == 2 and "has no search" in result.stderr, result.stderr
    result = _run(tmp_path, "--architectures", "unet3d", "--model", str(checkpoint), "--methods", "random")
    assert result.returncode == 2 and "--model and --architectures" in result.stderr, result.stderr


@pytest.mark.parametrize("args,needle", [
    (["--methods", "lrp_magic"], "method 'lrp_magic' is unknown"),
    (["--filters", "pass_0.6_0.2"], "interval [0.6, 0.2]"),
    (["--filters", "clamp_0_2"], "within [0, 1]"),
    (["--model", "models:/nothing@champion"], "model 'models:/nothing@champion' does not resolve"),
    (["--model", "missing.pt"], "does not exist"),
    (["--cases", "training_99"], "training_99"),
])
def test_explain_bad_input(isles_dir, checkpoint, tmp_path, args, needle):
    base = ["--model", str(checkpoint), "--data", str(isles_dir), "--methods", "random"]
    result = _run(tmp_path, *base, *args)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], result.stderr
    _, runs = _runs(tmp_path)
    assert runs == []
