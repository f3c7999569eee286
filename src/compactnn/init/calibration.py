"""Calibration data for data-aware initialization: turning a layer's inputs
into matrix rows, capturing those inputs inside a model with hooks, detecting
the activation that follows a layer, and compressing a network layer by layer.

When a trained network is compressed, the objective of [LR-NL] is taken over
the activations that really reach each layer (METHODS.md, Sec. 4). Following
the sequential scheme of activation-aware methods (ASVD, SVD-LLM), the layers
are compressed in forward order and each one is fitted to the inputs produced
by the already-compressed layers before it, so errors do not compound
unnoticed.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from compactnn.lowrank import LowRankConv2d, LowRankLayer, LowRankLinear

__all__ = [
    "ACTIVATIONS",
    "DATA_AWARE_INITS",
    "activation_fn",
    "check_activation",
    "LayerInputs",
    "layer_inputs",
    "detect_activations",
    "detect_norms",
    "norm_affine",
    "compress_sequential",
]

#: Initializers that consume ``inputs=`` (calibration activations),
#: ``activation=`` and ``post_norm=`` keywords; ``factorize`` passes these only to them.
DATA_AWARE_INITS = frozenset({"nonlinear", "whitened", "lstsq"})


def _identity(z: Tensor) -> Tensor:
    return z


#: Activations the data-aware objective supports, by name.
ACTIVATIONS: dict[str, Callable[[Tensor], Tensor]] = {
    "identity": _identity,
    "relu": F.relu,
    "gelu": F.gelu,
    "silu": F.silu,
    "tanh": torch.tanh,
    "sigmoid": torch.sigmoid,
}

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


def check_activation(activation: str | None) -> str:
    """Validate an activation name (``None`` means ``"identity"``)."""
    if activation is None:
        return "identity"
    if not isinstance(activation, str) or activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, "
                         f"got activation={activation!r}")
    return activation


def activation_fn(activation: str | None) -> Callable[[Tensor], Tensor]:
    """The function of a supported activation name."""
    return ACTIVATIONS[check_activation(activation)]


# -- a layer's inputs as matrix rows -------------------------------------------------
def _first_tensor(item: Any, what: str) -> Tensor:
    if isinstance(item, tuple | list):
        if not item:
            raise ValueError(f"{what}: got an empty tuple/list batch")
        item = item[0]
    if not isinstance(item, Tensor):
        raise TypeError(f"{what}: batches must be tensors (or tuples/lists whose first "
                        f"item is a tensor), got {type(item).__name__}")
    return item


def _conv_padding(layer: LowRankConv2d) -> tuple[int, int, int, int]:
    """(left, right, top, bottom) padding of the dense convolution, for ``F.pad``."""
    if layer.padding == "valid":
        return (0, 0, 0, 0)
    if layer.padding == "same":
        (kh, kw), (dh, dw) = layer.kernel_size, layer.dilation
        th, tw = dh * (kh - 1), dw * (kw - 1)
        return (tw // 2, tw - tw // 2, th // 2, th - th // 2)
    ph, pw = layer.padding
    return (pw, pw, ph, ph)


_PAD_MODES = {"zeros": "constant", "reflect": "reflect", "replicate": "replicate",
              "circular": "circular"}


def check_data_layer(layer: LowRankLayer) -> None:
    """Raise a clear error for layers whose calibration inputs cannot be read as
    rows of the matrix view (the spatial conv scheme, grouped convolutions)."""
    if isinstance(layer, LowRankLinear):
        return
    if isinstance(layer, LowRankConv2d):
        bad = []
        if layer.scheme != "channel":
            bad.append(f"scheme={layer.scheme!r} (its matrix rows are not output channels)")
        if layer.groups != 1:
            bad.append(f"groups={layer.groups}")
        if bad:
            raise ValueError("data-aware initialization supports LowRankConv2d with "
                             "scheme='channel' and groups=1 only; got " + ", ".join(bad))
        return
    raise TypeError("data-aware initialization supports LowRankLinear and LowRankConv2d, "
                    f"got {type(layer).__name__}")


class _FirstPassCache:
    """A re-iterable of tensors produced by ``_stream()``: the first full pass is
    kept when it fits in ``cache_bytes`` and replayed on later passes; beyond that
    size every pass streams again (memory stays bounded)."""

    cache_bytes: int
    _cache: list[Tensor] | None = None

    def _stream(self) -> Iterator[Tensor]:
        raise NotImplementedError

    def __iter__(self) -> Iterator[Tensor]:
        if self._cache is not None:
            yield from self._cache
            return
        kept: list[Tensor] | None = []
        size = 0
        for x in self._stream():
            if kept is not None:
                size += x.numel() * x.element_size()
                if size <= self.cache_bytes:
                    kept.append(x)
                else:
                    kept = None
            yield x
        self._cache = kept  # only reached after a full pass


class LayerInputs(_FirstPassCache):
    """Re-iterable view of calibration inputs as matrix rows ``(k, n)`` of a layer's
    matrix view: ``n = in_features`` for a Linear (leading dims flattened), the
    unfolded ``in * kh * kw`` patches for a channel-scheme convolution (a random
    subsample of at most ``max_patches`` patch rows per batch, the same on every
    pass, to bound memory).

    ``inputs`` is a tensor (split into ``batch_size`` rows) or an iterable of
    batches (tensors, or tuples/lists whose first item is the tensor). A one-shot
    iterator is consumed once and its batches kept in memory; a re-iterable
    (a list, a ``DataLoader``) is streamed on every pass. Every batch is checked:
    finite values and the right feature size, else ``ValueError``. The rows of
    the first full pass are kept when they fit in ``cache_bytes``, so solvers that
    make many passes do not redo the unfolding and the checks.
    """

    def __init__(self, layer: LowRankLayer, inputs: Tensor | Iterable[Any], *,
                 batch_size: int = 4096, max_patches: int = 4096, seed: int = 0,
                 cache_bytes: int = 1 << 28) -> None:
        check_data_layer(layer)
        if isinstance(inputs, Mapping) or isinstance(inputs, str | bytes):
            raise TypeError(f"inputs must be a tensor or an iterable of batches, got "
                            f"{type(inputs).__name__}")
        if not isinstance(inputs, Tensor):
            if not isinstance(inputs, Iterable):
                raise TypeError(f"inputs must be a tensor or an iterable of batches, got "
                                f"{type(inputs).__name__}")
            if iter(inputs) is inputs:  # a one-shot iterator: keep its batches
                inputs = list(inputs)
        for name, value in (("batch_size", batch_size), ("max_patches", max_patches)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {name}={value!r}")
        self.layer = layer
        self.inputs = inputs
        self.batch_size = batch_size
        self.max_patches = max_patches
        self.seed = seed
        self.features = layer.matrix_shape[2]
        self.cache_bytes = cache_bytes

    def _raw(self) -> Iterator[Tensor]:
        if isinstance(self.inputs, Tensor):
            x = self.inputs
            if x.dim() == 0 or x.shape[0] == 0:
                return
            step = self.batch_size
            if isinstance(self.layer, LowRankConv2d) and x.dim() == 4:
                step = max(1, step // (x.shape[-2] * x.shape[-1]))  # images: ~batch_size pixels
            yield from x.split(step)
        else:
            for item in self.inputs:
                yield _first_tensor(item, "inputs")

    def _rows(self, x: Tensor, gen: torch.Generator) -> Tensor:
        layer = self.layer
        if isinstance(layer, LowRankLinear):
            if x.dim() == 0 or x.shape[-1] != self.features:
                raise ValueError(f"inputs have feature size {tuple(x.shape)[-1:] or ()} but "
                                 f"the layer expects in_features={self.features} "
                                 f"(input shape {tuple(x.shape)})")
            return x.reshape(-1, self.features)
        assert isinstance(layer, LowRankConv2d)
        if x.dim() == 3:
            x = x.unsqueeze(0)
        if x.dim() != 4 or x.shape[1] != layer.in_channels:
            raise ValueError(f"inputs of shape {tuple(x.shape)} do not fit the convolution: "
                             f"expected (N, {layer.in_channels}, H, W)")
        pad = _conv_padding(layer)
        if any(pad):
            x = F.pad(x, pad, mode=_PAD_MODES[layer.padding_mode])
        if x.shape[-2] < layer.dilation[0] * (layer.kernel_size[0] - 1) + 1 or \
                x.shape[-1] < layer.dilation[1] * (layer.kernel_size[1] - 1) + 1:
            raise ValueError(f"inputs of spatial size {tuple(x.shape[-2:])} (after padding) are "
                             f"smaller than the kernel {layer.kernel_size}")
        cols = F.unfold(x, layer.kernel_size, dilation=layer.dilation, stride=layer.stride)
        rows = cols.transpose(1, 2).reshape(-1, cols.shape[1])
        if rows.shape[0] > self.max_patches:
            idx = torch.randperm(rows.shape[0], generator=gen)[: self.max_patches]
            rows = rows[idx.to(rows.device)]
        return rows

    def _stream(self) -> Iterator[Tensor]:
        gen = torch.Generator().manual_seed(self.seed)
        for i, x in enumerate(self._raw()):
            if not torch.is_floating_point(x):
                raise TypeError(f"inputs batch {i} has dtype {x.dtype}; expected floats")
            if not torch.isfinite(x).all():
                raise ValueError(f"inputs batch {i} contains non-finite values (NaN or inf)")
            rows = self._rows(x, gen)
            if rows.shape[0]:
                yield rows


def layer_inputs(layer: LowRankLayer, inputs: Tensor | Iterable[Any] | LayerInputs,
                 **kwargs: Any) -> LayerInputs:
    """``inputs`` as a :class:`LayerInputs` of ``layer`` (unchanged if it already is)."""
    if isinstance(inputs, LayerInputs):
        return inputs
    return LayerInputs(layer, inputs, **kwargs)


# -- running a model on calibration batches ------------------------------------------
class _Stop(Exception):
    """Raised inside a hook to end a forward pass early."""


def _call(model: nn.Module, batch: Any) -> Any:
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


def _tensors(batch: Any) -> list[Tensor]:
    if isinstance(batch, Tensor):
        return [batch]
    if isinstance(batch, Mapping):
        return [v for v in batch.values() if isinstance(v, Tensor)]
    if isinstance(batch, tuple | list) and batch and isinstance(batch[0], Tensor):
        return [batch[0]]
    return []


class _Calibration:
    """Calibration data as a re-iterable of model-call batches, checked on first use."""

    def __init__(self, calibration: Any, batch_size: int = 512) -> None:
        if calibration is None:
            raise ValueError("calibration data is required (a tensor or an iterable of batches)")
        if isinstance(calibration, Tensor):
            if calibration.dim() == 0 or calibration.shape[0] == 0:
                raise ValueError(f"calibration tensor is empty (shape {tuple(calibration.shape)})")
            self.batches: Any = list(calibration.split(batch_size))
        elif isinstance(calibration, Mapping):
            self.batches = [calibration]
        elif isinstance(calibration, Iterable) and not isinstance(calibration, str | bytes):
            self.batches = list(calibration) if iter(calibration) is calibration else calibration
        else:
            raise TypeError("calibration must be a tensor or an iterable of batches, got "
                            f"{type(calibration).__name__}")

    def check(self) -> None:
        """One pass over the data: non-empty, every tensor finite."""
        n = 0
        for i, batch in enumerate(self.batches):
            for t in _tensors(batch):
                if t.numel() == 0:
                    raise ValueError(f"calibration batch {i} is empty (shape {tuple(t.shape)})")
                if torch.is_floating_point(t) and not torch.isfinite(t).all():
                    raise ValueError(f"calibration batch {i} contains non-finite values "
                                     "(NaN or inf)")
            n += 1
        if n == 0:
            raise ValueError("calibration data is empty (no batches)")

    def first(self) -> Any:
        return next(iter(self.batches))

    def __iter__(self) -> Iterator[Any]:
        return iter(self.batches)


class _CapturedInputs(_FirstPassCache):
    """Re-iterable inputs of one module of ``model``: each pass runs the model on
    the calibration batches and yields what reaches ``module`` (every call of it),
    stopping each forward once the module has seen its last call. The first full
    pass is cached when it fits in ``cache_bytes``; otherwise every pass streams."""

    def __init__(self, model: nn.Module, module: nn.Module, calls: int, data: _Calibration,
                 cache_bytes: int) -> None:
        self.model, self.module, self.calls, self.data = model, module, calls, data
        self.cache_bytes = cache_bytes

    def _stream(self) -> Iterator[Tensor]:
        got: list[Tensor] = []

        def hook(_mod: nn.Module, args: tuple[Any, ...]) -> None:
            got.append(_first_tensor(args, "captured layer input").detach().clone())
            if len(got) >= self.calls:
                raise _Stop

        handle = self.module.register_forward_pre_hook(hook)
        try:
            for batch in self.data:
                got.clear()
                try:
                    with torch.no_grad():
                        _call(self.model, batch)
                except _Stop:
                    pass
                yield from list(got)
        finally:
            handle.remove()


# -- activation detection ------------------------------------------------------------
def _module_activation(mod: nn.Module) -> str | None:
    for cls, name in _ACT_MODULES.items():
        if type(mod) is cls:
            return name
    return None


def _folds(mod: nn.Module) -> bool:
    """A BatchNorm that is a fixed per-channel affine map in eval mode."""
    return isinstance(mod, nn.modules.batchnorm._BatchNorm) and mod.track_running_stats \
        and mod.running_mean is not None and mod.running_var is not None


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
                if norm is None and _folds(mod):  # conv -> BN -> act: see through the BN
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
    :func:`norm_affine` returns."""
    walk = _fx_walk(model, names)
    if walk is None:
        return {}
    return {name: norm for name, (_, norm) in walk.items() if norm is not None}


def norm_affine(norm: nn.Module | tuple[Tensor, Tensor], features: int
                ) -> tuple[Tensor, Tensor]:
    """``(a, d)`` with ``norm(z) = a * z + d`` per channel: an eval-mode BatchNorm
    (``a = gamma / sqrt(running_var + eps)``, ``d = beta - a * running_mean``) or a
    ``(scale, shift)`` pair, in float64, checked against ``features`` channels."""
    if isinstance(norm, nn.Module):
        if not _folds(norm):
            raise ValueError(f"post_norm must be a BatchNorm with running statistics, got "
                             f"{type(norm).__name__}")
        var, mean = norm.running_var.detach().double(), norm.running_mean.detach().double()
        a = 1.0 / (var + norm.eps).sqrt()
        d = -a * mean
        if norm.weight is not None:
            a = a * norm.weight.detach().double()
            d = d * norm.weight.detach().double()
        if norm.bias is not None:
            d = d + norm.bias.detach().double()
    elif isinstance(norm, tuple | list) and len(norm) == 2 and all(
            isinstance(t, Tensor) for t in norm):
        a, d = (t.detach().double().reshape(-1) for t in norm)
    else:
        raise TypeError("post_norm must be a BatchNorm module or a (scale, shift) pair of "
                        f"tensors, got {type(norm).__name__}")
    if a.numel() != features or d.numel() != features:
        raise ValueError(f"post_norm has {a.numel()} channels, the layer has {features} "
                         "outputs")
    if not (torch.isfinite(a).all() and torch.isfinite(d).all()):
        raise ValueError("post_norm's scale or shift is not finite")
    return a, d


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
            _call(model, batch)
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
    was_training = model.training
    model.eval()
    try:
        return _hook_activations(model, names, example)
    finally:
        model.train(was_training)


def _execution_order(model: nn.Module, names: list[str], batch: Any) -> tuple[list[str],
                                                                               dict[str, int]]:
    """Targets in the order of their first call on ``batch``, and calls per forward."""
    modules = dict(model.named_modules())
    order: list[str] = []
    calls: dict[str, int] = dict.fromkeys(names, 0)
    handles = []
    for name in names:
        def hook(_m: nn.Module, _a: Any, name: str = name) -> None:
            if calls[name] == 0:
                order.append(name)
            calls[name] += 1
        handles.append(modules[name].register_forward_pre_hook(hook))
    try:
        with torch.no_grad():
            _call(model, batch)
    except Exception as err:
        raise ValueError(f"the model failed on the first calibration batch: {err}") from err
    finally:
        for h in handles:
            h.remove()
    missing = [n for n in names if calls[n] == 0]
    if missing:
        raise ValueError(f"target modules {missing} are never called when the model runs on "
                         "the calibration data")
    return order, calls


# -- sequential compression ----------------------------------------------------------
def _places(model: nn.Module, module: nn.Module) -> list[tuple[nn.Module, str]]:
    """Every ``(parent, attribute)`` under which ``module`` sits in ``model``."""
    out = []
    for name, mod in model.named_modules(remove_duplicate=False):
        if mod is module and name:
            parent_name, _, child = name.rpartition(".")
            out.append(((model.get_submodule(parent_name) if parent_name else model), child))
    return out


def compress_sequential(
    model: nn.Module,
    targets: list[tuple[str, Callable[..., nn.Module]]],
    calibration: Any,
    activations: dict[str, str] | None = None,
    progress: bool = False,
    cache_bytes: int = 1 << 30,
    fold_norms: bool = True,
) -> None:
    """Replace each target module of ``model`` in place by ``build(dense, inputs=...,
    activation=...)``, layer by layer in forward execution order, each fitted to
    the inputs that reach it through the already-compressed layers before it.

    Args:
        model: the network, modified in place.
        targets: ``(qualified module name, build)`` pairs; ``build(dense_module,
            inputs=..., activation=...)`` (plus ``post_norm=...`` when ``fold_norms``
            found a BatchNorm after the module) returns the replacement module. ``inputs``
            is a re-iterable of the module's captured input batches.
        calibration: a tensor (split into batches) or an iterable of batches: tensors,
            tuples/lists whose first item is the model input, or dicts passed as
            ``**kwargs``.
        activations: activation name per module name, overriding detection
            (:func:`detect_activations`); names from :data:`ACTIVATIONS`.
        progress: show a progress bar (tqdm) over the layers.
        fold_norms: pass the eval-mode BatchNorm that directly follows a target
            (:func:`detect_norms`) to its build as ``post_norm=``, so the fit matches
            ``act(BN(layer(x)))`` rather than ``act(layer(x))``.
        cache_bytes: a layer's captured inputs are kept in memory up to this size;
            beyond it they are recomputed on every pass (memory stays bounded).

    Everything is checked before the model changes (target names, activation
    names, finite and non-empty calibration data, that the model runs on it); if
    a build fails, the modules already replaced are put back, so on any error
    the model is left as it was.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    modules = dict(model.named_modules())
    names: list[str] = []
    builds: dict[str, Callable[..., nn.Module]] = {}
    for item in targets:
        if not (isinstance(item, tuple | list) and len(item) == 2 and callable(item[1])):
            raise TypeError(f"targets must be (name, build) pairs, got {item!r}")
        name, build = item
        if name not in modules or not name:
            raise ValueError(f"target {name!r} is not a submodule of the model")
        if name in builds:
            raise ValueError(f"target {name!r} is listed twice")
        names.append(name)
        builds[name] = build
    given = dict(activations or {})
    for name, act in given.items():
        if name not in builds:
            raise ValueError(f"activations names {name!r}, which is not a target")
        check_activation(act)
    if not names:
        return
    data = _Calibration(calibration)
    data.check()

    was_training = model.training
    model.eval()
    swapped: list[tuple[nn.Module, str, nn.Module]] = []
    try:
        order, calls = _execution_order(model, names, data.first())
        detected = detect_activations(model, [n for n in order if n not in given],
                                      data.first())
        acts = {**detected, **given}
        norms = detect_norms(model, order) if fold_norms else {}
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(order), desc="compress", unit="layer")
        for name in order:
            dense = model.get_submodule(name)
            inputs = _CapturedInputs(model, dense, calls[name], data, cache_bytes)
            extra = {"post_norm": norms[name]} if name in norms else {}
            new = builds[name](dense, inputs=inputs, activation=acts[name], **extra)
            if not isinstance(new, nn.Module):
                raise TypeError(f"build for {name!r} returned {type(new).__name__}, "
                                "not an nn.Module")
            for parent, child in _places(model, dense):  # every name it is registered under
                setattr(parent, child, new)
                swapped.append((parent, child, dense))
            if bar is not None:
                bar.set_postfix_str(f"{name} ({acts[name]})")
                bar.update()
        if bar is not None:
            bar.close()
    except BaseException:
        for parent, child, dense in reversed(swapped):
            setattr(parent, child, dense)
        raise
    finally:
        model.train(was_training)
