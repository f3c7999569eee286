"""The registry of named initializers.

Initializers live in :mod:`compactnn.init` and register themselves here by
name, so that layers (below ``init`` in the import order) can resolve
``init="spectral"``. Each entry says whether the initializer is *data-aware*
(it takes calibration ``inputs=``) and whether it is *activation-aware* (it
also takes the ``activation=`` that follows the layer and the ``post_norm=``
between them). Model surgery reads these flags to decide what each initializer
gets, so the sets are never kept by hand elsewhere.

Signature of an initializer: ``fn(layer, weight=None, bias=None, **options)``,
modifying ``layer`` in place and returning it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from compactnn._checks import check_bool

__all__ = [
    "Initializer",
    "available_initializers",
    "get_initializer",
    "is_data_aware",
    "lookup_initializer",
    "register_initializer",
]


@dataclass(frozen=True)
class Initializer:
    """A registered initializer: its name, function and what calibration keywords
    it takes (``inputs=`` when ``data_aware``; ``activation=`` and ``post_norm=``
    too when ``activation_aware``)."""

    name: str
    fn: Callable[..., Any]
    data_aware: bool = False
    activation_aware: bool = False


_INITIALIZERS: dict[str, Initializer] = {}


def register_initializer(name: str, *, data_aware: bool = False,
                         activation_aware: bool = False
                         ) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator registering an initializer under ``name``; ``data_aware=True``
    when it takes calibration ``inputs=``, ``activation_aware=True`` when it also
    takes ``activation=`` and ``post_norm=``."""
    if not isinstance(name, str) or not name:
        raise TypeError(f"initializer name must be a non-empty str, got {name!r}")
    check_bool("data_aware", data_aware)
    check_bool("activation_aware", activation_aware)
    if activation_aware and not data_aware:
        raise ValueError(f"initializer {name!r}: activation_aware needs data_aware")

    def deco(fn: Callable[..., Any]) -> Callable[..., Any]:
        _INITIALIZERS[name] = Initializer(name, fn, data_aware, activation_aware)
        return fn

    return deco


def _entry(name: str) -> Initializer:
    if not isinstance(name, str) or name not in _INITIALIZERS:
        raise ValueError(f"unknown init={name!r}; available: {', '.join(sorted(_INITIALIZERS))}")
    return _INITIALIZERS[name]


def get_initializer(name: str) -> Callable[..., Any]:
    """Look up a registered initializer by name (``"default"``, ``"spectral"``, ...)."""
    return _entry(name).fn


def lookup_initializer(init: str | Callable[..., Any]) -> Initializer:
    """The registry entry of ``init`` (a registered name or function). A callable
    that is not registered is described by its own ``data_aware`` and
    ``activation_aware`` attributes (both false when absent)."""
    if isinstance(init, str):
        return _entry(init)
    if not callable(init):
        raise TypeError(f"init must be an initializer name or a callable, got "
                        f"{type(init).__name__}")
    for entry in _INITIALIZERS.values():
        if entry.fn is init:
            return entry
    data_aware = getattr(init, "data_aware", False) is True
    return Initializer(getattr(init, "__name__", repr(init)), init, data_aware,
                       data_aware and getattr(init, "activation_aware", False) is True)


def is_data_aware(init: str | Callable[..., Any]) -> bool:
    """Whether ``init`` (a registered name or function) takes calibration inputs."""
    return lookup_initializer(init).data_aware


def available_initializers(*, data_aware: bool | None = None) -> list[str]:
    """Names of the registered initializers; with ``data_aware`` given, only those
    whose flag equals it."""
    if data_aware is not None:
        check_bool("data_aware", data_aware)
    return sorted(n for n, e in _INITIALIZERS.items()
                  if data_aware is None or e.data_aware == data_aware)
