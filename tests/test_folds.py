"""Cross-validation folds and repeats: the saved folds, fold training, out-of-fold evaluation, the ONNX ensemble."""

import json
import os
import shutil

import numpy as np
import pandas as pd
import pytest
import torch
from mlflow.tracking import MlflowClient

from benchmark.data.cases import discover
from benchmark.data.preprocessing import PreprocessConfig
from benchmark.data.splits import FOLDS_FORMAT, FORMAT, Split, make_split
from benchmark.errors import DataError, ParameterError
from benchmark.stages.evaluate import evaluate_study
from benchmark.stages.export import export_ensemble
from benchmark.stages.predict import predict_cases
from benchmark.stages.train import search_and_export
from benchmark.training.folds import fold_folder, fold_models, fold_seed, train_folds
from benchmark.training.loop import load_model
from benchmark.training.profiles import PROFILES, Profile
from benchmark.training.search import SearchSettings, run_search
from models import Ensemble, build
from models.onnx import Segmenter, export_onnx
from tracking.records import Store

TINY = Profile(name="tiny", trials=1, epochs=1, architectures=("unet3d",), widths=(0.0625,), grid=(16, 16, 8),
               batch_size=2, patience=0, warmup=0,
               first={"architecture": "unet3d", "width": 0.0625, "lr": 3e-3, "weight_decay": 1e-5, "loss": "dice_ce",
                      "augment": 0.5})
PREPROCESS = PreprocessConfig(grid=(16, 16, 8)).to_dict()


# --- the folds in the split file -----------------------------------------------------------------

def test_the_folds_are_disjoint_cover_every_case_and_follow_the_documented_rule(isles_dir):
    refs = discover(isles_dir, split="train")
    split = make_split(isles_dir, folds=3, seed=5)
    held_out = [split.fold_ids(k)[1] for k in range(3)]
    assert sorted(c for part in held_out for c in part) == sorted(r.case_id for r in refs)  # covering, disjoint
    for k in range(3):
        train, hold = split.fold_ids(k)
        assert not set(train) & set(hold) and len(train) + len(hold) == len(refs)
    parts = np.array_split(np.random.default_rng(5).permutation(len(refs)), 3)  # the docstring's rule
    assert held_out == [[refs[i].case_id for i in sorted(part)] for part in parts]
    assert split.val_ids == held_out[0] and split.val_fraction is None  # fold 0 is the search's split
    assert make_split(isles_dir, folds=3, seed=5) == split  # deterministic from the split seed
    one = make_split(isles_dir)
    assert one.folds == 1 and one.to_dict()["format"] == FORMAT and "fold" not in one.to_dict()["cases"][0]
    assert one.fold_ids(0) == (one.train_ids, one.val_ids)
    with pytest.raises(ParameterError, match="fold 3 does not exist"):
        split.fold_ids(3)
    with pytest.raises(DataError, match="5 fold.*at least 5 labelled cases"):
        make_split(isles_dir, folds=5)


def test_the_folds_are_saved_reloaded_and_an_edit_or_changed_data_is_refused(isles_dir, tmp_path):
    split = make_split(isles_dir, folds=2)
    path = split.save(tmp_path / "split.json")
    content = json.loads(path.read_text())
    assert content["format"] == FOLDS_FORMAT and content["settings"]["folds"] == 2
    assert sorted({c["fold"] for c in content["cases"]}) == [0, 1]
    again = Split.load(path)
    assert again == split and again.digest == split.digest and again.folds == 2
    moved = next(c for c in content["cases"] if c["fold"] == 1)
    moved["fold"] = 0
    moved["side"] = "validation"
    path.write_text(json.dumps(content))
    with pytest.raises(DataError, match="was edited"):
        Split.load(path)
    data = tmp_path / "data"
    shutil.copytree(isles_dir, data)
    shutil.rmtree(data / split.fold_ids(1)[1][0])
    with pytest.raises(DataError, match="removed or renamed"):
        split.resolve(data, fold=1)


def test_a_study_keeps_its_folds(isles_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    make_split(isles_dir).save(tmp_path / "ckpt" / "s" / "split.json")
    settings = SearchSettings(data=isles_dir, trials=1, epochs=1, study="s", storage=f"sqlite:///{tmp_path}/o.db",
                              experiment="e", seed=0, device="cpu", profile=TINY, checkpoints=tmp_path / "ckpt",
                              cache=None, progress=False, folds=2)
    with pytest.raises(ParameterError, match="1 fold.*drop --folds"):
        run_search(settings)  # refused before any trial trains


def test_the_paper_profile_uses_five_folds_and_the_default_one():
    assert PROFILES["paper"].folds == 5 and PROFILES["default"].folds == 1 and PROFILES["default"].repeats == 1


# --- the ensemble on its own -------------------------------------------------------------------

def test_the_onnx_ensemble_gives_the_pytorch_average_of_the_softmax_probabilities(tmp_path):
    torch.manual_seed(0)
    channels = len(PREPROCESS["modalities"])
    members = [build("unet3d", channels, width=0.0625).eval() for _ in range(2)]
    ensemble = Ensemble(members).eval()
    report = export_onnx(ensemble, tmp_path / "model.onnx", PREPROCESS, grids=((8, 16, 16),))
    x = torch.rand(2, channels, 8, 24, 16)
    with torch.no_grad():
        reference = torch.stack([torch.softmax(m(x), dim=1) for m in members]).mean(dim=0)
        assert torch.allclose(ensemble.probability(x), reference, atol=1e-6)
    got = Segmenter(report.onnx_path).probability(x.numpy())  # softmax of the graph's output, as predict reads it
    assert np.abs(got - reference[:, 1].numpy()).max() <= 1e-5
    assert json.loads(report.sidecar_path.read_text())["build_config"]["name"] == "ensemble"


# --- a search with two folds, end to end --------------------------------------------------------

@pytest.fixture(scope="module")
def folded(isles_dir, tmp_path_factory):
    """A tiny search with 2 folds (one architecture), its second fold trained, with its own MLflow store."""
    work = tmp_path_factory.mktemp("folded")
    uri = f"sqlite:///{work}/mlflow.db"
    previous = os.environ.get("MLFLOW_TRACKING_URI")
    os.environ["MLFLOW_TRACKING_URI"] = uri
    settings = SearchSettings(data=isles_dir, trials=1, epochs=1, study="s", storage=f"sqlite:///{work}/optuna.db",
                              experiment="e", seed=0, device="cpu", profile=TINY, checkpoints=work / "ckpt",
                              cache=None, progress=False, folds=2)
    result = search_and_export(settings, export=False)
    yield work, settings, result, MlflowClient(uri)
    if previous is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = previous


def test_a_two_fold_run_trains_the_second_fold_with_the_trials_settings(folded):
    work, settings, result, client = folded
    split = Split.load(work / "ckpt" / "s" / "split.json")
    assert split.folds == 2 and result.search.split == split
    assert result.folds.trained == [("unet3d", 1, 0)] and not result.folds.skipped
    experiment = client.get_experiment_by_name("e").experiment_id
    (fold,) = client.search_runs([experiment], "tags.`strokelens.kind` = 'fold'")
    trial = client.get_run(result.search.best_run_id)
    assert fold.data.tags["strokelens.fold"] == "1" and fold.data.tags["strokelens.repeat"] == "0"
    assert fold.data.tags["strokelens.model_run"] == trial.info.run_id
    assert fold.data.tags["strokelens.architecture"] == "unet3d" and fold.data.tags["strokelens.state"] == "complete"
    assert client.get_run(fold.data.tags["mlflow.parentRunId"]).data.tags["strokelens.kind"] == "folds"
    for key in ("lr", "width", "loss", "weight_decay", "augment", "augmentation", "epochs", "batch_size"):
        assert fold.data.params[key] == trial.data.params[key]
    assert int(fold.data.params["seed"]) == fold_seed(0, 0, 0)
    assert int(fold.data.params["holdout_cases"]) == len(split.fold_ids(1)[1])
    assert (fold_folder(work / "ckpt" / "s", "unet3d", 1, 0) / "best.pt").is_file()
    assert fold_folder(work / "ckpt" / "s", "unet3d", 1, 0) == work / "ckpt" / "s" / "unet3d" / "fold_1"
    models = fold_models(Store("e"), "s", trial.info.run_id, 2)
    assert [(m.fold, m.repeat) for m in models] == [(0, 0), (1, 0)] and models[0].run_id == trial.info.run_id


def test_a_rerun_skips_the_finished_folds(folded):
    work, settings, result, _ = folded
    again = train_folds("s", "e", result.search.split, 1, settings.data, 0, settings.checkpoints, "cpu",
                        progress=False)
    assert again.trained == [] and again.skipped == [("unet3d", 1, 0)] and again.run_id == ""


def test_evaluation_scores_every_labelled_case_once_out_of_fold(folded):
    work, settings, result, client = folded
    split = result.search.split
    evaluation = evaluate_study("s", "e", repeats=1)
    experiment = client.get_experiment_by_name("e-evaluation").experiment_id
    (run,) = client.search_runs([experiment], "tags.`strokelens.kind` = 'evaluation'")
    assert run.data.params["folds"] == "2" and run.data.params["repeats"] == "1" and run.data.params["cases"] == "4"
    parent = client.get_run(evaluation.run_id)
    assert parent.data.params["folds"] == "2" and parent.data.params["cases"] == "4"
    table = pd.read_csv(client.download_artifacts(run.info.run_id, "cases.csv", str(work)))
    labelled = sorted(c.case for c in split.cases)
    assert sorted(table["case"]) == labelled  # every labelled case, exactly once
    fold_of = {c.case: c.fold for c in split.cases}
    assert all(fold_of[c] == f for c, f in zip(table["case"], table["fold"], strict=True))
    assert (table["repeats"] == 1).all() and (table["dice_repeat_sd"] == 0).all()
    assert run.data.metrics["dice_mean"] == pytest.approx(table["dice"].mean())
    (rule, *_) = client.search_runs([experiment], "tags.`strokelens.kind` = 'clinical_rule'")
    rule_table = pd.read_csv(client.download_artifacts(rule.info.run_id, "cases.csv", str(work / "rule")))
    assert sorted(rule_table["case"]) == labelled  # the baselines pair with the same cases


@pytest.mark.slow
def test_the_ensemble_export_averages_the_fold_models(folded, tmp_path):
    work, settings, result, client = folded
    exported = export_ensemble(result.search.best_run_id, "e", out=tmp_path)
    assert exported.version is not None and not exported.champion and "--promote" in exported.champion_reason
    sidecar = json.loads((tmp_path / "model.json").read_text())
    assert sidecar["ensemble"]["folds"] == 2 and len(sidecar["ensemble"]["members"]) == 2
    models = [load_model(work / "ckpt" / "s" / "trial_0000" / "best.pt"),
              load_model(work / "ckpt" / "s" / "unet3d" / "fold_1" / "best.pt")]
    x = torch.rand(1, len(sidecar["preprocess"]["modalities"]), 8, 16, 16)
    with torch.no_grad():
        reference = torch.stack([torch.softmax(m(x), dim=1) for m in models]).mean(dim=0)[:, 1].numpy()
    assert np.abs(Segmenter(tmp_path / "model.onnx").probability(x.numpy()) - reference).max() <= 1e-5
    version = client.get_model_version("strokelens-segmenter", exported.version)
    assert version.tags["ensemble"] == "2 folds x 1 repeats" and version.tags["split"] == result.search.split.digest
    predicted = predict_cases(settings.data, tmp_path / "predictions", model=str(tmp_path / "model.onnx"))
    assert predicted.cases and not predicted.failed  # predict reads the exported ensemble like any model


@pytest.mark.slow
def test_repeats_are_scored_separately_and_averaged_per_case_with_their_spread(folded):
    work, settings, result, client = folded
    trained = train_folds("s", "e", result.search.split, 2, settings.data, 0, settings.checkpoints, "cpu",
                          progress=False)
    assert sorted(trained.trained) == [("unet3d", 0, 1), ("unet3d", 1, 1)] and trained.skipped == [("unet3d", 1, 0)]
    assert (work / "ckpt" / "s" / "unet3d" / "fold_0" / "repeat_1" / "best.pt").is_file()
    experiment = client.get_experiment_by_name("e").experiment_id
    seeds = {r.data.tags["strokelens.repeat"]: int(r.data.params["seed"])
             for r in client.search_runs([experiment], "tags.`strokelens.kind` = 'fold'")}
    assert seeds == {"0": fold_seed(0, 0, 0), "1": fold_seed(0, 0, 1)}
    evaluate_study("s", "e", repeats=1)
    (run, *_) = client.search_runs([client.get_experiment_by_name("e-evaluation").experiment_id],
                                   "tags.`strokelens.kind` = 'evaluation'",
                                   order_by=["attributes.start_time DESC"])
    assert run.data.params["repeats"] == "2" and run.data.params["cases"] == "4"
    table = pd.read_csv(client.download_artifacts(run.info.run_id, "cases.csv", str(work / "repeats")))
    assert sorted(table["case"]) == sorted(c.case for c in result.search.split.cases)
    assert (table["repeats"] == 2).all() and (table["dice_repeat_sd"] >= 0).all()
    assert "dice_repeat_sd_mean" in run.data.metrics


@pytest.mark.slow
def test_an_interrupted_fold_resumes_from_its_last_checkpoint(isles_dir, tmp_path, monkeypatch):
    import benchmark.training.folds as folds

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    settings = SearchSettings(data=isles_dir, trials=1, epochs=2, study="s", storage=f"sqlite:///{tmp_path}/o.db",
                              experiment="e", seed=0, device="cpu", profile=TINY, checkpoints=tmp_path / "ckpt",
                              cache=None, progress=False, folds=2)
    real_fit = folds.fit

    def stopped_after_one_epoch(*args, **kwargs):
        on_epoch = kwargs["on_epoch"]

        def stop(epoch, row):
            on_epoch(epoch, row)
            raise KeyboardInterrupt

        return real_fit(*args, **{**kwargs, "on_epoch": stop})

    monkeypatch.setattr(folds, "fit", stopped_after_one_epoch)
    with pytest.raises(KeyboardInterrupt):
        search_and_export(settings, export=False)
    assert (tmp_path / "ckpt" / "s" / "unet3d" / "fold_1" / "last.pt").is_file()
    monkeypatch.setattr(folds, "fit", real_fit)
    split = Split.load(tmp_path / "ckpt" / "s" / "split.json")
    result = train_folds("s", "e", split, 1, isles_dir, 0, settings.checkpoints, "cpu", progress=False)
    assert result.trained == [("unet3d", 1, 0)]
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    experiment = client.get_experiment_by_name("e").experiment_id
    runs = client.search_runs([experiment], "tags.`strokelens.kind` = 'fold'", order_by=["attributes.start_time ASC"])
    assert [r.data.tags["strokelens.state"] for r in runs] == ["failed", "complete"]
    assert runs[1].data.params["resumed_from"].endswith("fold_1/last.pt")
    history = client.get_metric_history(runs[1].info.run_id, "val_dice")
    assert [m.step for m in history] == [1]  # only the epoch left after the stop was trained again
