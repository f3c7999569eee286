"""Choosing the layers that model surgery (and the sparse baselines) act on.

Layers are chosen by name patterns as PEFT chooses its target modules: a regex
string matched against whole qualified module names, or a list of names each
matching a module whose name equals it or ends with ``"." + name``.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable, Sequence

from torch import nn

from compactnn._checks import check_module
from compactnn.lowrank import is_factorizable

__all__ = ["Patterns", "dense_first_last_exclude", "layer_fates", "select_layers"]

#: Layer types that look like candidates but have no low-rank form here; the
#: factorize report names them so a user sees why they were left alone.
_UNSUPPORTED = (nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d,
                nn.ConvTranspose3d, nn.Bilinear)

Patterns = str | Sequence[str] | None


def _matcher(name: str, patterns: Patterns) -> list[tuple[str, Callable[[str], bool]]]:
    if patterns is None:
        return []
    if isinstance(patterns, str):
        try:
            rx = re.compile(patterns)
        except re.error as err:
            raise ValueError(f"{name}={patterns!r} is not a valid regex: {err}") from None
        return [(patterns, lambda n: rx.fullmatch(n) is not None)]
    if isinstance(patterns, bytes) or not isinstance(patterns, Sequence) \
            or not all(isinstance(p, str) for p in patterns):
        raise TypeError(f"{name} must be a regex string or a list of names, got {patterns!r}")
    return [(p, lambda n, p=p: n == p or n.endswith("." + p)) for p in patterns]


def _depth_warning(pat: str, hits: list[str], what: str) -> None:
    depths = sorted({n.count(".") for n in hits})
    if len(depths) > 1:
        warnings.warn(f"{what} pattern {pat!r} matched modules at {len(depths)} depths ("
                      f"{', '.join(hits[:4])}{', ...' if len(hits) > 4 else ''}); a bare name "
                      "matches every module whose name ends with it. Use a dotted name or a "
                      "regex to pick one", UserWarning, stacklevel=4)


def layer_fates(model: nn.Module, include: Patterns = None, exclude: Patterns = None
                ) -> tuple[list[str], dict[str, str]]:
    """``(chosen, fates)``: the names :func:`select_layers` chooses, and for every other
    layer that a user might expect to be compressed (every Linear/Conv layer, Hugging
    Face Conv1D included) why it was not: excluded by which pattern, not matched by
    ``include``, inside ``nn.MultiheadAttention``, or an unsupported type."""
    chosen = select_layers(model, include, exclude, warn=False, warn_depths=True)
    fates: dict[str, str] = {}
    inc = _matcher("include", include)
    exc = _matcher("exclude", exclude)
    mha = {f"{n}.{c}" for n, m in model.named_modules() if isinstance(m, nn.MultiheadAttention)
           for c, _ in m.named_children()}
    for name, mod in model.named_modules():
        if not name or name in chosen:
            continue
        if isinstance(mod, _UNSUPPORTED):
            fates[name] = f"unsupported type {type(mod).__name__}: kept dense"
        elif name in mha and isinstance(mod, nn.Linear):
            fates[name] = "inside nn.MultiheadAttention (its forward reads .weight): kept dense"
        elif not is_factorizable(mod):
            continue
        elif inc and not any(match(name) for _, match in inc):
            fates[name] = "not matched by include: kept dense"
        else:
            pats = [pat for pat, match in exc if match(name)]
            fates[name] = (f"excluded by pattern {pats[0]!r}" if pats
                           else "not selected: kept dense")
    return chosen, fates


def select_layers(model: nn.Module, include: Patterns = None, exclude: Patterns = None,
                  *, warn: bool = True, warn_depths: bool = False) -> list[str]:
    """Qualified names of the ``nn.Linear``/``nn.Conv2d`` modules of ``model`` chosen
    by ``include`` (default: all of them) minus ``exclude``, in registration order.

    A pattern that matches no module is a ``ValueError`` (a typo would otherwise
    select silently nothing or everything); an ``include`` pattern that matches
    only modules that cannot be factorized is a ``TypeError``. With ``warn_depths``, a
    pattern that matches modules at more than one depth warns. Linear layers
    inside ``nn.MultiheadAttention`` are never chosen: its functional forward
    reads their ``.weight`` directly. With ``warn``, an empty selection warns.
    """
    check_module("model", model)
    names = {n: m for n, m in model.named_modules() if n}
    protected = {f"{n}.{c}" for n, m in names.items() if isinstance(m, nn.MultiheadAttention)
                 for c, _ in m.named_children()}
    if include is None:
        chosen = [n for n, m in names.items() if is_factorizable(m)]
    else:
        chosen = []
        for pat, match in _matcher("include", include):
            hits = [n for n in names if match(n)]
            if not hits:
                raise ValueError(f"include pattern {pat!r} matched no module")
            if warn_depths and not isinstance(include, str):
                _depth_warning(pat, hits, "include")
            good = [n for n in hits if is_factorizable(names[n])]
            if not good:
                kinds = sorted({type(names[n]).__name__ for n in hits})
                raise TypeError(f"include pattern {pat!r} matched only modules that cannot "
                                f"be factorized ({', '.join(kinds)}); only nn.Linear, "
                                "nn.Conv2d and Hugging Face Conv1D can")
            chosen += [n for n in good if n not in chosen]
    for pat, match in _matcher("exclude", exclude):
        hits = [n for n in names if match(n)]
        if not hits:
            raise ValueError(f"exclude pattern {pat!r} matched no module")
        if warn_depths and not isinstance(exclude, str):
            _depth_warning(pat, hits, "exclude")
        chosen = [n for n in chosen if not match(n)]
    chosen = [n for n in chosen if n not in protected]
    if warn and not chosen:
        why = ("include/exclude leave no nn.Linear or nn.Conv2d layer"
               if include is not None or exclude is not None
               else "the model has no nn.Linear or nn.Conv2d layer outside attention")
        warnings.warn(f"nothing selected: {why}", UserWarning, stacklevel=3)
    return chosen


def dense_first_last_exclude(model: nn.Module) -> list[str]:
    """Names of the first and the last ``nn.Linear``/``nn.Conv2d`` of ``model`` in
    module registration order (``["stem", "fc"]`` for the ResNet of
    :mod:`compactnn.models`, ``["layers.0", "head"]`` for its MLP): pass them as
    ``exclude=`` to ``factorize`` or to the sparse pruners to keep the first and
    last layers dense, as is customary. Call it on the dense model.
    Registration order is execution order for the models of this package;
    check it for others."""
    check_module("model", model)
    names = [n for n, m in model.named_modules() if is_factorizable(m)]
    if not names:
        raise ValueError("model has no nn.Linear or nn.Conv2d layer")
    return list(dict.fromkeys([names[0], names[-1]]))
