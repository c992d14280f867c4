"""A newcomer's path: the synthetic default is never silently reused with another --cases."""

import shutil

import pytest

from benchmark.data.defaults import DEFAULT_DATA
from benchmark.errors import ParameterError
from benchmark.stages.data import prepare_data


def test_cases_that_disagree_with_the_existing_default_are_an_error(isles_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    shutil.copytree(isles_dir, tmp_path / DEFAULT_DATA)
    assert prepare_data(cases=None, summary=False).generated is False  # auto: whatever it holds
    assert prepare_data(cases=4, summary=False).generated is False
    with pytest.raises(ParameterError, match="already holds 4 training cases but --cases asks for 6.*delete"):
        prepare_data(cases=6, summary=False)
