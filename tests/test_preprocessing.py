import os

import numpy as np
import pytest

from benchmark.data.cases import discover, load_cases
from benchmark.data.preprocessing import (
    PreprocessCache,
    PreprocessConfig,
    brain_mask,
    normalize_minmax,
    normalize_robust,
    prepare,
    resample,
    to_native,
)
from benchmark.errors import ParameterError


def test_minmax_is_the_seed_normalisation():
    x = np.stack([np.linspace(-3, 5, 60).reshape(3, 4, 5), np.full((3, 4, 5), 7.0)]).astype(np.float32)
    out = normalize_minmax(x)
    assert out[0].min() == 0.0 and out[0].max() == 1.0
    assert np.allclose(out[0], (x[0] + 3) / 8)
    assert (out[1] == 0).all()


def test_robust_zscores_inside_the_brain():
    rng = np.random.default_rng(0)
    x = np.zeros((2, 10, 12, 12), np.float32)
    x[:, 2:8, 3:9, 3:9] = rng.normal(5.0, 2.0, size=(2, 6, 6, 6))
    x[0, 4, 5, 5] = 1e6  # an outlier is clipped
    mask = brain_mask(x)
    out = normalize_robust(x, mask)
    for c in range(2):
        assert abs(out[c][mask].mean()) < 1e-5 and out[c][mask].std() == pytest.approx(1.0, rel=1e-4)
        assert (out[c][~mask] == 0).all()
    assert out[0].max() < 4.0


def test_resample_to_grid_and_back():
    volume = np.ones((2, 19, 96, 96), np.float32) * np.array([2.0, 3.0], np.float32)[:, None, None, None]
    small = resample(volume, (19, 48, 48))
    assert small.shape == (2, 19, 48, 48) and np.allclose(small[1], 3.0)
    ramp = np.broadcast_to(np.linspace(0, 1, 96, dtype=np.float32), (1, 19, 96, 96))
    back = to_native(resample(ramp, (19, 48, 48)), (19, 96, 96))
    assert back.shape == (1, 19, 96, 96) and np.abs(back - ramp)[..., 2:-2].max() < 0.02


def test_prepare_gives_model_input_at_the_training_grid(isles_dir):
    case = load_cases(isles_dir, split="train")[0]
    config = PreprocessConfig(grid=(32, 32, 8))
    p = prepare(case, config)
    assert p.image.shape == (6, 8, 32, 32) and p.image.dtype == np.float32
    assert p.image.min() >= 0.0 and p.image.max() <= 1.0
    assert p.label.shape == (8, 32, 32) and p.label.min() >= 0.0 and p.label.max() <= 1.0
    assert p.native_shape == case.shape and np.array_equal(p.native_label, case.label)
    # the lesion's volume survives resampling (fractions, not nearest neighbour)
    native_ml = case.label.sum() * case.voxel_ml
    grid_voxel_ml = case.voxel_ml * np.prod(case.shape) / np.prod(p.label.shape)
    assert p.label.sum() * grid_voxel_ml == pytest.approx(native_ml, rel=0.1)
    subset = prepare(case, PreprocessConfig(modalities=("Tmax",), grid=(32, 32, 8)))
    assert np.array_equal(subset.image[0], p.image[4])


def test_config_round_trip_and_validation():
    config = PreprocessConfig(modalities=("ADC", "Tmax"), normalization="robust", grid=(48, 48, 19))
    assert PreprocessConfig.from_dict(config.to_dict()) == config
    assert config.grid_dhw == (19, 48, 48)
    with pytest.raises(ParameterError, match="normalization 'zscore'"):
        PreprocessConfig(normalization="zscore")
    with pytest.raises(ParameterError, match="unknown modality T1"):
        PreprocessConfig(modalities=("T1",))
    with pytest.raises(ParameterError, match="grid"):
        PreprocessConfig(grid=(48, 48))


def test_cache_reads_each_case_once_and_survives_on_disk(isles_dir, tmp_path):
    refs = discover(isles_dir, split="train")
    config = PreprocessConfig(grid=(16, 16, 8))
    cache = PreprocessCache(config, tmp_path / "cache")
    for _epoch in range(3):
        prepared = [cache.get(r) for r in refs]
    assert cache.reads == len(refs)
    again = PreprocessCache(config, tmp_path / "cache")
    reloaded = [again.get(r) for r in refs]
    assert again.reads == 0
    for a, b in zip(prepared, reloaded):
        assert np.array_equal(a.image, b.image) and np.array_equal(a.native_label, b.native_label)
        assert a.spacing == b.spacing and a.native_shape == b.native_shape
    other = PreprocessCache(PreprocessConfig(grid=(16, 16, 8), normalization="robust"), tmp_path / "cache")
    other.get(refs[0])
    assert other.reads == 1
    path = refs[0].images["ADC"]
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    fresh = PreprocessCache(config, tmp_path / "cache")
    fresh.get(refs[0])
    assert fresh.reads == 1
    assert not list((tmp_path / "cache").glob("*.tmp*"))


def test_native_mode_resamples_to_the_target_spacing_and_slides_windows_of_the_grid(isles_dir):
    import torch
    from torch import nn

    from benchmark.evaluation.inference import predict_probability

    case = load_cases(isles_dir, split="train")[0]
    spacing_xyz = (case.spacing[2] * 2, case.spacing[1] * 2, case.spacing[0])
    config = PreprocessConfig(normalization="robust", grid=(16, 16, 8), mode="native", spacing=spacing_xyz)
    assert PreprocessConfig.from_dict(config.to_dict()) == config
    d, h, w = case.shape
    assert config.shape_for(case.shape, case.spacing) == (d, round(h / 2), round(w / 2))
    p = prepare(case, config)
    assert p.image.shape == (6, d, round(h / 2), round(w / 2)) and p.label.shape == p.image.shape[1:]
    window = config.window()
    assert window.patch == (8, 16, 16) and window.overlap == 0.5
    seed = PreprocessConfig()
    assert seed.window() is None and seed.shape_for(case.shape, case.spacing) == (19, 48, 48)
    pointwise = nn.Conv3d(6, 2, 1)  # voxel by voxel: the stitched windows equal one whole-volume pass
    image = torch.from_numpy(p.image[None])
    whole = predict_probability(pointwise, image, torch.device("cpu"))
    slid = predict_probability(pointwise, image, torch.device("cpu"), window=window)
    torch.testing.assert_close(slid, whole, atol=1e-5, rtol=1e-5)
    with pytest.raises(ParameterError, match="target spacing"):
        PreprocessConfig(mode="native")
    with pytest.raises(ParameterError, match="mode 'patch'"):
        PreprocessConfig(mode="patch")
