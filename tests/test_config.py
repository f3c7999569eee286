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


@dataclass
class Names:
    exclude: list[str] = field(default_factory=list)


@pytest.mark.parametrize("text", ["[head]", "[head, fc]", '["head", "fc"]', "head,fc",
                                  "[ 'head' ,fc ]"])
def test_lists_of_names_need_no_json_quotes(text):
    # `lowrank.exclude=[head]` typed unquoted in a shell used to fail with a raw JSON error
    want = ["head"] if text == "[head]" else ["head", "fc"]
    assert build_config(Names, parse_overrides([f"exclude={text}"])).exclude == want


@pytest.mark.parametrize("text", ["[head", "[a, [b]]", "[{a}]"])
def test_a_malformed_list_says_how_to_write_one(text):
    with pytest.raises(ConfigError) as err:
        build_config(Names, parse_overrides([f"exclude={text}"]))
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith(f"exclude={text!r}")
    assert "[a,b] or a,b" in msg and "single quotes" in msg


@pytest.mark.parametrize("name,text,line", [
    ("c.toml", '[inner]\nrate = 0.1\nwidths = \n', 3),
    ("c.toml", 'steps = 4\n\nname = "x', 3),             # error at the end of the file
    ("c.json", '{"steps": 4,\n "flag": }', 2),
])
def test_a_broken_config_file_names_the_file_and_the_line(tmp_path, name, text, line):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_config_file(path)
    msg = str(err.value)
    assert "\n" not in msg and str(path) in msg and f" line {line}:" in msg
    assert msg.endswith(f"fix the {'TOML' if name.endswith('toml') else 'JSON'} there")
    assert path.read_text() == text


def test_a_config_file_must_be_a_table_of_sections(tmp_path):
    (tmp_path / "c.json").write_text("[1, 2]")
    with pytest.raises(ConfigError, match="expected a table of sections"):
        load_config_file(tmp_path / "c.json")
    (tmp_path / "d.toml").write_bytes(b"name = '\xff'\n")
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_config_file(tmp_path / "d.toml")
