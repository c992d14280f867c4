"""Shared fixtures: small synthetic data sets written by the project's own generator."""

from __future__ import annotations

import shutil

import pytest

from benchmark.data.synthetic import write_dataset

SHAPES = [(64, 64, 12), (48, 56, 10)]
SEED = 3


@pytest.fixture(scope="session")
def isles_dir(tmp_path_factory):
    """4 training + 1 test case in ISLES 2017 layout."""
    return write_dataset(tmp_path_factory.mktemp("isles") / "data", 4, seed=SEED, shapes=SHAPES,
                         progress=False)


@pytest.fixture(scope="session")
def nnunet_dir(tmp_path_factory):
    """The same cases in nnU-Net raw layout."""
    return write_dataset(tmp_path_factory.mktemp("nnunet") / "Dataset501_StrokelensSynth", 4,
                         seed=SEED, shapes=SHAPES, layout="nnunet", progress=False)


@pytest.fixture
def data(isles_dir, tmp_path):
    """A private copy of ``isles_dir`` that a test may break."""
    root = tmp_path / "data"
    shutil.copytree(isles_dir, root)
    return root


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """A private working folder with its own MLflow store (SQLite), made the current directory."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    return tmp_path
