"""Sequential compression: replace a network's layers one at a time, in forward
execution order, each fitted to the inputs that reach it through the
already-compressed layers before it.

Following the sequential scheme of activation-aware methods (ASVD, SVD-LLM),
errors of earlier layers are then seen, and compensated, by later ones instead
of compounding unnoticed. The swap is all-or-nothing: on any error the model
is left as it was.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from compactnn._checks import check_bool, check_int, check_module
from compactnn._modules import replace_module, restore_modes, save_modes
from compactnn.init.inputs import FirstPassCache, check_activation, first_tensor
from compactnn.layer_progress import LayerProgress, calibration_cost
from compactnn.lowrank import dense_matrix_shape
from compactnn.surgery.detect import call_model, detect_activations, detect_norms

__all__ = ["CalibrationData", "StopForward", "compress_sequential"]


class StopForward(Exception):
    """Raised inside a hook to end a forward pass early."""




def _tensors(batch: Any) -> list[Tensor]:
    if isinstance(batch, Tensor):
        return [batch]
    if isinstance(batch, Mapping):
        return [v for v in batch.values() if isinstance(v, Tensor)]
    if isinstance(batch, tuple | list) and batch and isinstance(batch[0], Tensor):
        return [batch[0]]
    return []


class CalibrationData:
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
                if t.device.type == "meta":
                    raise ValueError(f"calibration batch {i} is a meta tensor (it holds no "
                                     "values)")
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


class _CapturedInputs(FirstPassCache):
    """Re-iterable inputs of one module of ``model``: each pass runs the model on
    the calibration batches and yields what reaches ``module`` (every call of it),
    stopping each forward once the module has seen its last call. The first full
    pass is cached when it fits in ``cache_bytes``; otherwise every pass streams."""

    def __init__(self, model: nn.Module, module: nn.Module, calls: int, data: CalibrationData,
                 cache_bytes: int) -> None:
        self.model, self.module, self.calls, self.data = model, module, calls, data
        self.cache_bytes = cache_bytes

    def _stream(self) -> Iterator[Tensor]:
        got: list[Tensor] = []

        def hook(_mod: nn.Module, args: tuple[Any, ...]) -> None:
            got.append(first_tensor(args, "captured layer input").detach().clone())
            if len(got) >= self.calls:
                raise StopForward

        handle = self.module.register_forward_pre_hook(hook)
        try:
            for batch in self.data:
                got.clear()
                try:
                    with torch.no_grad():
                        call_model(self.model, batch)
                except StopForward:
                    pass
                yield from list(got)
        finally:
            handle.remove()



def _layer_cost(module: nn.Module, batch: Any) -> float:
    """The relative cost of calibrating ``module`` (:func:`calibration_cost`), its rows
    taken as the first batch's samples times the module's output positions, a guess
    that only has to rank layers against each other."""
    try:
        _, m, n = dense_matrix_shape(module)
    except (TypeError, ValueError):
        return 1.0
    first = batch if isinstance(batch, Tensor) else next(iter(_tensors(batch)), None)
    rows = 1 if first is None or first.dim() == 0 else first.shape[0]
    return calibration_cost(n, m, max(rows, 1))


def _dense_inputs(model: nn.Module, names: list[str], data: CalibrationData
                  ) -> dict[str, list[Tensor]]:
    """Every input batch of every named module in the (still dense) model, one pass."""
    got: dict[str, list[Tensor]] = {n: [] for n in names}
    handles = []
    for name in names:
        def hook(_m: nn.Module, args: tuple[Any, ...], name: str = name) -> None:
            got[name].append(first_tensor(args, "captured layer input").detach().clone())
        handles.append(model.get_submodule(name).register_forward_pre_hook(hook))
    try:
        with torch.no_grad():
            for batch in data:
                call_model(model, batch)
    finally:
        for h in handles:
            h.remove()
    return got


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
            call_model(model, batch)
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



def compress_sequential(
    model: nn.Module,
    targets: list[tuple[str, Callable[..., nn.Module]]],
    calibration: Any,
    activations: dict[str, str] | None = None,
    progress: bool | None = False,
    cache_bytes: int = 1 << 30,
    fold_norms: bool = True,
    sequential: bool = True,
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
            (:func:`detect_activations`); names from :data:`compactnn.init.ACTIVATIONS`.
        progress: show a progress bar over the layers, weighted by each layer's cost,
            with the next layer's estimated time (``None``: when stderr is a terminal).
        fold_norms: pass the eval-mode BatchNorm that directly follows a target
            (:func:`detect_norms`) to its build as ``post_norm=``, so the fit matches
            ``act(BN(layer(x)))`` rather than ``act(layer(x))``.
        cache_bytes: a layer's captured inputs are kept in memory up to this size;
            beyond it they are recomputed on every pass (memory stays bounded).
        sequential: ``False`` fits every target to the inputs it gets in the dense
            model instead (captured in one pass before anything is replaced; they
            are all held in memory).

    Everything is checked before the model changes (target names, activation
    names, finite and non-empty calibration data, that the model runs on it); if
    a build fails, the modules already replaced are put back, so on any error
    the model is left as it was.
    """
    check_module("model", model)
    if progress is not None:
        check_bool("progress", progress)
    check_bool("fold_norms", fold_norms)
    check_int("cache_bytes", cache_bytes, 0)
    check_bool("sequential", sequential)
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
    if activations is not None and not isinstance(activations, Mapping):
        raise TypeError(f"activations must be a dict of module name -> activation name, "
                        f"got {type(activations).__name__}")
    given = dict(activations or {})
    for name, act in given.items():
        if name not in builds:
            raise ValueError(f"activations names {name!r}, which is not a target")
        check_activation(act)
    if not names:
        return
    data = CalibrationData(calibration)
    data.check()

    modes = save_modes(model)
    model.eval()
    swapped: list[tuple[nn.Module, nn.Module]] = []
    bar: LayerProgress | None = None
    try:
        order, calls = _execution_order(model, names, data.first())
        detected = detect_activations(model, [n for n in order if n not in given],
                                      data.first())
        acts = {**detected, **given}
        norms = detect_norms(model, order) if fold_norms else {}
        bar = LayerProgress([(n, _layer_cost(model.get_submodule(n), data.first()))
                             for n in order], enabled=progress, desc="compress")
        dense_inputs = None if sequential else _dense_inputs(model, order, data)
        for name in order:
            dense = model.get_submodule(name)
            inputs: Any = (_CapturedInputs(model, dense, calls[name], data, cache_bytes)
                           if dense_inputs is None else dense_inputs[name])
            extra = {"post_norm": norms[name]} if name in norms else {}
            bar.start(name)
            new = builds[name](dense, inputs=inputs, activation=acts[name], **extra)
            if not isinstance(new, nn.Module):
                raise TypeError(f"build for {name!r} returned {type(new).__name__}, "
                                "not an nn.Module")
            replace_module(model, dense, new)  # under every name it is registered
            swapped.append((dense, new))
            bar.done(name)
        bar.close()
    except BaseException:
        if bar is not None:
            bar.close()
        for dense, new in reversed(swapped):
            replace_module(model, new, dense)
        raise
    finally:
        restore_modes(model, modes)
