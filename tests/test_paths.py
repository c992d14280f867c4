import pytest

from benchmark.errors import ParameterError
from benchmark.paths import check_name, inside


@pytest.mark.parametrize("name", ["strokelens", "my study 2", "unet3d@v2", "a.b-c_d+e", "x" * 128])
def test_ordinary_names_pass(name, tmp_path):
    assert check_name(name, "study") == name
    assert inside(tmp_path, name, "study").parent == tmp_path


@pytest.mark.parametrize("name", ["../../escape", "..", ".", ".hidden", "a/b", "a\\b", "/abs", "", " ", "x" * 129,
                                  "tab\tname", "new\nline", "trailing ", "ctl\x00"])
def test_hostile_names_are_refused_with_the_rule(name, tmp_path):
    with pytest.raises(ParameterError, match="study name .* is not allowed: use letters"):
        inside(tmp_path, name, "study")
