"""The split made once and saved: its rule and digests, and every stage after the search reading it back."""

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from benchmark.data.cases import discover
from benchmark.data.splits import Split, case_digest, make_split
from benchmark.errors import DataError, ParameterError
from benchmark.stages.evaluate import evaluate_study
from benchmark.stages.explanations import explain_model
from benchmark.training.profiles import Profile
from benchmark.training.search import SearchSettings, run_search

ROOT = Path(__file__).resolve().parents[1]
TINY = Profile(name="tiny", trials=1, epochs=1, architectures=("unet3d",), widths=(0.0625,), grid=(16, 16, 8),
               batch_size=2, patience=0, warmup=0,
               first={"architecture": "unet3d", "width": 0.0625, "lr": 3e-3, "weight_decay": 1e-5, "loss": "dice_ce",
                      "augment": 0.5})


def _copy(source, target):
    shutil.copytree(source, target)
    return target


def _alter(root, case):
    path = next(root.glob(f"{case}/*.MR_ADC.*/*.nii"))
    image = nib.load(path, mmap=False)
    values = np.asarray(image.dataobj).copy()
    values.flat[0] += 1
    nib.save(nib.Nifti1Image(values, image.affine, image.header), path)


MUTATIONS = {
    "renamed": (lambda root: (root / "training_2").rename(root / "training_7"), ["training_7", "training_2"]),
    "added": (lambda root: shutil.copytree(root / "training_1", root / "training_8"), ["training_8"]),
    "removed": (lambda root: shutil.rmtree(root / "training_4"), ["training_4"]),
    "altered": (lambda root: _alter(root, "training_3"), ["training_3"]),
}


# --- the split on its own ---------------------------------------------------------------------

def test_the_split_follows_its_documented_rule(isles_dir):
    refs = discover(isles_dir, split="train")
    split = make_split(isles_dir)
    order = np.random.default_rng(0).permutation(len(refs))  # the rule in the module docstring, written out
    n_val = min(len(refs) - 1, max(1, round(len(refs) * 0.25)))
    assert split.val_ids == [refs[i].case_id for i in sorted(order[:n_val])]
    assert split.train_ids == [refs[i].case_id for i in sorted(order[n_val:])]
    assert make_split(isles_dir) == split  # the same data, the same split
    half = make_split(isles_dir, val_fraction=0.5)
    assert len(half.val_ids) == 2 and set(half.val_ids).isdisjoint(half.train_ids)


def test_a_case_digest_covers_the_inputs_and_the_label_by_role(isles_dir):
    ref = discover(isles_dir, split="train")[0]
    expected = hashlib.sha256()
    roles = {**ref.images, "label": ref.label}
    for role in sorted(roles):
        data = Path(roles[role]).read_bytes()
        expected.update(f"{role}\0{len(data)}\0".encode() + data)
    assert case_digest(ref) == expected.hexdigest()
    assert len({case_digest(r) for r in discover(isles_dir, split="train")}) == 4


def test_save_load_and_an_edited_file_is_refused(isles_dir, tmp_path):
    split = make_split(isles_dir)
    path = split.save(tmp_path / "split.json")
    assert Split.load(path) == split and Split.load(path).digest == split.digest
    content = json.loads(path.read_text())
    assert content["format"] == "strokelens-split/1" and len(content["digest"]) == 32
    assert content["settings"] == {"seed": 0, "val_fraction": 0.25, "data": str(isles_dir.resolve()),
                                   "modalities": ["ADC", "MTT", "rCBF", "rCBV", "Tmax", "TTP"], "layout": "isles2017"}
    content["cases"][0]["side"] = "validation" if content["cases"][0]["side"] == "train" else "train"
    path.write_text(json.dumps(content))
    with pytest.raises(DataError, match="was edited"):
        Split.load(path)
    path.write_text("{not json")
    with pytest.raises(DataError, match="cannot be read"):
        Split.load(path)


def test_a_moved_data_folder_verifies_by_content(isles_dir, tmp_path):
    split = make_split(isles_dir)
    train, val = split.resolve(_copy(isles_dir, tmp_path / "moved"))
    assert [r.case_id for r in val] == split.val_ids and all(tmp_path in r.label.parents for r in train + val)


@pytest.mark.parametrize("change", sorted(MUTATIONS))
def test_changed_data_is_refused_naming_the_cases(isles_dir, tmp_path, change):
    split = make_split(isles_dir)
    mutate, named = MUTATIONS[change]
    root = _copy(isles_dir, tmp_path / "data")
    mutate(root)
    with pytest.raises(DataError, match="use a new --study, or restore the data") as info:
        split.resolve(root)
    assert all(case in str(info.value) for case in named) and "\n" not in str(info.value)


# --- a search saves it, the later stages read it -------------------------------------------------

@pytest.fixture(scope="module")
def searched(isles_dir, tmp_path_factory):
    """One tiny search on a copy of the data, with its own MLflow store and checkpoints."""
    work = tmp_path_factory.mktemp("searched")
    data = _copy(isles_dir, work / "data")
    uri = f"sqlite:///{work}/mlflow.db"
    previous = os.environ.get("MLFLOW_TRACKING_URI")
    os.environ["MLFLOW_TRACKING_URI"] = uri
    settings = SearchSettings(data=data, trials=1, epochs=1, study="s", storage=f"sqlite:///{work}/optuna.db",
                              experiment="e", seed=0, device="cpu", profile=TINY, checkpoints=work / "ckpt",
                              cache=None, progress=False)
    result = run_search(settings)
    yield work, settings, result, MlflowClient(uri)
    if previous is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = previous


def test_the_search_saves_the_split_beside_its_checkpoints_and_in_mlflow(searched):
    work, _, result, client = searched
    local = work / "ckpt" / "s" / "split.json"
    assert result.split_file == local and Split.load(local) == result.split
    assert result.split.val_ids == make_split(work / "data").val_ids
    logged = client.download_artifacts(result.parent_run_id, "split.json", str(work / "logged"))
    assert json.loads(Path(logged).read_text()) == json.loads(local.read_text())
    run = client.get_run(result.parent_run_id)
    assert run.data.tags["strokelens.split"] == result.split.digest
    (dataset_input,) = run.inputs.dataset_inputs
    assert dataset_input.dataset.digest == result.split.digest and dataset_input.dataset.name == "data"
    assert json.loads(dataset_input.dataset.source)["uri"] == (work / "data").resolve().as_uri()
    assert {t.key: t.value for t in dataset_input.tags}["mlflow.data.context"] == "training"
    assert json.loads(dataset_input.dataset.profile)["num_rows"] == 4


def test_evaluate_scores_exactly_the_saved_validation_cases(searched):
    work, _, result, client = searched
    evaluation = evaluate_study("s", "e", repeats=1)
    saved = json.loads((work / "ckpt" / "s" / "split.json").read_text())
    val = [c["case"] for c in saved["cases"] if c["side"] == "validation"]
    assert evaluation.val_cases == val and evaluation.split_digest == saved["digest"]
    parent = client.get_run(evaluation.run_id)
    assert parent.data.params["split"] == saved["digest"]
    children = client.search_runs([parent.info.experiment_id], f"tags.`mlflow.parentRunId` = '{evaluation.run_id}'")
    assert len(children) == 1 + 3  # one architecture, three clinical rules
    for child in children:
        table = pd.read_csv(client.download_artifacts(child.info.run_id, "cases.csv", str(work / child.info.run_id)))
        assert sorted(table["case"]) == sorted(val)


@pytest.mark.parametrize("change", sorted(MUTATIONS))
def test_evaluate_refuses_data_changed_since_the_search(searched, tmp_path, change):
    work, _, _, client = searched
    mutate, named = MUTATIONS[change]
    root = _copy(work / "data", tmp_path / "data")
    mutate(root)
    ids = [x.experiment_id for x in client.search_experiments() if x.name.startswith("e")]
    before = len(client.search_runs(ids))
    with pytest.raises(DataError, match="use a new --study, or restore the data") as info:
        evaluate_study("s", "e", data=root, repeats=1)
    assert all(case in str(info.value) for case in named)
    assert len(client.search_runs([x.experiment_id for x in client.search_experiments() if x.name.startswith("e")])) \
        == before


def test_the_command_line_refuses_changed_data_in_one_line(searched, tmp_path):
    work, _, _, _ = searched
    root = _copy(work / "data", tmp_path / "data")
    MUTATIONS["renamed"][0](root)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MLFLOW_TRACKING_URI": f"sqlite:///{work}/mlflow.db"}
    result = subprocess.run([sys.executable, "-m", "mlproject.evaluate", "--study", "s", "--experiment", "e",
                             "--data", str(root)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "training_7" in lines[0] and "training_2" in lines[0] and "--study" in lines[0]


def test_explain_takes_the_validation_cases_of_the_models_split(searched):
    _, _, result, _ = searched
    explained = explain_model(result.best_run_id, methods=["random"], filters=["raw"], cases=1, experiment="e",
                              heavy="none")
    assert explained.cases == result.split.val_ids[:1] and explained.split_digest == result.split.digest


def test_a_resumed_study_keeps_its_split(searched, tmp_path):
    work, settings, result, client = searched
    import dataclasses

    with pytest.raises(ParameterError, match="val-fraction 0.25.*use a new --study"):
        run_search(dataclasses.replace(settings, val_fraction=0.5))
    changed = _copy(work / "data", tmp_path / "data")
    MUTATIONS["added"][0](changed)
    with pytest.raises(DataError, match="training_8.*use a new --study"):
        run_search(dataclasses.replace(settings, data=changed))
    local = work / "ckpt" / "s" / "split.json"
    local.unlink()  # another host: the split comes back from the study's search run in MLflow
    again = run_search(settings)
    assert again.split == result.split and Split.load(local) == result.split
    assert client.get_run(again.parent_run_id).data.tags["strokelens.split"] == result.split.digest
