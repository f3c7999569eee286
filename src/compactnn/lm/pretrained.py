"""Save and reload a compressed Hugging Face model in a folder, as
``save_pretrained`` / ``from_pretrained`` do for dense ones.

Hugging Face's own ``from_pretrained`` builds the dense architecture from
``config.json`` and cannot know that some layers are factorized: given a
factorized model's weights it would start those layers from random weights. So the
folder written here holds ``config.json`` (and the generation config and tokenizer
when there are any) beside ``compactnn.safetensors`` (the weights with the low-rank
structure in its metadata, :func:`compactnn.save_model`) and *no*
``model.safetensors``: plain ``from_pretrained`` on it fails loudly instead of
loading random weights, and :func:`load_pretrained` rebuilds the model exactly. A
folder written by Hugging Face's own ``save_pretrained`` of a factorized model loads
too: its low-rank linear layers are recognised by their ``U``/``V`` tensors.
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from compactnn._checks import check_module
from compactnn.io import load_model, load_state, save_model, tensor_headers
from compactnn.lm.deps import require
from compactnn.lowrank import is_linear_like

__all__ = ["WEIGHTS_FILE", "load_pretrained", "save_pretrained"]

#: The weights file of a compressed model's folder.
WEIGHTS_FILE = "compactnn.safetensors"


def _folder(path: Any, must_exist: bool) -> Path:
    if not isinstance(path, str | os.PathLike):
        raise TypeError(f"folder must be a path, got {type(path).__name__}")
    if not os.fspath(path):
        raise ValueError("folder must not be empty (use '.' for the current folder)")
    folder = Path(path)
    if must_exist and not folder.is_dir():
        raise FileNotFoundError(f"folder={str(folder)!r} does not exist or is not a folder")
    if not must_exist and folder.exists() and not folder.is_dir():
        raise ValueError(f"folder={str(folder)!r} exists and is not a folder")
    return folder


def save_pretrained(model: nn.Module, folder: str | os.PathLike, tokenizer: Any = None) -> Path:
    """Write ``model`` (a Hugging Face model, factorized or not) to ``folder``:
    ``config.json``, the generation config, the tokenizer if given, and
    ``compactnn.safetensors``. An existing ``model.safetensors`` in the folder (a dense
    model's weights, which would shadow these) is refused. Everything is written into
    a temporary folder beside ``folder`` first and moved in at the end, so that a
    failing save leaves ``folder`` (and the folders above it) as they were. Returns
    the folder."""
    check_module("model", model)
    config = getattr(model, "config", None)
    if config is None or not hasattr(config, "save_pretrained"):
        raise TypeError(f"model must be a Hugging Face PreTrainedModel (with a .config), got "
                        f"{type(model).__name__}; use compactnn.save_model for other models")
    if tokenizer is not None and not callable(getattr(tokenizer, "save_pretrained", None)):
        raise TypeError(f"tokenizer must have a save_pretrained method (a Hugging Face "
                        f"tokenizer), got {type(tokenizer).__name__}")
    folder = _folder(folder, must_exist=False)
    for name in ("model.safetensors", "pytorch_model.bin", "model.safetensors.index.json"):
        if (folder / name).exists():
            raise ValueError(f"{folder / name} exists: Hugging Face would load it instead of "
                             "the compressed weights; save into an empty folder")
    created = [p for p in (folder, *folder.parents) if not p.exists()]
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".tmp",
                                    dir=folder.parent))
    try:
        config.save_pretrained(staging)
        gen = getattr(model, "generation_config", None)
        if gen is not None and hasattr(gen, "save_pretrained"):
            gen.save_pretrained(staging)
        if tokenizer is not None:
            tokenizer.save_pretrained(staging)
        save_model(model, staging / WEIGHTS_FILE)
        folder.mkdir(exist_ok=True)
        for item in sorted(staging.iterdir()):
            os.replace(item, folder / item.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        for p in created:  # made here and left empty by a failure: removed, deepest first
            if p.is_dir() and not any(p.iterdir()):
                p.rmdir()
    return folder


def load_pretrained(folder: str | os.PathLike, model_class: Any = None) -> nn.Module:
    """The model saved by :func:`save_pretrained` in ``folder``, rebuilt exactly (low-rank
    layers, ties) in eval mode. ``model_class`` is a transformers auto class or model
    class (default ``AutoModelForCausalLM``); its ``from_config`` builds the skeleton.

    The folder is untrusted: the skeleton ``config.json`` describes is first built on
    the ``meta`` device (no memory) and every tensor it would allocate is checked
    against the weights file's headers, so a tampered config cannot make it allocate
    more than the file holds; non-finite weights are refused. Symbolic links are
    followed, as Hugging Face's own cache uses them."""
    folder = _folder(folder, must_exist=True)
    weights = folder / WEIGHTS_FILE
    plain = folder / "model.safetensors"
    if not weights.is_file() and not plain.is_file():
        raise FileNotFoundError(f"{weights} not found: {folder} was not written by "
                                "compactnn.lm.save_pretrained")
    transformers = require("transformers")
    cls = model_class if model_class is not None else transformers.AutoModelForCausalLM
    if not hasattr(cls, "from_config") and not hasattr(cls, "_from_config"):
        raise TypeError(f"model_class must be a transformers model or auto class, got {cls!r}")
    path = weights if weights.is_file() else plain
    headers = tensor_headers(path)
    config = transformers.AutoConfig.from_pretrained(folder)
    with torch.device("meta"):
        skeleton = _build(cls, config)
    _check_skeleton(skeleton, headers, path)
    model = _build(cls, config)
    if path == weights:
        load_model(model, weights)
    else:
        _load_plain(model, plain)
    for name, p in model.named_parameters():
        if p.is_floating_point() and not bool(torch.isfinite(p).all()):
            raise ValueError(f"{path}: parameter {name!r} holds non-finite values (NaN or inf)")
    return model.eval()


def _build(cls: Any, config: Any) -> nn.Module:
    return cls.from_config(config) if hasattr(cls, "from_config") else cls._from_config(config)


def _check_skeleton(skeleton: nn.Module, headers: dict[str, tuple[tuple[int, ...], str]],
                    path: Path) -> None:
    """Every tensor of the (meta) skeleton must be one the file holds, with its shape:
    a dense slot of a low-rank layer as many entries as its factors' product, and
    the tensors the file lacks (buffers computed from the config, a tie saved once)
    at most as many entries as the file holds in all."""
    lowrank = {k[:-2] for k in headers if k.endswith(".U") and k[:-2] + ".V" in headers}
    budget = sum(math.prod(shape) for shape, _ in headers.values())
    absent = 0
    for name, t in [*skeleton.named_parameters(), *skeleton.named_buffers()]:
        prefix, _, attr = name.rpartition(".")
        if prefix in lowrank and attr == "weight":
            u, v = headers[prefix + ".U"][0], headers[prefix + ".V"][0]
            # U is (out, r, ...) and V (r, ...) for every low-rank layout (linear,
            # grouped and spatial convolutions): the dense kernel has this many entries
            dense = (u[0] * math.prod(u[2:]) * math.prod(v[1:])
                     if len(u) >= 2 and len(v) >= 2 else -1)
            if t.numel() != dense:
                raise ValueError(f"{path}: {prefix}'s factors {headers[prefix + '.U'][0]} and "
                                 f"{headers[prefix + '.V'][0]} do not fit its "
                                 f"{tuple(t.shape)} weight in the model config.json describes")
        elif name in headers:
            if tuple(t.shape) != headers[name][0]:
                raise ValueError(f"{path}: tensor {name!r} has shape {headers[name][0]} but "
                                 f"config.json describes {tuple(t.shape)}")
        else:
            absent += t.numel()
    if absent > budget:
        raise ValueError(f"{path}: the model config.json describes has {absent:,} entries "
                         f"that the file does not hold, more than the {budget:,} it holds; "
                         "config.json does not belong to these weights")


def _load_plain(model: nn.Module, path: Path) -> None:
    """Weights written by Hugging Face's own ``save_pretrained`` of a factorized model:
    the low-rank linear layers are recognised by their ``U``/``V`` tensors (their shapes
    give the rank) and rebuilt before loading; everything is checked as
    :func:`compactnn.load_model` checks a file. Dense weights load as they are; a
    parameter tied to another one (an output head) may be absent, as Hugging Face
    saves ties once."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        state = load_file(str(path))
    except (SafetensorError, OSError) as e:
        raise ValueError(f"{path} is not a safetensors file or is damaged ({e})") from None
    structure = {}
    for name, mod in model.named_modules():
        u, v = state.get(f"{name}.U"), state.get(f"{name}.V")
        if u is None or v is None or not is_linear_like(mod):
            continue
        if u.dim() != 2 or v.dim() != 2 or u.shape[1] != v.shape[0]:
            raise ValueError(f"{path}: {name}.U {tuple(u.shape)} and {name}.V "
                             f"{tuple(v.shape)} are not the factors of one linear layer")
        structure[name] = {"type": "LowRankLinear", "config": {
            "in_features": int(v.shape[1]), "out_features": int(u.shape[0]),
            "rank": int(u.shape[1]), "bias": f"{name}.bias" in state}}
    if not structure:
        raise ValueError(f"{path} holds no low-rank factors: it is a dense model's weights "
                         "(load it with from_pretrained)")
    seen: dict[int, str] = {}
    for pname, p in model.named_parameters(remove_duplicate=False):
        if id(p) in seen and pname not in state and seen[id(p)] in state:
            state[pname] = state[seen[id(p)]]  # a tie saved once
        seen.setdefault(id(p), pname)
    load_state(model, state, structure)
