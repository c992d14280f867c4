"""Training patches of native preprocessing: the foreground share, lesion-centred patches, borders."""

from types import SimpleNamespace

import numpy as np
import pytest

from benchmark.data.cases import discover, read_case
from benchmark.data.patches import FOREGROUND_SHARE, PatchSampler
from benchmark.data.preprocessing import PreprocessConfig, prepare
from benchmark.errors import ParameterError


@pytest.fixture(scope="module")
def prepared(isles_dir):
    config = PreprocessConfig(mode="native", spacing=(4.0, 4.0, 11.0), grid=(16, 16, 8), normalization="robust")
    return [prepare(read_case(r), config) for r in discover(isles_dir, split="train")]


def test_foreground_share_over_many_draws(prepared):
    sampler = PatchSampler((8, 16, 16), seed=0)
    draws = 3000
    centred = lesion = 0
    for i in range(draws):
        case = prepared[i % len(prepared)]
        image, label, was_centred = sampler.draw(case)
        centred += was_centred
        lesion += bool((label >= 0.5).any())
        if was_centred:
            assert (label >= 0.5).any()  # a lesion-centred patch holds its lesion voxel
    share = centred / draws
    sigma = (FOREGROUND_SHARE * (1 - FOREGROUND_SHARE) / draws) ** 0.5
    assert abs(share - FOREGROUND_SHARE) < 4 * sigma
    assert lesion / draws >= share  # random patches find lesions too


def test_lesion_voxel_sits_at_the_centre_away_from_borders():
    label = np.zeros((20, 40, 40), np.float32)
    label[10, 20, 21] = 1.0
    case = SimpleNamespace(case_id="c", image=np.random.default_rng(0).normal(size=(2, 20, 40, 40)).astype(np.float32),
                           label=label)
    sampler = PatchSampler((8, 16, 16), foreground=1.0, seed=1)
    image, patch_label, centred = sampler.draw(case)
    assert centred and patch_label[4, 8, 8] == 1.0 and patch_label.sum() == 1.0
    np.testing.assert_array_equal(image, case.image[:, 6:14, 12:28, 13:29])


def test_borders_clip_the_patch_inside_and_pad_short_axes():
    label = np.zeros((6, 30, 30), np.float32)
    label[0, 0, 29] = 1.0  # a lesion voxel in a corner
    image = np.arange(6 * 30 * 30, dtype=np.float32).reshape(1, 6, 30, 30) + 1
    case = SimpleNamespace(case_id="corner", image=image, label=label)
    sampler = PatchSampler((8, 16, 16), foreground=1.0, seed=2)
    (d, h, w), centred = sampler.start(case)
    assert centred and (d, h, w) == (0, 0, 14)  # clipped: the patch stays inside along H and W
    patch_image, patch_label, _ = sampler.draw(case)
    assert patch_label[1, 0, 15] == 1.0  # D is padded (6 → 8): one zero slice before, one after
    assert (patch_image[:, 0] == 0).all() and (patch_image[:, 7] == 0).all()
    np.testing.assert_array_equal(patch_image[:, 1:7], image[:, :, 0:16, 14:30])
    randoms = PatchSampler((8, 16, 16), foreground=0.0, seed=3)
    for _ in range(200):
        start, was_centred = randoms.start(case)
        assert not was_centred and start[0] == 0 and 0 <= start[1] <= 14 and 0 <= start[2] <= 14


def test_a_case_without_lesion_gets_random_patches_and_batches_stack(prepared):
    empty = SimpleNamespace(case_id="empty", image=prepared[0].image, label=np.zeros_like(prepared[0].label))
    sampler = PatchSampler((8, 8, 8), foreground=1.0, seed=4)
    assert not any(sampler.draw(empty)[2] for _ in range(20))
    image, label = sampler.batch(prepared[:3])
    assert image.shape == (3, prepared[0].image.shape[0], 8, 8, 8) and label.shape == (3, 8, 8, 8)
    again = PatchSampler((8, 8, 8), foreground=1.0, seed=4)
    [again.draw(empty) for _ in range(20)]
    np.testing.assert_array_equal(again.batch(prepared[:3])[0].numpy(), image.numpy())  # seeded


def test_bad_settings():
    with pytest.raises(ParameterError, match="foreground share"):
        PatchSampler((8, 8, 8), foreground=1.5)
    with pytest.raises(ParameterError, match="three positive sizes"):
        PatchSampler((8, 8))
