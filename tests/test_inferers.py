"""Sliding-window tiling and Gaussian stitching against brute-force references."""

import numpy as np
import pytest
import torch

from inferers import SlidingWindow, gaussian_importance, sliding_window, window_starts


@pytest.mark.parametrize(("size", "patch", "overlap"), [(40, 16, 0.5), (33, 16, 0.5), (19, 8, 0.25), (16, 16, 0.5),
                                                        (100, 32, 0.75)])
def test_windows_cover_every_voxel_with_the_stated_overlap(size, patch, overlap):
    starts = window_starts(size, patch, overlap)
    assert starts[0] == 0 and starts[-1] == size - patch
    covered = np.zeros(size, dtype=int)
    for s in starts:
        covered[s:s + patch] += 1
    assert covered.min() >= 1
    assert all(b - a <= patch * (1 - overlap) + 1e-9 for a, b in zip(starts, starts[1:], strict=False))


def test_the_gaussian_peaks_at_the_centre_is_symmetric_and_has_no_zeros():
    g = gaussian_importance((8, 16, 15))
    assert g.max() == pytest.approx(1.0) and g.min() > 0
    np.testing.assert_allclose(g, g[::-1, ::-1, ::-1], atol=1e-7)
    # the centre is (3.5, 7.5, 7), σ = (1, 2, 1.875) voxels; (4, 8, 7) is a nearest voxel, so weight 1
    assert g[4, 8, 7] == pytest.approx(1.0)
    assert g[5, 8, 7] == pytest.approx(np.exp(-(1.5 ** 2 - 0.5 ** 2) / (2 * 1.0 ** 2)), rel=1e-5)
    assert g[4, 8, 9] == pytest.approx(np.exp(-2.0 ** 2 / (2 * 1.875 ** 2)), rel=1e-5)


def test_stitching_is_the_importance_weighted_mean_of_the_windows():
    window = SlidingWindow((4, 8, 8), overlap=0.5, batch=3)
    volume = np.random.default_rng(0).random((1, 2, 10, 19, 12)).astype(np.float32)
    boxes = window.windows(volume.shape[2:])
    calls = iter(range(len(boxes)))

    def window_index(batch):  # each window answers a constant: its index (in the order windows are visited)
        return np.stack([np.full((1, *b.shape[1:]), next(calls), dtype=np.float32) for b in batch])

    stitched = sliding_window(volume, window_index, window)
    numerator = np.zeros(volume.shape[2:])
    denominator = np.zeros(volume.shape[2:])
    g = gaussian_importance(window.patch)
    for index, box in enumerate(boxes):
        numerator[box] += index * g
        denominator[box] += g
    np.testing.assert_allclose(stitched[0, 0], numerator / denominator, rtol=1e-5)


def test_torch_and_numpy_stitch_alike_and_a_pointwise_function_comes_back_unchanged():
    window = SlidingWindow((8, 16, 16), batch=2)
    volume = np.random.default_rng(1).random((2, 3, 19, 40, 33)).astype(np.float32)
    as_numpy = sliding_window(volume, lambda b: 2 * b[:, :2], window)
    as_torch = sliding_window(torch.from_numpy(volume), lambda b: 2 * b[:, :2], window)
    assert isinstance(as_torch, torch.Tensor) and as_torch.shape == (2, 2, 19, 40, 33)
    np.testing.assert_allclose(as_torch.numpy(), as_numpy, atol=1e-6)
    np.testing.assert_allclose(as_numpy, 2 * volume[:, :2], atol=1e-5)


def test_a_volume_smaller_than_the_patch_is_padded_with_zeros_and_cropped_back():
    window = SlidingWindow((8, 16, 16))
    volume = np.ones((1, 1, 5, 10, 40), dtype=np.float32)
    seen = []

    def record(batch):
        seen.append(batch.shape)
        return batch + 1

    out = sliding_window(volume, record, window)
    assert out.shape == volume.shape and all(s[2:] == (8, 16, 16) for s in seen)
    np.testing.assert_allclose(out, 2.0, atol=1e-6)
    assert window.padding((5, 10, 40)) == [(1, 2), (3, 3), (0, 0)]


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="overlap"):
        SlidingWindow((8, 8, 8), overlap=1.0)
    with pytest.raises(ValueError, match="patch"):
        SlidingWindow((8, 8))
