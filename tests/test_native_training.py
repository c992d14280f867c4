"""Native preprocessing in training: patch batches, spatial augmentation, sliding-window validation, the search."""

import json
import math
import shlex
from pathlib import Path

import numpy as np
import optuna
import pytest
import torch
import yaml
from mlflow.tracking import MlflowClient

import benchmark.evaluation.inference as inference
import models
from benchmark.data.cases import discover
from benchmark.data.planning import Plan
from benchmark.data.preprocessing import PreprocessCache, PreprocessConfig
from benchmark.errors import DataError, ParameterError
from benchmark.training.loop import Augmenter, TrainConfig, fit, load_checkpoint, validate
from benchmark.training.profiles import PROFILES, Profile, with_preprocessing
from benchmark.training.search import SearchSettings, plan_file, run_search

ROOT = Path(__file__).resolve().parents[1]
NATIVE = PreprocessConfig(mode="native", spacing=(5.0, 5.0, 12.0), grid=(24, 24, 8), normalization="robust")
TINY = Profile(name="tiny", trials=1, epochs=2, architectures=("unet3d",), widths=(0.0625,), grid=(16, 16, 8),
               batch_size=2, patience=0, warmup=0, augmentation="spatial",
               first={"architecture": "unet3d", "width": 0.0625, "lr": 3e-3, "weight_decay": 1e-5,
                      "loss": "dice_ce", "augment": 0.5})


@pytest.fixture(scope="module")
def native_cases(isles_dir):
    cache = PreprocessCache(NATIVE)
    return [cache.get(r) for r in discover(isles_dir, split="train")]


def test_native_cases_are_larger_than_the_patch(native_cases):
    shapes = {c.image.shape[1:] for c in native_cases}
    assert all(s != NATIVE.grid_dhw for s in shapes)  # the model sees patches, not whole volumes
    assert any(math.prod(s) > math.prod(NATIVE.grid_dhw) for s in shapes)


def test_native_fit_trains_on_patches_and_validates_by_sliding_windows(native_cases, tmp_path, monkeypatch):
    windows, shapes = [], []
    original = inference.sliding_window

    def spy(image, function, window):
        windows.append((tuple(image.shape[2:]), window.patch))
        return original(image, function, window)

    monkeypatch.setattr(inference, "sliding_window", spy)
    from benchmark.training.loop import seed_everything

    seed_everything(0)
    model = models.build("unet3d", 6, width=0.0625)
    model.register_forward_pre_hook(lambda m, args: shapes.append((m.training, tuple(args[0].shape[2:]))))
    train, val = native_cases[:3], native_cases[3:]
    config = TrainConfig(epochs=3, lr=3e-3, loss="dice_ce", device="cpu", augmentation="spatial", batch_size=2)
    result = fit(model, train, val, config, checkpoint_dir=tmp_path, progress=False, preprocess=NATIVE)
    assert len(result.history) == 3 and all(np.isfinite(r["train_loss"]) for r in result.history)
    assert {s for training, s in shapes if training} == {NATIVE.grid_dhw}  # training saw patches only
    assert len(windows) == 3 * len(val)  # every validation volume, every epoch, by sliding windows
    assert {patch for _, patch in windows} == {NATIVE.grid_dhw}
    assert {shape for shape, _ in windows} == {c.image.shape[1:] for c in val}
    best = load_checkpoint(tmp_path / "best.pt")
    assert best["extra"]["preprocess"]["mode"] == "native"
    assert best["extra"]["preprocess"]["spacing"] == list(NATIVE.spacing)
    assert "patches" in load_checkpoint(tmp_path / "last.pt")["extra"]["rng"]


@pytest.mark.slow
def test_native_training_loss_decreases(native_cases):
    from benchmark.training.loop import seed_everything

    seed_everything(1)
    model = models.build("unet3d", 6, width=0.125)
    config = TrainConfig(epochs=8, lr=3e-3, loss="dice_ce", device="cpu", augment=0.0, batch_size=2, foreground=1.0)
    result = fit(model, native_cases[:3], native_cases[3:], config, progress=False, preprocess=NATIVE)
    losses = [r["train_loss"] for r in result.history]
    assert np.mean(losses[-3:]) < np.mean(losses[:3])


@pytest.mark.slow
def test_native_resume_continues_exactly(native_cases, tmp_path):
    from benchmark.training.loop import seed_everything

    def run(epochs, folder, resume=None):
        seed_everything(0)
        model = models.build("unet3d", 6, width=0.0625)
        config = TrainConfig(epochs=epochs, lr=3e-3, loss="dice", device="cpu", augmentation="spatial")
        return fit(model, native_cases[:3], native_cases[3:], config, checkpoint_dir=folder, resume=resume,
                   progress=False, preprocess=NATIVE)

    straight = run(3, tmp_path / "a")
    run(2, tmp_path / "b")
    resumed = run(3, tmp_path / "b", resume=tmp_path / "b" / "last.pt")
    assert resumed.history[-1]["train_loss"] == pytest.approx(straight.history[-1]["train_loss"], rel=1e-5)


def test_validate_with_a_window_matches_whole_volume_prediction_when_the_patch_covers_the_volume(native_cases):
    model = models.build("unet3d", 6, width=0.0625).eval()
    case = native_cases[0]
    covering = PreprocessConfig(mode="native", spacing=NATIVE.spacing, grid=tuple(reversed(case.image.shape[1:])))
    whole, _ = validate(model, [case], torch.device("cpu"))
    windowed, _ = validate(model, [case], torch.device("cpu"), window=covering.window())
    assert windowed["val_dice"] == pytest.approx(whole["val_dice"], abs=1e-6)


def test_spatial_augmentation_moves_image_and_label_together():
    torch.manual_seed(0)
    label = (torch.rand(4, 8, 24, 24) > 0.8).float()
    image = torch.stack([label, torch.rand(4, 8, 24, 24)], dim=1)
    augmenter = Augmenter(1.0, seed=0, kind="spatial")
    moved_image, moved_label = augmenter.spatial(image, label)
    assert torch.allclose(moved_image[:, 0], moved_label, atol=1e-6)
    assert not torch.allclose(moved_label, label)
    theta = torch.tensor(Augmenter(0.0, kind="spatial").spatial_theta(24, 24))
    assert torch.equal(theta, torch.eye(3, 4))  # strength 0: identity


def test_spatial_zoom_scales_in_plane_area_by_its_square():
    label = torch.zeros(1, 4, 64, 64)
    label[:, :, 24:40, 24:40] = 1.0
    augmenter = Augmenter(1.0, kind="spatial")
    augmenter.spatial_theta = lambda h, w: [[1 / 1.25, 0, 0, 0], [0, 1 / 1.25, 0, 0], [0, 0, 1, 0]]
    _, zoomed = augmenter.spatial(label[:, None].clone(), label)
    assert zoomed.sum().item() == pytest.approx(label.sum().item() * 1.25**2, rel=0.05)


def test_the_gpu_profile_is_native_and_paper_stays_the_study_grid():
    assert PROFILES["gpu"].preprocessing == "native" and with_preprocessing(PROFILES["gpu"]).augmentation == "spatial"
    assert PROFILES["paper"].preprocessing == "seed" and PROFILES["default"].preprocessing == "seed"
    assert with_preprocessing(PROFILES["paper"], "native").augmentation == "study"  # an explicit kind is kept
    with pytest.raises(ParameterError, match="preprocessing 'patches' is unknown"):
        with_preprocessing(PROFILES["default"], "patches")



def _settings(data, workdir, **kw):
    values = {"data": data, "trials": 1, "epochs": 2, "study": "s", "storage": f"sqlite:///{workdir}/optuna.db",
              "experiment": "e", "seed": 0, "device": "cpu", "profile": TINY, "checkpoints": workdir / "ckpt",
              "cache": None, "progress": False, "preprocessing": "native"}
    return SearchSettings(**{**values, **kw})


@pytest.mark.slow
def test_native_search_end_to_end_records_its_preprocessing(isles_dir, workdir):
    result = run_search(_settings(isles_dir, workdir))
    assert result.best_run_id is not None
    saved = plan_file(workdir / "ckpt", "s")
    plan = Plan.load(saved)
    study = optuna.load_study(study_name="s", storage=f"sqlite:///{workdir}/optuna.db")
    assert study.user_attrs["preprocessing"] == "native" and study.user_attrs["plan"] == plan.digest()
    client = MlflowClient(f"sqlite:///{workdir}/mlflow.db")
    parent = client.get_run(result.parent_run_id)
    assert parent.data.params["preprocessing"] == "native" and parent.data.params["plan"] == plan.digest()
    assert [a.path for a in client.list_artifacts(result.parent_run_id, "plan")] == ["plan/plan.json"]
    trial = client.get_run(result.best_run_id)
    assert trial.data.params["preprocessing"] == "native"
    assert trial.data.params["grid"] == "x".join(map(str, plan.patch))
    assert trial.data.params["batch_size"] == str(plan.batch_size)
    best = load_checkpoint(workdir / "ckpt" / "s" / "trial_0000" / "best.pt")
    assert best["extra"]["preprocess"] == plan.preprocess().to_dict()
    preprocess = json.loads((workdir / "ckpt" / "s" / "trial_0000" / "preprocess.json").read_text())
    assert preprocess["mode"] == "native" and preprocess["grid"] == list(plan.patch)
    # the study keeps its mode: resuming it in seed mode is refused
    with pytest.raises(ParameterError, match="preprocessing"):
        run_search(_settings(isles_dir, workdir, preprocessing="seed"))


def test_native_without_a_plan_that_can_be_made_is_one_error(tmp_path, workdir):
    empty = tmp_path / "nolabels"
    (empty / "test_1").mkdir(parents=True)
    with pytest.raises(DataError, match="native preprocessing needs a plan.*--plan PATH"):
        run_search(_settings(empty, workdir))
    with pytest.raises(DataError, match="plan '.*missing.json' does not exist"):
        run_search(_settings(empty, workdir, plan=tmp_path / "missing.json"))
    with pytest.raises(ParameterError, match="add --preprocessing native"):
        _settings(empty, workdir, preprocessing="seed", plan=tmp_path / "plan.json")


def test_the_train_entry_point_passes_preprocessing_and_plan(workdir):
    from mlproject._cli import ArgumentParser, add_search_arguments, search_settings

    entry = yaml.safe_load((ROOT / "MLproject").read_text())["entry_points"]["train"]
    defaults = {k: str(v.get("default", "")) for k, v in entry["parameters"].items()}
    defaults.update(preprocessing="native", plan="plan.json", seed="0", val_fraction="0.25", split_seed="0",
                    time_budget="-1", top_k="1")
    argv = shlex.split(entry["command"].format(**{k: shlex.quote(v) for k, v in defaults.items()}))[3:]
    parser = ArgumentParser(prog="python -m mlproject.train")
    add_search_arguments(parser)
    parser.add_argument("--promote")
    parser.add_argument("--workers")
    settings = search_settings(parser.parse_args(argv))
    assert settings.preprocessing == "native" and settings.plan == Path("plan.json")
    assert settings.profile.augmentation == "spatial"
    main = yaml.safe_load((ROOT / "MLproject").read_text())["entry_points"]["main"]
    assert {"preprocessing", "plan"} <= set(main["parameters"]) and "--plan {plan}" in main["command"]
