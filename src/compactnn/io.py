"""Save and load factorized models with safetensors.

The file holds the state dict and, in its metadata, the structure needed to
rebuild the low-rank layers (their names, types and constructor arguments).
Loading fills a model built from your own code, so nothing is unpickled:

    save_model(lowrank_model, "model.safetensors")
    model = load_model(MyNet(), "model.safetensors")   # MyNet() is dense

A checkpoint is untrusted input. Before anything is built for real, the
recorded structure is checked key by key and type by type, each recorded layer
is built on the ``meta`` device (no memory) and compared with the slot it would
fill and with the file's tensor headers, and every tensor's shape and kind of
dtype is compared with the model's. So no layer larger than the tensors the file
holds is ever allocated, and a load that fails leaves the model as it was.
"""

from __future__ import annotations

import json
import os
import re
import stat
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from compactnn import __version__
from compactnn._checks import check_bool, check_module
from compactnn._locks import hold_exclusive
from compactnn._modules import module_names, replace_module, unwrap
from compactnn.layer_schema import check_structure_arg, construct, layer_config, parse_structure
from compactnn.lowrank import LowRankLayer, linear_view

__all__ = ["FORMAT", "save_model", "load_model", "load_state", "layer_config",
           "model_structure", "read_metadata", "restore_structure", "tensor_headers"]

FORMAT = "compactnn.lowrank.v1"
_PICKLE_MAGIC = (b"\x80", b"PK\x03\x04")  # a raw pickle, a torch.save zip archive


# -- the tensor table ---------------------------------------------------------
_KINDS = {"F": "float", "B": "float", "I": "int", "U": "int", "C": "complex"}


def _kind(dtype: torch.dtype | str) -> str:
    """``"float"``, ``"int"``, ``"bool"`` or ``"complex"`` (a torch dtype or a
    safetensors dtype name such as ``"F32"``, ``"BF16"``, ``"I64"``)."""
    if isinstance(dtype, torch.dtype):
        if dtype == torch.bool:
            return "bool"
        return ("complex" if dtype.is_complex else "float" if dtype.is_floating_point
                else "int")
    return "bool" if dtype == "BOOL" else _KINDS.get(dtype[:1], dtype)


@dataclass
class _Table:
    """Shapes and dtype kinds of the tensors to load, and a reader for them."""

    where: str
    headers: dict[str, tuple[tuple[int, ...], str]]
    read: Callable[[list[str]], dict[str, Tensor]]


@dataclass
class _Plan:
    swaps: list[tuple[nn.Module, LowRankLayer]] = field(default_factory=list)
    expected: dict[str, tuple[tuple[int, ...], torch.dtype]] = field(default_factory=dict)


def _dense_twin(module: nn.Module) -> nn.Module:
    """The dense layer a slot computes, on the meta device for low-rank layers (so
    nothing is allocated), the ``nn.Linear`` view of a Hugging Face ``Conv1D``, the
    module itself otherwise."""
    if isinstance(module, LowRankLayer):
        with torch.device("meta"):
            return construct(type(module).__name__, layer_config(module)).to_dense()
    return linear_view(module)


def _first_tensor(module: nn.Module) -> Tensor:
    return next(iter(module.state_dict(keep_vars=True).values()))


def _describe(module: nn.Module) -> str:
    weight = getattr(module, "weight", None)
    shape = tuple(weight.shape) if isinstance(weight, Tensor) else None
    return f"{type(module).__name__}({module.extra_repr()}) with weight shape {shape}"


def _plan(model: nn.Module, structure: dict[str, tuple[str, dict[str, Any]]],
          table: _Table | None, strict: bool) -> _Plan:
    """Check ``structure`` against ``model`` (and the tensor headers), building the
    new layers on the meta device only. Mutates nothing."""
    where = table.where if table is not None else "structure"
    modules = dict(model.named_modules(remove_duplicate=False))
    lacking = [n for n in structure if n not in modules]
    if lacking and strict:
        raise ValueError(f"{where}: checkpoint has low-rank layers {lacking} that the model "
                         "lacks; is it the same architecture?")
    plan = _Plan()
    replaced: dict[str, nn.Module] = {}  # alias -> new (meta) layer
    seen: dict[int, tuple[str, str, dict[str, Any]]] = {}
    for name, (kind, config) in structure.items():
        if name not in modules:
            continue
        at = f"{where}: layer {name!r}"
        slot = modules[name]
        if id(slot) in seen:  # the same module recorded under two of its names
            first, *spec = seen[id(slot)]
            if spec != [kind, config]:
                raise ValueError(f"{at}: recorded twice (also as {first!r}) differently")
            continue
        seen[id(slot)] = (name, kind, config)
        try:
            with torch.device("meta"):
                new = construct(kind, config)
                twin = new.to_dense()
        except (TypeError, ValueError, RuntimeError, OverflowError) as e:
            raise ValueError(f"{at}: {kind} config {config} is invalid ({e})") from None
        dense = _dense_twin(slot)
        if not isinstance(dense, type(twin)) or dense.extra_repr() != twin.extra_repr():
            raise ValueError(f"{at}: the checkpoint holds a {kind} equivalent to "
                             f"{_describe(twin)}, but the model has {_describe(dense)} there")
        if type(slot) is type(new) and json.loads(json.dumps(layer_config(slot))) \
                == json.loads(json.dumps(layer_config(new))):
            continue  # same layer: kept, so optimizers holding it stay valid
        new = new.to(dtype=_first_tensor(slot).dtype)
        plan.swaps.append((slot, new))
        for alias in module_names(model, slot):
            replaced[alias] = new
    # what the model's state dict will be once the swaps are done
    for key, t in model.state_dict().items():
        owner = key.rpartition(".")[0]
        if owner not in replaced:
            plan.expected[key] = (tuple(t.shape), t.dtype)
    for alias, new in replaced.items():
        for key, t in new.state_dict().items():
            plan.expected[f"{alias}.{key}"] = (tuple(t.shape), t.dtype)
    if table is None:
        return plan
    headers = table.headers
    for alias, new in replaced.items():
        lost = [f"{alias}.{k}" for k in new.state_dict() if f"{alias}.{k}" not in headers]
        if lost:
            raise ValueError(f"{where}: layer {alias!r} is recorded as "
                             f"{type(new).__name__} but the file lacks its tensors {lost}")
    missing = sorted(k for k in plan.expected if k not in headers)
    unexpected = sorted(k for k in headers if k not in plan.expected)
    if strict and (missing or unexpected):
        raise ValueError(f"{where} does not match the model (strict=True): missing keys "
                         f"{_few(missing)}, unexpected keys {_few(unexpected)}")
    for key in sorted(plan.expected.keys() & headers.keys()):
        shape, dtype = plan.expected[key]
        file_shape, file_kind = headers[key]
        layer = key.rpartition(".")[0] or "<model>"
        if tuple(file_shape) != shape:
            raise ValueError(f"{where}: layer {layer!r}: tensor {key!r} has shape "
                             f"{tuple(file_shape)} in the checkpoint but {shape} in the model")
        if file_kind != _kind(dtype):
            raise ValueError(f"{where}: layer {layer!r}: tensor {key!r} is {file_kind} in "
                             f"the checkpoint but {dtype} in the model")
    return plan


def _few(keys: list[str], n: int = 8) -> str:
    return repr(keys) if len(keys) <= n else f"{keys[:n]} and {len(keys) - n} more"


def _commit(model: nn.Module, plan: _Plan, table: _Table | None, strict: bool) -> None:
    """Read the tensors, materialize the new layers, swap them in and load; on any
    failure put every module and value back."""
    keys = sorted(plan.expected.keys() & table.headers.keys()) if table is not None else []
    state = table.read(keys) if table is not None else {}
    for key, t in state.items():  # the data must be what the headers promised
        shape, dtype = plan.expected[key]
        if tuple(t.shape) != shape or _kind(t.dtype) != _kind(dtype):
            raise ValueError(f"{table.where}: tensor {key!r} is {t.dtype} {tuple(t.shape)}, "
                             f"not the {_kind(dtype)} {shape} its header claims")
    swaps = []
    for old, meta in plan.swaps:
        new = meta.to_empty(device=_first_tensor(old).device)
        if table is None:
            new.reset_parameters()  # nothing will be loaded into it
        new.train(old.training)
        new.requires_grad_(any(p.requires_grad for p in old.parameters()))
        swaps.append((old, new))
    loaded = set(state)
    backup = {k: t.detach().to("cpu", copy=True) for k, t in model.state_dict().items()
              if k in loaded}
    try:
        for old, new in swaps:
            replace_module(model, old, new)
        if table is not None:
            model.load_state_dict(state, strict=strict)
    except BaseException as e:  # an interrupt mid-copy is rolled back too
        for old, new in swaps:
            replace_module(model, new, old)
        with torch.no_grad():
            for k, t in model.state_dict().items():
                if k in backup:
                    t.copy_(backup[k])
        if not isinstance(e, Exception):
            raise
        where = table.where if table is not None else "structure"
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ValueError(f"{where} could not be loaded ({first}); the model is "
                         "unchanged") from e


# -- files --------------------------------------------------------------------
def _file(path: Any) -> Path:
    if not isinstance(path, str | os.PathLike):
        raise TypeError(f"path must be a str or os.PathLike, got {type(path).__name__}")
    p = Path(path)
    if p.is_dir():
        raise ValueError(f"{p} is a directory, not a checkpoint file")
    if not p.exists():
        raise FileNotFoundError(f"no checkpoint file at {p}")
    return p


def _open(path: Path, device: str = "cpu"):
    from safetensors import SafetensorError, safe_open

    try:
        return safe_open(str(path), framework="pt", device=device)
    except SafetensorError as e:
        # (a safetensors file may itself start with 0x80: its first bytes are a length)
        with path.open("rb") as f:
            if f.read(4).startswith(_PICKLE_MAGIC):
                raise ValueError(f"{path} is a pickle or torch.save archive, not a "
                                 "safetensors file; compactnn never unpickles checkpoints") \
                    from None
        raise ValueError(f"{path} is not a safetensors file or is damaged ({e})") from None


def read_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The metadata of a safetensors file (no tensors are read)."""
    p = _file(path)
    with _open(p) as f:
        return dict(f.metadata() or {})


def tensor_headers(path: str | os.PathLike) -> dict[str, tuple[tuple[int, ...], str]]:
    """``{key: (shape, kind)}`` of every tensor of a safetensors file, kind ``"float"``,
    ``"int"``, ``"bool"`` or ``"complex"``, from its header alone (no tensor is read):
    what a loader checks before it allocates anything the file describes."""
    return _file_table(_file(path), torch.device("cpu"))[1].headers


def _file_table(path: Path, device: torch.device) -> tuple[dict[str, str], _Table]:
    from safetensors import SafetensorError

    with _open(path) as f:
        meta = dict(f.metadata() or {})
        headers = {}
        for key in f.keys():
            s = f.get_slice(key)
            headers[key] = (tuple(s.get_shape()), _kind(s.get_dtype()))

    def read(keys: list[str]) -> dict[str, Tensor]:
        try:
            with _open(path, device=str(device)) as f:
                return {k: f.get_tensor(k) for k in keys}
        except (SafetensorError, RuntimeError, OSError) as e:
            raise ValueError(f"{path}: reading the tensors onto {device} failed ({e})") \
                from None

    return meta, _Table(str(path), headers, read)


def _device(map_location: Any) -> torch.device:
    if not isinstance(map_location, str | torch.device):
        raise TypeError("map_location must be a device name or torch.device, got "
                        f"{map_location!r} ({type(map_location).__name__})")
    try:
        device = torch.device(map_location)
    except (RuntimeError, ValueError):
        raise ValueError(f"map_location={map_location!r} is not a device") from None
    if device.type == "meta":
        raise ValueError("map_location='meta' cannot be used: meta tensors hold no data "
                         "to load into the model")
    return device


# -- public API -----------------------------------------------------------------
def model_structure(model: nn.Module) -> dict[str, Any]:
    """``{name: {"type", "config"}}`` for every low-rank layer of ``model``."""
    return {name: {"type": type(m).__name__, "config": layer_config(m)}
            for name, m in model.named_modules() if isinstance(m, LowRankLayer)}


def restore_structure(model: nn.Module, structure: dict[str, Any] | str) -> nn.Module:
    """Swap freshly built (default-initialized) low-rank layers into ``model`` where
    ``structure`` (from :func:`model_structure`) records them. Everything is
    checked first: the names, the keys and types of each config, and that each
    recorded layer computes the same dense layer as the module it replaces; on an
    error the model is unchanged. Prefer :func:`load_state`, which also bounds
    the layers by the tensors that are loaded into them."""
    check_module("model", model)
    check_structure_arg(structure)
    inner = unwrap(model)
    _commit(inner, _plan(inner, parse_structure(structure, "structure"), None, True), None,
            True)
    return model


def load_state(model: nn.Module, state: Mapping[str, Tensor],
               structure: dict[str, Any] | str, strict: bool = True) -> nn.Module:
    """All-or-nothing :func:`load_model` from tensors already in memory: rebuild the
    low-rank layers ``structure`` records (checked against ``state``'s shapes),
    then load ``state``. On any error ``model`` is exactly as before."""
    check_module("model", model)
    check_bool("strict", strict)
    if not isinstance(state, Mapping) or not all(
            isinstance(k, str) and isinstance(v, Tensor) for k, v in state.items()):
        raise TypeError("state must map str keys to tensors")
    check_structure_arg(structure)
    inner = unwrap(model)
    headers = {k: (tuple(v.shape), _kind(v.dtype)) for k, v in state.items()}
    table = _Table("state", headers, lambda keys: {k: state[k] for k in keys})
    _commit(inner, _plan(inner, parse_structure(structure, "state"), table, strict), table,
            strict)
    return model


def save_model(model: nn.Module, path: str | os.PathLike,
               metadata: dict[str, str] | None = None) -> None:
    """Write ``model``'s state dict and low-rank structure to a safetensors file,
    atomically (a failed save leaves any existing file as it was). ``metadata``
    (str -> str) is stored beside it; the library's own keys win.

    The file is written under a temporary name (``.NAME.XXXXXXXX.tmp``) locked while it
    is written; such files of ``path`` that no save holds (left by a killed process) are
    removed."""
    import safetensors.torch as st

    check_module("model", model)
    if not isinstance(path, str | os.PathLike):
        raise TypeError(f"path must be a str or os.PathLike, got {type(path).__name__}")
    if metadata is not None and (not isinstance(metadata, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in metadata.items())):
        raise TypeError("metadata must be a dict of str -> str")
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{path} is a directory; give a file name")
    folder = path.parent
    if not folder.is_dir():
        what = "is not a folder" if folder.exists() else "does not exist"
        raise FileNotFoundError(f"cannot save {path.name!r}: the folder {str(folder)!r} "
                                f"{what}; create it first or save elsewhere")
    model = unwrap(model)
    meta = {**(metadata or {}), "format": FORMAT, "compactnn_version": __version__,
            "lowrank_layers": json.dumps(model_structure(model))}
    tensors = {k: v.detach().contiguous().cpu().clone() for k, v in model.state_dict().items()}
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        hold_exclusive(fd, block=True)  # marks this temporary file as in use until it is renamed
        _remove_stale_temps(path)
        st.save_file(tensors, tmp, metadata=meta)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    finally:
        os.close(fd)


def _remove_stale_temps(path: str | os.PathLike) -> list[Path]:
    """Remove the temporary files of :func:`save_model` for ``path`` (regular files
    named ``.NAME.XXXXXXXX.tmp`` beside it) that no running save holds; returns them."""
    path = Path(path)
    pattern = re.compile(re.escape(f".{path.name}.") + r"[a-z0-9_]{8}\.tmp")
    removed = []
    try:
        names = os.listdir(path.parent)
    except OSError:
        return removed
    for name in names:
        if not pattern.fullmatch(name):
            continue
        f = path.parent / name
        try:
            fd = os.open(f, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
        except OSError:  # gone, or a link: not ours to remove
            continue
        try:
            if stat.S_ISREG(os.fstat(fd).st_mode) and hold_exclusive(fd, block=False):
                f.unlink(missing_ok=True)
                removed.append(f)
        finally:
            os.close(fd)
    return removed


def load_model(model: nn.Module, path: str | os.PathLike, strict: bool = True,
               map_location: str | torch.device = "cpu") -> nn.Module:
    """Rebuild the low-rank layers recorded in ``path`` inside ``model`` (a dense
    or already-factorized instance of the same architecture), then load the
    weights. Returns ``model`` (modified in place).

    Every recorded layer must compute the same dense layer as the module it
    replaces and every tensor must have the model's shape (``ValueError`` naming
    the layer and both shapes otherwise). ``strict=False`` skips keys and
    recorded layers only one side has. The tensors are read onto
    ``map_location`` and copied into the model's own devices and dtypes. On any
    error the model is exactly as before.
    """
    check_module("model", model)
    check_bool("strict", strict)
    device = _device(map_location)
    p = _file(path)
    meta, table = _file_table(p, device)
    if meta.get("format") != FORMAT:
        raise ValueError(f"{p} is not a compactnn checkpoint (format={meta.get('format')!r})")
    if "lowrank_layers" not in meta:
        raise ValueError(f"{p}: the metadata lacks the 'lowrank_layers' entry")
    inner = unwrap(model)
    _commit(inner, _plan(inner, parse_structure(meta["lowrank_layers"], str(p)), table,
                         strict), table, strict)
    return model
