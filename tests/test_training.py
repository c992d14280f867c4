import numpy as np
import pytest
import torch

import models
from benchmark.data.cases import discover
from benchmark.data.preprocessing import PreprocessCache, PreprocessConfig
from benchmark.errors import DataError, ParameterError
from benchmark.training.loop import (
    Augmenter,
    EarlyStopping,
    TrainConfig,
    dice_ce_loss,
    fit,
    load_checkpoint,
    load_model,
    seed_everything,
    soft_dice_loss,
    validate,
)

GRID = (16, 16, 8)


@pytest.fixture(scope="module")
def prepared(isles_dir):
    cache = PreprocessCache(PreprocessConfig(grid=GRID))
    return [cache.get(r) for r in discover(isles_dir, split="train")]


def _config(**kw):
    return TrainConfig(**{"epochs": 2, "lr": 3e-3, "loss": "dice_ce", "device": "cpu", **kw})


def test_soft_dice_matches_the_formula():
    logits = torch.randn(2, 2, 3, 4, 5)
    target = (torch.rand(2, 3, 4, 5) > 0.5).float()
    p = torch.softmax(logits, 1)[:, 1]
    expected = 1 - (2 * (p * target).sum() + 1) / (p.sum() + target.sum() + 1)
    assert soft_dice_loss(logits, target).item() == pytest.approx(expected.item(), rel=1e-6)
    perfect = torch.stack([-20 * (target * 2 - 1), 20 * (target * 2 - 1)], 1)
    assert soft_dice_loss(perfect, target).item() < 1e-4
    ce = torch.nn.functional.cross_entropy(logits, target.long())
    assert dice_ce_loss(logits, target).item() == pytest.approx(expected.item() + ce.item(), rel=1e-5)


def test_augmenter_flips_image_and_label_together():
    label = torch.zeros(4, 6, 8, 10)
    label[:, 1:3, 1:4, 2:5] = 1
    image = label[:, None].repeat(1, 3, 1, 1, 1)
    aug_image, aug_label = Augmenter(1.0, seed=1)(image, label)
    assert not torch.equal(aug_label, label)  # something was flipped
    for i in range(4):
        corr = np.corrcoef(aug_image[i, 0].flatten(), aug_label[i].flatten())[0, 1]
        assert corr > 0.9
    same_image, same_label = Augmenter(0.0)(image, label)
    assert torch.equal(same_image, image) and torch.equal(same_label, label)


def test_early_stopping():
    stopper = EarlyStopping(patience=2)
    for epoch, score in enumerate([0.1, 0.3, 0.2, 0.25]):
        stopper.update(score, epoch)
    assert stopper.best == 0.3 and stopper.best_epoch == 1 and stopper.should_stop(3)
    assert not EarlyStopping(patience=0).should_stop(100)


def test_fit_is_deterministic_and_checkpoints_load_weights_only(prepared, tmp_path):
    runs = []
    for name in ("a", "b"):
        seed_everything(3)
        model = models.build("unet3d", 6, width=0.0625)
        result = fit(model, prepared[:3], prepared[3:], _config(seed=3),
                     checkpoint_dir=tmp_path / name, progress=False)
        runs.append(result)
    assert [r["train_loss"] for r in runs[0].history] == [r["train_loss"] for r in runs[1].history]
    state = torch.load(tmp_path / "a" / "last.pt", weights_only=True)
    assert set(state) >= {"state_dict", "optimizer", "epoch", "build_config"}
    assert load_checkpoint(tmp_path / "a" / "last.pt")["epoch"] == 1
    rebuilt = load_model(tmp_path / "a" / "best.pt")
    assert rebuilt.build_config["name"] == "unet3d"
    metrics, per_case = validate(rebuilt, prepared[3:], torch.device("cpu"))
    assert set(metrics) >= {"val_dice", "val_hd95", "val_assd", "val_lesion_f1", "val_volume_diff_ml"}
    assert len(per_case) == 1


def test_resume_continues_exactly(prepared, tmp_path):
    seed_everything(5)
    full = fit(models.build("segresnet3d", 6, width=0.0625), prepared[:3], prepared[3:],
               _config(epochs=3, seed=5), checkpoint_dir=tmp_path / "full", progress=False)
    seed_everything(5)
    fit(models.build("segresnet3d", 6, width=0.0625), prepared[:3], prepared[3:],
        _config(epochs=2, seed=5), checkpoint_dir=tmp_path / "part", progress=False)
    resumed = fit(models.build("segresnet3d", 6, width=0.0625), prepared[:3], prepared[3:],
                  _config(epochs=3, seed=5), checkpoint_dir=tmp_path / "part",
                  resume=tmp_path / "part" / "last.pt", progress=False)
    assert len(resumed.history) == 3
    assert resumed.history[-1]["train_loss"] == pytest.approx(full.history[-1]["train_loss"], rel=1e-5)


def test_training_learns_the_synthetic_lesion(prepared):
    seed_everything(0)
    result = fit(models.build("unet3d", 6, width=0.125), prepared[:3], prepared[:3],
                 _config(epochs=30, augment=0.0, patience=0, batch_size=1), progress=False)
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"] * 0.75
    assert result.best_dice > 0.3


def test_bad_training_settings():
    with pytest.raises(ParameterError, match="epochs must be at least 1"):
        TrainConfig(epochs=0)
    with pytest.raises(ParameterError, match="loss 'bce'"):
        TrainConfig(loss="bce")
    with pytest.raises(DataError, match="training and validation cases"):
        fit(models.build("unet3d", 6, width=0.0625), [], [], _config(), progress=False)
    with pytest.raises(DataError, match="not a strokelens checkpoint"):
        load_checkpoint(__file__)
