"""Reading a network's structure around its layers: the activation that follows
each layer and the eval-mode BatchNorm between them (from a ``torch.fx`` trace
when the model traces, else from forward hooks), and running a model on one
calibration batch.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from compactnn._modules import training_mode
from compactnn.init.inputs import is_foldable_norm

__all__ = ["call_model", "detect_activations", "detect_norms"]

_ACT_MODULES: dict[type, str] = {
    nn.ReLU: "relu", nn.GELU: "gelu", nn.SiLU: "silu", nn.Tanh: "tanh",
    nn.Sigmoid: "sigmoid", nn.Identity: "identity",
}
_ACT_FUNCTIONS: dict[Any, str] = {
    F.relu: "relu", torch.relu: "relu", torch.relu_: "relu", F.relu_: "relu",
    F.gelu: "gelu", F.silu: "silu", torch.tanh: "tanh", F.tanh: "tanh",
    torch.sigmoid: "sigmoid", F.sigmoid: "sigmoid",
}
_ACT_METHODS = {"relu": "relu", "relu_": "relu", "tanh": "tanh", "sigmoid": "sigmoid"}
# Modules that are the identity at inference and are looked through.
_TRANSPARENT = (nn.Dropout, nn.Identity)



def call_model(model: nn.Module, batch: Any) -> Any:
    """``model`` called on a calibration batch: a tensor, a tuple/list whose first
    item is the model input, or a dict of keyword arguments."""
    if isinstance(batch, Tensor):
        return model(batch)
    if isinstance(batch, Mapping):
        return model(**batch)
    if isinstance(batch, tuple | list):
        if not batch:
            raise ValueError("calibration: got an empty tuple/list batch")
        return model(batch[0])
    raise TypeError(f"calibration batches must be tensors, tuples/lists whose first item is "
                    f"the model input, or dicts of keyword arguments; got {type(batch).__name__}")


def _module_activation(mod: nn.Module) -> str | None:
    for cls, name in _ACT_MODULES.items():
        if type(mod) is cls:
            return name
    return None


def _fx_walk(model: nn.Module, names: list[str]
             ) -> dict[str, tuple[str, nn.Module | None]] | None:
    """For each named module, from a torch.fx trace (None if the model does not
    trace): the activation that follows it and the eval-mode BatchNorm between
    them, if any. A module whose output has several consumers gets
    ``("identity", None)``: only its linear output is shared by all of them."""
    try:
        import torch.fx

        graph = torch.fx.symbolic_trace(model).graph
    except Exception:  # noqa: BLE001 - any tracing failure means: fall back to hooks
        return None
    out: dict[str, tuple[str, nn.Module | None]] = {}
    nodes = {n.target: n for n in graph.nodes if n.op == "call_module"}
    for name in names:
        node = nodes.get(name)
        if node is None:
            return None  # called in a way the trace does not show: use hooks
        act, norm = "identity", None
        while len(node.users) == 1:
            user = next(iter(node.users))
            if user.op == "call_module":
                mod = model.get_submodule(user.target)
                if isinstance(mod, _TRANSPARENT):
                    node = user
                    continue
                if norm is None and is_foldable_norm(mod):  # conv -> BN -> act: see through the BN
                    node, norm = user, mod
                    continue
                act = _module_activation(mod) or "identity"
            elif user.op == "call_function":
                fn = user.target
                if fn in (F.dropout, operator.pos):
                    node = user
                    continue
                act = _ACT_FUNCTIONS.get(fn, "identity")
            elif user.op == "call_method" and isinstance(user.target, str):
                act = _ACT_METHODS.get(user.target, "identity")
            break
        out[name] = (act, norm)
    return out


def _fx_activations(model: nn.Module, names: list[str]) -> dict[str, str] | None:
    walk = _fx_walk(model, names)
    return None if walk is None else {name: act for name, (act, _) in walk.items()}


def detect_norms(model: nn.Module, names: list[str]) -> dict[str, nn.Module]:
    """The eval-mode BatchNorm that directly follows each named module (conv -> BN
    -> activation), from a ``torch.fx`` trace; names without one, or every name
    when the model does not trace, are left out. Its affine map is what
    :func:`compactnn.init.norm_affine` returns."""
    walk = _fx_walk(model, names)
    if walk is None:
        return {}
    return {name: norm for name, (_, norm) in walk.items() if norm is not None}




def _hook_activations(model: nn.Module, names: list[str], batch: Any) -> dict[str, str]:
    """Fallback: the leaf module executed next on a target's output tensor, if it
    is an activation module; else ``"identity"``."""
    modules = dict(model.named_modules())
    outputs: dict[str, Tensor] = {}
    found: dict[str, str] = {}
    handles = []

    def target_hook(name: str) -> Callable[..., None]:
        def hook(_m: nn.Module, _a: Any, out: Any) -> None:
            if isinstance(out, Tensor) and name not in outputs:
                outputs[name] = out
        return hook

    def leaf_hook(_m: nn.Module, args: tuple[Any, ...]) -> None:
        if not args or not isinstance(args[0], Tensor):
            return
        for name, out in outputs.items():
            if name not in found and args[0] is out:
                if isinstance(_m, _TRANSPARENT) and not isinstance(_m, nn.Identity):
                    continue
                found[name] = _module_activation(_m) or "identity"

    for name in names:
        handles.append(modules[name].register_forward_hook(target_hook(name)))
    for mod in modules.values():
        if not list(mod.children()) and mod is not model:
            handles.append(mod.register_forward_pre_hook(leaf_hook))
    try:
        with torch.no_grad():
            call_model(model, batch)
    finally:
        for h in handles:
            h.remove()
    return {name: found.get(name, "identity") for name in names}


def detect_activations(model: nn.Module, names: list[str], example: Any = None) -> dict[str, str]:
    """The activation that follows each named module: from a ``torch.fx`` trace of
    ``model`` when it traces, else from forward hooks on one call of ``model`` on
    ``example`` (the module run next on the layer's output tensor: ``nn.ReLU``,
    ``nn.GELU``, ``nn.SiLU``, ``nn.Tanh``, ``nn.Sigmoid``); ``"identity"`` when no
    activation follows directly or the output has other consumers. The fx path
    sees through one eval-mode BatchNorm (conv -> BN -> ReLU gives ``"relu"``;
    :func:`detect_norms` names that BatchNorm)."""
    acts = _fx_activations(model, names)
    if acts is not None:
        return acts
    if example is None:
        return {name: "identity" for name in names}
    with training_mode(model, False):
        return _hook_activations(model, names, example)
