"""The registry's ``champion`` alias never regresses; every registered version carries its tags and a description."""

import json

import mlflow
import pytest
import torch
from mlflow.tracking import MlflowClient

import models
from benchmark.data.splits import make_split
from benchmark.stages.export import champion_decision, export_model
from benchmark.training.loop import save_checkpoint
from tracking import model_registry
from tracking import runs as tracking
from tracking.runs import TAG_ARCHITECTURE, TAG_KIND, TAG_PROFILE, TAG_STUDY

CONFIG = {"modalities": ["ADC", "MTT", "rCBF", "rCBV", "Tmax", "TTP"], "grid": [16, 16, 8]}


@pytest.fixture()
def store(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    monkeypatch.chdir(tmp_path)
    return MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """A tiny checkpoint (untrained: the champion logic reads the trial's logged Dice, not the weights)."""
    from benchmark.data.preprocessing import PreprocessConfig

    folder = tmp_path_factory.mktemp("weights")
    torch.manual_seed(0)
    path = save_checkpoint(folder / "best.pt", models.build("unet3d", 6, width=0.0625), None, 0, [])
    (folder / "preprocess.json").write_text(json.dumps(PreprocessConfig(grid=(16, 16, 8)).to_dict()))
    return path


def _trial(checkpoint, val_dice: float, study: str = "champ") -> str:
    """A hand-made search run with one trial run that logged ``best_val_dice`` and the checkpoint."""
    tracking.setup("champion-test")
    with mlflow.start_run(run_name=f"search-{study}") as search:
        mlflow.set_tags({TAG_KIND: "search", TAG_STUDY: study, TAG_PROFILE: "smoke"})
        with mlflow.start_run(run_name="trial", nested=True) as trial:
            mlflow.set_tags({TAG_KIND: "trial", TAG_STUDY: study, TAG_ARCHITECTURE: "unet3d"})
            mlflow.log_metric("best_val_dice", val_dice)
            tracking.log_checkpoint(checkpoint, json.loads((checkpoint.parent / "preprocess.json").read_text()))
    assert search.info.run_id
    return trial.info.run_id


def _champion(client) -> str:
    alias = client.get_model_version_by_alias(model_registry.REGISTERED_MODEL, model_registry.CHAMPION_ALIAS)
    return str(alias.version)


def test_decision_rules():
    same = {"version": "1", "val_dice": "0.513", "split": "a" * 32}
    assert champion_decision("2", 0.6, "a" * 32, same)[0]
    worse, reason = champion_decision("2", 0.004, "a" * 32, same)
    assert not worse and "0.004 ≤ champion's 0.513" in reason and "--promote" in reason and "\n" not in reason
    assert not champion_decision("2", 0.513, "a" * 32, same)[0]  # a tie does not move it
    other, reason = champion_decision("2", 0.9, "b" * 32, same)
    assert not other and "not comparable" in reason and "aaaaaaaa" in reason and "bbbbbbbb" in reason
    assert champion_decision("2", 0.004, "b" * 32, same, promote=True)[0]
    assert champion_decision("1", 0.1, "a" * 32, None)[0]  # the first version becomes the champion
    assert not champion_decision("2", None, "", same)[0]  # a bare checkpoint cannot be compared


def test_worse_does_not_take_the_alias_better_does_promote_forces(store, weights, isles_dir):
    split = make_split(isles_dir, val_fraction=0.25, seed=0)
    first = export_model(_trial(weights, 0.513), "champion-test", split=split)
    assert first.version == "1" and first.champion and _champion(store) == "1"

    worse = export_model(_trial(weights, 0.004), "champion-test", split=split)
    assert worse.version == "2" and not worse.champion and _champion(store) == "1"
    assert "registered version 2 without the champion alias" in worse.line()
    assert "0.004 ≤ champion's 0.513" in worse.line() and split.digest[:8] in worse.line()

    better = export_model(_trial(weights, 0.7), "champion-test", split=split)
    assert better.champion and _champion(store) == "3"

    forced = export_model(_trial(weights, 0.1), "champion-test", split=split, promote=True)
    assert forced.champion and _champion(store) == "4" and "--promote" in forced.line()

    other = make_split(isles_dir, val_fraction=0.25, seed=1)
    assert other.digest != split.digest
    elsewhere = export_model(_trial(weights, 0.99), "champion-test", split=other)
    assert not elsewhere.champion and _champion(store) == "4" and "not comparable" in elsewhere.line()

    tags, description, _ = model_registry.version_facts("3")
    assert set(model_registry.VERSION_TAGS) <= set(tags)
    assert tags["architecture"] == "unet3d" and tags["study"] == "champ" and tags["profile"] == "smoke"
    assert tags["trial_run"] == better.source_run and float(tags["val_dice"]) == pytest.approx(0.7)
    assert tags["split"] == split.digest and len(tags["data_digest"]) == 32
    assert tags["val_cases"] == str(len(split.val_ids))
    assert "unet3d" in description and better.source_run in description and "0.700" in description
    other_tags, _, _ = model_registry.version_facts("5")
    assert other_tags["data_digest"] == tags["data_digest"]  # same data, other sides


def test_int8_export_tags_the_confidence_interval(store, weights, isles_dir):
    split = make_split(isles_dir, val_fraction=0.5, seed=0)
    result = export_model(_trial(weights, 0.3), "champion-test", split=split, int8_data=isles_dir)
    tags, _, aliases = model_registry.version_facts(result.version)
    assert aliases == ["champion"]
    low, high, mean = (float(tags[k]) for k in ("val_dice_ci_low", "val_dice_ci_high", "val_dice_onnx"))
    assert 0.0 <= low <= mean <= high <= 1.0
