"""The reference architecture and LRP against the study's own code (../shared/seed/code/isles2017).

The study's ``UNet3D`` is built with LRP from its own modules, its random weights are copied into
``unet3d_reference`` through ``models.from_reference_checkpoint``, and outputs and relevance maps
(raw, every pass and clamp filter of its sweep, both first-layer versions) are compared on random
inputs. The study's code is imported in isolation: its ``models`` and ``utils`` packages shadow
ours only while it loads, and what it needs from its environment is stubbed here (a ``utils.packages``
without its plotting and imaging imports, ``this_device`` on the CPU, ``UNet3D_DEBUG`` per test).
"""

from __future__ import annotations

import contextlib
import importlib
import os
import pickle
import sys
import time
import types
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import models
from explain.errors import ExplainError
from explain.filters import RelevanceFilter, study_sweep
from explain.reference import reference_lrp, reference_lrp_sweep
from models.errors import ModelFileError
from models.reference import STUDY_DEBUG_FEATURES

STUDY = Path(__file__).resolve().parents[2] / "shared/seed/code/isles2017"
STUDY_PACKAGES = ("models", "utils", "pipeline")
STUDY_PARAMETERS = 19_077_158
"""The count in the study's ``UNet3D`` comment; recounted from its code in ``test_full_size_parity``."""


def _is_study_module(name: str) -> bool:
    return name.split(".")[0] in STUDY_PACKAGES


@pytest.fixture(scope="module")
def study():
    """The study's networks, LRP layers and filter sweep, imported from its folder."""
    if not STUDY.is_dir():
        pytest.skip(f"the study's code is not at {STUDY} (CI has ../shared beside the clone)")
    ours = {k: v for k, v in sys.modules.items() if _is_study_module(k)}
    for k in ours:
        del sys.modules[k]
    try:
        for name in STUDY_PACKAGES:  # its folders have no __init__.py: make them packages explicitly
            package = types.ModuleType(name)
            package.__path__ = [str(STUDY / name)]
            sys.modules[name] = package
        packages = types.ModuleType("utils.packages")
        packages.__dict__.update(os=os, sys=sys, time=time, pickle=pickle, np=np, torch=torch,
                                 nn=nn, F=F)
        sys.modules["utils.packages"] = packages
        importlib.import_module("utils.utils").this_device = torch.device("cpu")
        loaded = types.SimpleNamespace(
            networks=importlib.import_module("models.networks"),
            lrp_layers=importlib.import_module("models.networks_LRP"),
            options=importlib.import_module("pipeline.lrp_custom_options"))
    finally:
        for k in [k for k in sys.modules if _is_study_module(k)]:
            del sys.modules[k]
        sys.modules.update(ours)
    return loaded


class _PublishedNumpy:
    """numpy as the study's published first layer used it: its W⁻ line read ``np.maximum``."""

    def __getattr__(self, name):
        return np.maximum if name == "minimum" else getattr(np, name)


@contextlib.contextmanager
def _first_layer(study, version: str):
    """Run the study's code with the ``corrected`` (as shipped) or ``published`` first layer."""
    if version == "corrected":
        yield
        return
    study.lrp_layers.np = _PublishedNumpy()
    try:
        yield
    finally:
        study.lrp_layers.np = np


def _study_sweep(study) -> list[tuple[RelevanceFilter, dict]]:
    """The study's filter sweep (pipeline/lrp_custom_options.py) as (our filter, its relprop_config)."""
    def config(normalization, negative=(-0.6, 0.0), positive=(0.0, 0.6)):
        interval = {"positive": list(positive), "negative": list(negative)}
        return {"mode": "UNet3D_standard", "normalization": normalization,
                "UNet3D": {"concat_factors": [0.5, 0.5, 0.5]},
                "fraction_pass_filter": dict(interval), "fraction_clamp_filter": dict(interval)}

    sweep = study.options.get_filter_sweep_options(mode="filter_sweep_0001_OPTIONS")
    pairs = [(RelevanceFilter(), config("raw"))]
    for normalization, kind in (("fraction_pass_filter", "pass"), ("fraction_clamp_filter", "clamp")):
        for negative, positive in sweep[normalization]:
            assert np.allclose(negative, -positive[::-1])  # the negative interval mirrors the positive
            pairs.append((RelevanceFilter(kind, float(positive[0]), float(positive[1])),
                          config(normalization, negative, positive)))
    return pairs


def _study_network(study, debug: bool, seed: int = 0):
    """The study's UNet3D with LRP, random weights and random BatchNorm statistics, in eval mode."""
    study.networks.UNet3D_DEBUG = int(debug)
    try:
        torch.manual_seed(seed)
        network = study.networks.UNet3D(no_of_input_channel=6, with_LRP=True)
    finally:
        study.networks.UNet3D_DEBUG = 0
    with torch.no_grad():
        for module in network.modules():
            if isinstance(module, nn.BatchNorm3d):
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.2, 0.2)
                module.running_mean.uniform_(-0.2, 0.2)
                module.running_var.uniform_(0.5, 2.0)
    return network.eval()


def _relative_l1(reference: torch.Tensor, ours: torch.Tensor) -> float:
    return float((reference - ours).abs().sum() / reference.abs().sum())


def _check_parity(study, debug: bool, grid: tuple[int, int, int], tmp_path, sweep: bool = True
                  ) -> dict[tuple[str, str], float]:
    network = _study_network(study, debug)
    path = tmp_path / "UNet3D_parity.1.model"  # as the study's save_models names its state dicts
    torch.save(network.state_dict(), path)
    model = models.from_reference_checkpoint(path)
    torch.manual_seed(1)
    x = torch.rand(1, 6, *grid)
    with torch.no_grad():
        expected = network(x)
        output = model(x)
    assert float((expected - output).abs().max()) <= 1e-5 * max(1.0, float(expected.abs().max()))
    pairs = _study_sweep(study) if sweep else _study_sweep(study)[:1]
    errors = {}
    for version in ("corrected", "published"):
        ours = reference_lrp_sweep(model, x, [f for f, _ in pairs], first_layer=version)
        with _first_layer(study, version), torch.no_grad():
            for f, config in pairs:
                theirs = network.relprop(expected.clone(), config)
                assert theirs.abs().sum() > 0
                errors[version, f.name] = _relative_l1(theirs, ours[f.name])
    worst = max(errors, key=errors.get)
    assert errors[worst] < 1e-4, f"{worst}: relative L1 {errors[worst]:.2e}"
    return errors


def test_the_study_sweep_is_ours(study):
    assert [f for f, _ in _study_sweep(study)] == study_sweep("layer")


def test_debug_size_parity(study, tmp_path):
    """The study's debug-size network (UNet3D_DEBUG) at 11×16×16: outputs, and every map of its sweep."""
    errors = _check_parity(study, debug=True, grid=(11, 16, 16), tmp_path=tmp_path)
    assert len(errors) == 2 * 16


def test_debug_size_parity_at_48_48_19(study, tmp_path):
    """The same network at the study's 48×48×19: outputs and raw maps (the sweep: the slow test below)."""
    errors = _check_parity(study, debug=True, grid=(19, 48, 48), tmp_path=tmp_path, sweep=False)
    assert len(errors) == 2


@pytest.mark.slow
def test_debug_size_parity_sweep_at_48_48_19(study, tmp_path):
    errors = _check_parity(study, debug=True, grid=(19, 48, 48), tmp_path=tmp_path)
    assert len(errors) == 2 * 16


@pytest.mark.slow
def test_full_size_parity(study, tmp_path):
    """The study's 19,077,158-parameter network at 48×48×19, every map of its sweep, both versions."""
    assert models.parameter_count(_study_network(study, debug=False)) == STUDY_PARAMETERS
    errors = _check_parity(study, debug=False, grid=(19, 48, 48), tmp_path=tmp_path)
    assert len(errors) == 2 * 16


def test_the_published_and_corrected_first_layers_differ(study):
    network = _study_network(study, debug=True)
    model = models.from_reference_checkpoint(network.state_dict())
    x = torch.rand(1, 6, 11, 16, 16)
    corrected, published = (reference_lrp(model, x, first_layer=v) for v in ("corrected", "published"))
    assert _relative_l1(corrected, published) > 1e-3


def test_the_skip_slicing_bug_matters():
    torch.manual_seed(0)
    model = models.build("unet3d_reference", 6, features=STUDY_DEBUG_FEATURES).eval()
    x = torch.rand(1, 6, 11, 16, 16)
    assert _relative_l1(reference_lrp(model, x), reference_lrp(model, x, skip_slice="corrected")) > 1e-3


def test_parameters_at_the_study_configuration():
    assert models.parameter_count(models.build("unet3d_reference", 6)) == STUDY_PARAMETERS


def test_any_grid_and_post_filters():
    torch.manual_seed(0)
    model = models.build("unet3d_reference", 3, width=0.0625).train()
    x = torch.rand(2, 3, 7, 10, 9)
    relevance = reference_lrp_sweep(model, x, ["raw", "post_clamp_0_0.2", "pass_0.2_1"])
    assert all(r.shape == x.shape and torch.isfinite(r).all() for r in relevance.values())
    assert model.training and all(m.training for m in model.modules())  # its mode is restored
    raw = relevance["raw"]
    scale = raw.abs().amax(dim=(1, 2, 3, 4), keepdim=True)
    assert torch.allclose(relevance["post_clamp_0_0.2"], raw.clamp(-0.2 * scale, 0.2 * scale), rtol=1e-6, atol=0)


def test_only_the_study_architecture_is_explained():
    x = torch.rand(1, 3, 11, 16, 16)
    with pytest.raises(ExplainError, match="study's architecture only"):
        reference_lrp(models.build("unet3d", 3, width=0.0625), x)
    reference = models.build("unet3d_reference", 3, width=0.0625)
    with pytest.raises(ExplainError, match="first_layer 'signed' is unknown"):
        reference_lrp(reference, x, first_layer="signed")
    with pytest.raises(ExplainError, match="concat_factors must be three"):
        reference_lrp(reference, x, concat_factors=(0.5, 0.5))
    with pytest.raises(ExplainError, match="bounds must be"):
        reference_lrp(reference, x, bounds=(0.0,))


def test_checkpoint_errors_name_the_file_and_the_fix(tmp_path):
    with pytest.raises(ModelFileError, match="no such file"):
        models.from_reference_checkpoint(tmp_path / "absent.model")
    pickled = tmp_path / "UNet3D_X.model"  # the study's other file: the whole network, pickled
    with open(pickled, "wb") as handle:
        pickle.dump(nn.Conv3d(1, 1, 1), handle)
    with pytest.raises(ModelFileError, match=r"whole network pickled.*<name>\.<epoch>\.model"):
        models.from_reference_checkpoint(pickled)
    with pytest.raises(ModelFileError, match="not a state dict of the study's UNet3D: unexpected bottom.bn1.bias"):
        models.from_reference_checkpoint(models.build("unet3d", 6, width=0.0625).state_dict())
    reference = models.build("unet3d_reference", 6, features=STUDY_DEBUG_FEATURES)
    study_state = {study: reference.state_dict()[ours] for study, ours in _study_keys(reference).items()}
    with pytest.raises(ModelFileError, match="UNet3Db"):
        models.from_reference_checkpoint({**study_state, "lens.conv.weight": torch.zeros(1)})
    missing = "cblocks6.bn3d_2b_1.running_var"
    with pytest.raises(ModelFileError, match=f"lacks {missing}"):
        models.from_reference_checkpoint({k: v for k, v in study_state.items() if k != missing})
    loaded = models.from_reference_checkpoint({f"module.{k}": v for k, v in study_state.items()})
    assert loaded.build_config == {"name": "unet3d_reference", "in_channels": 6, "out_channels": 2,
                                   "features": list(STUDY_DEBUG_FEATURES)}
    again = models.build_from_config(loaded.build_config)
    again.load_state_dict(loaded.state_dict())


def _study_keys(model) -> dict[str, str]:
    from models.reference import study_key_map

    inverse = {ours: study for study, ours in study_key_map().items()}
    out = {}
    for key in model.state_dict():
        prefix, _, leaf = key.rpartition(".")
        out[f"{inverse[prefix]}.{leaf}"] = key
    return out
