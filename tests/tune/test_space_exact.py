"""Search-space distributions exactly: errors that name the field, descriptions, and a
categorical description without choices."""

from __future__ import annotations

import pytest

from compactnn.tune.space import IntRange, space_from_dict


def test_int_range_errors_name_the_field() -> None:
    with pytest.raises(TypeError, match=r"^IntRange\.log must be a bool"):
        IntRange(1, 4, log=1)
    with pytest.raises(ValueError, match=r"^IntRange\.low must be >= 1, got IntRange\.low=0$"):
        IntRange(0, 4, log=True)
    with pytest.raises(TypeError, match=r"^IntRange\.high must be an int"):
        IntRange(1, 4.0)


def test_int_range_descriptions() -> None:
    assert IntRange(1, 4).describe() == "int [1, 4]"
    assert IntRange(1, 4, log=True).describe() == "int log [1, 4]"


def test_space_descriptions_are_checked_with_named_errors() -> None:
    with pytest.raises(TypeError, match=r"^a search space description must be a mapping, "
                       r"got list$"):
        space_from_dict([])
    with pytest.raises(ValueError, match=r"^Categorical\.choices must hold >= 2 distinct "
                       r"values, got \[\]$"):
        space_from_dict({"x": {"type": "categorical"}})


def test_categorical_choices_are_finite_scalars() -> None:
    from compactnn.tune.space import Categorical

    for bad in ((1, None), (1, [2]), (1.0, float("nan")), ("a", float("inf"))):
        with pytest.raises(TypeError, match=r"^Categorical\.choices must hold finite "
                           r"str/int/float/bool values, got "):
            Categorical(bad)
    assert Categorical(["a", 2, 0.5, True]).describe() == "one of {a, 2, 0.5, True}"


def test_uniform_bounds_are_floats_and_may_be_negative() -> None:
    from compactnn.tune.space import LogUniform, Uniform

    u = Uniform(-1, 2)
    assert (u.low, u.high) == (-1.0, 2.0) and type(u.low) is float and type(u.high) is float
    with pytest.raises(ValueError, match=r"^LogUniform\.low must be > 0"):
        LogUniform(0.0, 1.0)


def test_float_descriptions() -> None:
    from compactnn.tune.space import LogUniform, Uniform

    assert Uniform(-1, 2.5).describe() == "uniform [-1, 2.5]"
    assert LogUniform(1e-4, 0.1).describe() == "log-uniform [0.0001, 0.1]"


def test_space_to_dict_names_the_space_in_its_errors() -> None:
    from compactnn.tune.space import space_to_dict

    with pytest.raises(ValueError, match=r"^space is empty"):
        space_to_dict({})
    with pytest.raises(TypeError, match=r"^space\['x'\] must be LogUniform"):
        space_to_dict({"x": 1})


def test_check_space_errors_name_the_wrong_types() -> None:
    from compactnn.tune.space import check_space

    with pytest.raises(TypeError, match=r"^methods\.a\.space must be a mapping of "
                       r"hyper-parameter names to distributions, got list$"):
        check_space("methods.a.space", [])
    with pytest.raises(TypeError, match=r"^s\['x'\] must be LogUniform, Uniform, IntRange or "
                       r"Categorical, got float$"):
        check_space("s", {"x": 0.5})
