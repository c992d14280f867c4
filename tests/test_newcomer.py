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


def test_the_smoke_profile_carries_its_own_study_and_experiment():
    import argparse

    from benchmark.training.profiles import DEFAULT_STUDY, PROFILES, experiment_of
    from mlproject._cli import add_search_arguments, search_settings
    from tracking.names import experiment_for

    parser = argparse.ArgumentParser()
    add_search_arguments(parser)
    smoke = search_settings(parser.parse_args(["--profile", "smoke", "--device", "cpu"]))
    assert smoke.study == "smoke" and smoke.profile.experiment == "strokelens-smoke" and smoke.experiment == ""
    assert experiment_for(smoke.profile.experiment, "explanation") == "strokelens-smoke-explanations"
    assert search_settings(parser.parse_args(["--device", "cpu"])).study == DEFAULT_STUDY == "strokelens"
    assert search_settings(parser.parse_args(["--profile", "smoke", "--study", "mine", "--device", "cpu"])).study \
        == "mine"
    # the commands that take a study and no profile find the smoke study's experiment from the profile
    assert experiment_of("smoke") == "strokelens-smoke" and experiment_of("strokelens") == "strokelens"
    assert experiment_of("anything else") == PROFILES["default"].experiment
    assert smoke.profile.explain_cases == 1 and smoke.profile.epochs * len(smoke.profile.architectures) <= 6


def test_no_entry_point_hard_codes_the_study_name():
    from pathlib import Path

    mlproject = (Path(__file__).resolve().parents[1] / "MLproject").read_text()
    assert 'study: {type: string, default: ""}' in mlproject
    assert 'study: {type: string, default: "strokelens"}' not in mlproject
