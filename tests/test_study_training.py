"""The study's training: its cross-entropy, its Adam settings in the ``paper`` profile, its augmentation.

The rotation is proven against Pillow's ``Image.rotate`` (what the study's ``utils/augment.py`` calls),
the translation against the study's own slicing rule, the loss against ``torch.nn.CrossEntropyLoss``.
"""

import argparse
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import models
from benchmark.data.cases import discover
from benchmark.data.preprocessing import PreprocessCache, PreprocessConfig
from benchmark.errors import ParameterError
from benchmark.training.loop import (
    AUGMENTATIONS,
    LOSSES,
    Augmenter,
    TrainConfig,
    cross_entropy_loss,
    fit,
    loss_function,
    rotate_slices,
    seed_everything,
    translate,
)
from benchmark.training.profiles import PROFILES, with_training
from benchmark.training.search import SearchSettings, study_settings
from mlproject._cli import add_search_arguments, search_settings

GRID = (16, 16, 8)


@pytest.fixture(scope="module")
def prepared(isles_dir):
    cache = PreprocessCache(PreprocessConfig(grid=GRID))
    return [cache.get(r) for r in discover(isles_dir, split="train")]


def test_ce_is_torch_cross_entropy_on_hard_labels_and_soft_on_fractions():
    torch.manual_seed(0)
    logits = torch.randn(2, 2, 3, 4, 5)
    hard = (torch.rand(2, 3, 4, 5) > 0.5).float()
    expected = torch.nn.CrossEntropyLoss()(logits, hard.long())  # the study's criterion
    assert "ce" in LOSSES and loss_function("ce") is cross_entropy_loss
    assert cross_entropy_loss(logits, hard).item() == pytest.approx(expected.item(), rel=1e-6)
    soft = torch.rand(2, 3, 4, 5)
    log_p = torch.log_softmax(logits, 1)
    assert cross_entropy_loss(logits, soft).item() == pytest.approx(
        float(-(soft * log_p[:, 1] + (1 - soft) * log_p[:, 0]).mean()), rel=1e-6)
    with pytest.raises(ParameterError, match="loss 'bce' is unknown: choose dice, dice_ce, ce"):
        TrainConfig(loss="bce")
    with pytest.raises(ParameterError, match="augmentation 'elastic' is unknown"):
        TrainConfig(augmentation="elastic")


def test_the_paper_profile_has_the_study_settings():
    paper = PROFILES["paper"]
    assert paper.fixed == {"architecture": "unet3d_reference", "width": 1.0, "lr": 2e-4, "weight_decay": 0.0,
                           "loss": "ce", "augment": 0.9}
    assert paper.augmentation == "study" and paper.batch_size == 1 and paper.grid == (48, 48, 19)
    assert TrainConfig().betas == (0.5, 0.9)
    settings = study_settings(SearchSettings(Path("d"), 1, 1, "s", "sqlite:///o.db", "", 0, "cpu", paper))
    assert settings["fixed"]["loss"] == "ce" and settings["losses"] == ["ce"] and settings["augmentation"] == "study"
    default = study_settings(SearchSettings(Path("d"), 1, 1, "s", "sqlite:///o.db", "", 0, "cpu",
                                            PROFILES["default"]))
    assert "augmentation" not in default  # studies made before the option existed resume unchanged


def test_paper_training_steps_adam_without_weight_decay(prepared):
    seed_everything(0)
    model = models.build("unet3d_reference", 6, width=0.0625)
    config = TrainConfig(epochs=1, batch_size=1, lr=2e-4, weight_decay=0.0, loss="ce", augment=0.9,
                         augmentation="study", device="cpu", patience=0)
    result = fit(model, prepared[:2], prepared[2:3], config, progress=False)
    assert math.isfinite(result.history[0]["train_loss"]) and len(result.history) == 1


def _parse(*argv):
    parser = argparse.ArgumentParser()
    add_search_arguments(parser)
    return search_settings(parser.parse_args(list(argv))).profile


def test_loss_and_augmentation_flags():
    paper = _parse("--profile", "paper")
    assert paper.fixed["loss"] == "ce" and paper.augmentation == "study"
    changed = _parse("--profile", "paper", "--loss", "dice", "--augmentation", "both")
    assert changed.fixed["loss"] == "dice" and changed.losses == ("dice",) and changed.augmentation == "both"
    searched = _parse("--loss", "ce")
    assert searched.losses == ("ce",) and searched.first["loss"] == "ce" and searched.augmentation == "flips"
    assert _parse("--loss", "auto") == PROFILES["default"]
    with pytest.raises(ParameterError, match="loss 'focal' is unknown"):
        with_training(PROFILES["default"], loss="focal")
    with pytest.raises(ParameterError, match="augmentation 'mixup' is unknown"):
        with_training(PROFILES["default"], augmentation="mixup")


@pytest.mark.parametrize("shape", [(48, 48), (17, 12), (10, 15)])
@pytest.mark.parametrize("degrees", [-20.0, -7.3, 0.0, 0.1, 13.5, 20.0])
def test_slice_rotation_is_pillows(shape, degrees):
    rng = np.random.default_rng(0)
    image = rng.random(shape).astype(np.float32)
    expected = np.array(Image.fromarray(image).rotate(degrees))  # the study's Image3DRotator.rotate_img
    ours = rotate_slices(torch.from_numpy(image)[None, None], degrees)[0, 0].numpy()
    assert np.array_equal(ours, expected)


def test_translation_is_the_studys_shift():
    x = torch.arange(2 * 5 * 4 * 3, dtype=torch.float64).reshape(2, 5, 4, 3)
    right, left = translate(x, 2, 1), translate(x, -2, 1)
    assert torch.equal(right[:, 2:], x[:, :-2]) and not right[:, :2].any()  # the study's y[p:] = x[:-p]
    assert torch.equal(left[:, :-2], x[:, 2:]) and not left[:, -2:].any()  # and y[:-p] = x[p:]
    assert torch.equal(translate(x, 0, 2), x) and not translate(x, 9, 3).any()


def test_study_augmentation_moves_the_lesion_with_the_image(prepared):
    image = torch.from_numpy(np.stack([c.image for c in prepared]))
    label = (torch.from_numpy(np.stack([c.label for c in prepared])) > 0.5).float()
    image[:, 0] = label  # a channel that is the lesion: wherever the image goes, the lesion must follow
    augmenter = Augmenter(1.0, seed=3, kind="study")
    out_image, out_label = augmenter(image, label)
    assert out_image.shape == image.shape and out_label.shape == label.shape
    assert not torch.equal(out_label, label)
    assert torch.equal(out_image[:, 0] > 0, out_label > 0.5)  # the crop clips intensities to [0, c], c >= 0.3
    assert float(out_image.max()) <= 1.0 and float(out_image.min()) >= 0.0
    assert set(out_label.unique().tolist()) <= {0.0, 1.0}  # nearest: labels are not blurred
    again_image, again_label = Augmenter(1.0, seed=3, kind="study")(image, label)
    assert torch.equal(again_image, out_image) and torch.equal(again_label, out_label)  # deterministic per seed
    other_image, _ = Augmenter(1.0, seed=4, kind="study")(image, label)
    assert not torch.equal(other_image, out_image)


def test_study_augmentation_parameters_follow_the_study_ranges():
    augmenter = Augmenter(1.0, seed=0, kind="study")
    draws = [augmenter.study_parameters((19, 48, 48)) for _ in range(2000)]
    degrees = np.array([d["degrees"] for d in draws])
    shifts = np.array([d["shifts"] for d in draws])
    crops = np.array([d["crop"] for d in draws])
    assert -20 <= degrees.min() < -19 and 19 < degrees.max() <= 20 and np.allclose(degrees, degrees.round(1))
    assert shifts[:, 0].min() == -4 and shifts[:, 0].max() == 3  # ⌊U(−⌈0.2·19⌉, ⌈0.2·19⌉)⌋
    assert shifts[:, 1].min() == -10 and shifts[:, 2].max() == 9  # ⌊U(−⌈0.2·48⌉, ⌈0.2·48⌉)⌋
    assert 0.3 <= crops.min() < 0.32 and 0.98 < crops.max() <= 1.0


def test_strength_is_the_fraction_of_augmented_volumes_and_both_combines():
    label = torch.zeros(200, 6, 16, 16)
    label[:, 2:4, 5:9, 6:10] = 1
    image = label[:, None].repeat(1, 2, 1, 1, 1)
    out_image, _ = Augmenter(0.9, seed=0, kind="study")(image, label)
    unchanged = sum(torch.equal(out_image[i], image[i]) for i in range(200))
    assert 8 <= unchanged <= 35  # about one in ten, as the study's first copy of each case
    assert set(AUGMENTATIONS) == {"flips", "study", "both", "spatial"}
    both_image, both_label = Augmenter(1.0, seed=0, kind="both")(image, label)
    assert both_image.shape == image.shape and not torch.equal(both_label, label)
    assert torch.equal(Augmenter(0.0, kind="both")(image, label)[0], image)
