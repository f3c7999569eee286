"""Typed configs: strict keys with suggestions, type coercion from strings,
nested sections, overrides and config files."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Literal

import pytest

from compactnn.config import (
    ConfigError,
    build_config,
    config_to_dict,
    load_config_file,
    parse_overrides,
)


@dataclass
class Inner:
    rate: float = 0.1
    widths: list[int] = field(default_factory=lambda: [4])
    mode: Literal["a", "b"] = "a"


@dataclass
class Outer:
    inner: Inner = field(default_factory=Inner)
    steps: int = 3
    flag: bool = False
    ratio: float | None = None
    name: str = "x"

    def validate(self) -> None:
        if self.steps < 1:
            raise ConfigError(f"steps must be >= 1, got {self.steps}")


def test_strings_are_typed():
    cfg = build_config(Outer, parse_overrides(
        ["inner.rate=2", "inner.widths=8,16", "inner.mode=b", "steps=7", "flag=yes",
         "ratio=none", "name=y"]))
    assert cfg == Outer(Inner(2.0, [8, 16], "b"), 7, True, None, "y")
    assert build_config(Outer, parse_overrides(["inner.widths=[1, 2]"])).inner.widths == [1, 2]
    assert build_config(Outer, {"ratio": 3}).ratio == 3.0


@pytest.mark.parametrize("data,match", [
    ({"stepz": 1}, "unknown config key 'stepz' \\(did you mean 'steps'\\?\\)"),
    ({"inner": {"rat": 1}}, "unknown config key 'inner.rat'"),
    ({"steps": "many"}, "steps='many': expected an integer"),
    ({"steps": True}, "expected an integer"),
    ({"flag": "maybe"}, "expected true or false"),
    ({"inner": {"mode": "c"}}, "expected one of 'a', 'b'"),
    ({"inner": 3}, "expected a section"),
    ({"steps": 0}, "steps must be >= 1"),
    ({"name": 5}, "expected a string"),
])
def test_bad_values_name_the_key(data, match):
    with pytest.raises(ConfigError, match=match):
        build_config(Outer, data)


def test_overrides_merge_into_a_base_without_changing_it():
    base = {"inner": {"rate": 1.0}, "steps": 2}
    merged = parse_overrides(["inner.mode=b", "steps=5"], base)
    assert merged == {"inner": {"rate": 1.0, "mode": "b"}, "steps": "5"}
    assert base == {"inner": {"rate": 1.0}, "steps": 2}
    with pytest.raises(ConfigError, match="expected key=value"):
        parse_overrides(["steps"])
    with pytest.raises(ConfigError, match="'steps' is not a section"):
        parse_overrides(["steps.x=1"], {"steps": 2})


def test_files_and_round_trip(tmp_path):
    (tmp_path / "c.toml").write_text('steps = 4\n[inner]\nwidths = [2, 3]\n')
    (tmp_path / "c.json").write_text(json.dumps({"flag": True}))
    assert build_config(Outer, load_config_file(tmp_path / "c.toml")).inner.widths == [2, 3]
    assert build_config(Outer, load_config_file(tmp_path / "c.json")).flag is True
    with pytest.raises(ConfigError, match="does not exist"):
        load_config_file(tmp_path / "missing.toml")
    (tmp_path / "c.yaml").write_text("steps: 1")
    with pytest.raises(ConfigError, match="expected a .toml or .json"):
        load_config_file(tmp_path / "c.yaml")
    cfg = build_config(Outer, parse_overrides(["inner.rate=0.5", "steps=9"]))
    assert build_config(Outer, config_to_dict(cfg)) == cfg
