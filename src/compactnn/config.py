"""Typed configurations: dataclasses filled from a TOML/JSON file and
``section.key=value`` command-line overrides, validated strictly.

Unknown keys, values of the wrong type and choices outside a ``Literal`` are
rejected with one line naming the key, the value and what was expected,
before any work starts.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import re
import tomllib
import types
from pathlib import Path
from typing import Any, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

__all__ = ["ConfigError", "build_config", "config_to_dict", "finite", "load_config_file",
           "parse_overrides", "require"]

T = TypeVar("T")


class ConfigError(ValueError):
    """A configuration key or value that is not valid."""


def require(checks: list[tuple[bool, str]]) -> None:
    """Raise :class:`ConfigError` with the message of the first failed check
    (``validate`` methods list their ``(condition, message)`` pairs)."""
    for ok, msg in checks:
        if not ok:
            raise ConfigError(msg)


def finite(value: float | None, low: float = -math.inf, high: float = math.inf, *,
           low_open: bool = False, high_open: bool = False) -> bool:
    """``value`` is a finite number in the range (``None`` is not)."""
    if value is None or not math.isfinite(value):
        return False
    above = value > low if low_open else value >= low
    below = value < high if high_open else value <= high
    return above and below


def _suggest(key: str, options: list[str]) -> str:
    close = difflib.get_close_matches(key, options, n=1)
    return f" (did you mean {close[0]!r}?)" if close else f"; valid keys: {', '.join(options)}"


def _type_name(tp: Any) -> str:
    if get_origin(tp) is Literal:
        return " | ".join(repr(a) for a in get_args(tp))
    return getattr(tp, "__name__", str(tp)).replace("typing.", "")


def _parse_list(path: str, text: str) -> list[Any]:
    """A list from the command line: JSON (``["a", "b"]``), bare names in brackets
    (``[a, b]``, what a shell leaves of ``'["a"]'`` typed unquoted) or ``a,b``."""
    text = text.strip()
    if not text.startswith("["):
        return [v.strip() for v in text.split(",") if v.strip()]
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        inner = text[1:-1] if text.endswith("]") else None
        if inner is None or any(c in inner for c in "[]{}\\"):
            raise ConfigError(f"{path}={text!r}: expected a list such as [a,b] or a,b "
                              f"(or JSON in single quotes: '{path}=[\"a\", \"b\"]')"
                              ) from None
        value = [v.strip().strip("'\"") for v in inner.split(",") if v.strip()]
    if not isinstance(value, list):
        raise ConfigError(f"{path}={text!r}: expected a list")
    return value


def _coerce(path: str, value: Any, tp: Any) -> Any:
    """Check ``value`` against type ``tp`` (converting strings from the command
    line and ints where floats are expected); raise ConfigError otherwise."""
    origin = get_origin(tp)
    if origin in (Union, types.UnionType):
        options = get_args(tp)
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            if type(None) in options:
                return None
        for opt in options:
            if opt is type(None):
                continue
            try:
                return _coerce(path, value, opt)
            except ConfigError:
                continue
        expected = " or ".join(_type_name(o) for o in options)
        raise ConfigError(f"{path}={value!r}: expected {expected}")
    if origin is Literal:
        choices = get_args(tp)
        if value in choices:
            return value
        raise ConfigError(f"{path}={value!r}: expected one of {', '.join(map(repr, choices))}")
    if origin in (list, tuple):
        (item,) = get_args(tp)[:1] or (Any,)
        if isinstance(value, str):
            value = _parse_list(path, value)
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{path}={value!r}: expected a list")
        items = [_coerce(f"{path}[{i}]", v, item) for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        raise ConfigError(f"{path}={value!r}: expected true or false")
    if tp is int or tp is float:
        # an int field takes only ints (1.5 is not silently truncated); a float field takes both
        accepted = int if tp is int else int | float
        if isinstance(value, accepted) and not isinstance(value, bool):
            return tp(value)
        if isinstance(value, str):
            try:
                return tp(value)
            except ValueError:
                pass
        raise ConfigError(f"{path}={value!r}: expected "
                          f"{'an integer' if tp is int else 'a number'}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{path}={value!r}: expected a string")
    if tp is Any:
        return value
    raise ConfigError(f"{path}: unsupported field type {tp!r}")


def build_config(cls: type[T], data: dict[str, Any] | None = None, prefix: str = "") -> T:
    """Instantiate dataclass ``cls`` from a (nested) dict, validating every key and
    value; nested dataclass fields take nested dicts."""
    data = dict(data or {})
    hints = get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = [k for k in data if k not in fields]
    if unknown:
        raise ConfigError(f"unknown config key {prefix + unknown[0]!r}"
                          + _suggest(unknown[0], list(fields)))
    kwargs = {}
    for name, value in data.items():
        tp = hints[name]
        path = prefix + name
        if dataclasses.is_dataclass(tp):
            if not isinstance(value, dict):
                raise ConfigError(f"{path}: expected a section (table), got {value!r}")
            kwargs[name] = build_config(tp, value, prefix=path + ".")
        else:
            kwargs[name] = _coerce(path, value, tp)
    obj = cls(**kwargs)
    validate = getattr(obj, "validate", None)
    if callable(validate):
        validate()
    return obj


def config_to_dict(cfg: Any) -> dict[str, Any]:
    """A dataclass config as a JSON-serializable nested dict."""
    return json.loads(json.dumps(dataclasses.asdict(cfg)))


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Read a ``.toml`` or ``.json`` config file into a dict."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {str(p)!r} does not exist")
    if p.suffix not in (".toml", ".json"):
        raise ConfigError(f"config file {str(p)!r}: expected a .toml or .json file")
    try:
        text = p.read_bytes().decode("utf-8")
        data = tomllib.loads(text) if p.suffix == ".toml" else json.loads(text)
    except UnicodeDecodeError as e:
        raise ConfigError(f"config file {str(p)!r} is not UTF-8 text (byte {e.start}); "
                          "save it as UTF-8") from None
    except json.JSONDecodeError as e:
        raise ConfigError(f"config file {str(p)!r} line {e.lineno}: {e.msg} (column "
                          f"{e.colno}); fix the JSON there") from None
    except tomllib.TOMLDecodeError as e:
        # the message ends "(at line L, column C)" (tomllib has no lineno before 3.14)
        found = re.search(r"\(at line (\d+), column (\d+)\)", str(e))
        msg = re.sub(r"\s*\(at (line \d+, column \d+|end of document)\)", "", str(e))
        line = found[1] if found else str(text.count("\n") + 1)  # else: at its end
        col = f" (column {found[2]})" if found else ""
        raise ConfigError(f"config file {str(p)!r} line {line}: {msg}{col}; fix the TOML "
                          "there") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {str(p)!r}: expected a table of sections at the top, "
                          f"got {type(data).__name__}")
    return data


def parse_overrides(overrides: list[str], base: dict[str, Any] | None = None) -> dict[str, Any]:
    """Merge ``section.key=value`` strings into a nested dict (values stay strings
    and are typed by :func:`build_config`)."""
    out = json.loads(json.dumps(base or {}))
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r}: expected key=value (e.g. optim.lr=0.1)")
        key, value = item.split("=", 1)
        node = out
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: {part!r} is not a section")
        node[parts[-1]] = value
    return out

