"""The io entry points' errors, exactly: each names the argument or the source it
refers to ("state", "structure", the file), including failures after the checks (a
read or a swap that fails halfway); and ``tensor_headers`` of a saved model."""

from __future__ import annotations

import re

import pytest
import torch
from torch import nn

from compactnn import factorize, load_model, save_model
from compactnn import io as cio
from compactnn.io import load_state, model_structure, restore_structure, tensor_headers


def mlp() -> nn.Sequential:
    return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 10))


def test_argument_errors_start_with_the_arguments_name(tmp_path) -> None:
    path = tmp_path / "m.safetensors"
    save_model(mlp(), path)
    for call in (lambda: load_model("m", path), lambda: restore_structure("m", {}),
                 lambda: load_state("m", {}, {})):
        with pytest.raises(TypeError, match=r"^model must be a Module, got str$"):
            call()
    with pytest.raises(TypeError, match=r"^strict must be a bool, got 1 \(int\)$"):
        load_model(mlp(), path, strict=1)


def test_in_memory_errors_name_the_state() -> None:
    state = dict(mlp().state_dict(), extra=torch.zeros(1))
    with pytest.raises(ValueError, match=r"^state does not match the model \(strict=True\): "
                       r"missing keys \[\], unexpected keys \['extra'\]$"):
        load_state(mlp(), state, {})
    with pytest.raises(ValueError, match=r"^state: 'lowrank_layers' is not valid JSON"):
        load_state(mlp(), mlp().state_dict(), "{bad")


def test_a_failure_while_loading_names_the_source_and_keeps_the_model(monkeypatch) -> None:
    target = mlp()
    before = {k: v.clone() for k, v in target.state_dict().items()}

    def refuse(*args, **kwargs):
        raise RuntimeError("refused\nsecond line")

    monkeypatch.setattr(target, "load_state_dict", refuse)
    with pytest.raises(ValueError, match=r"^state could not be loaded \(refused\); the model "
                       r"is unchanged$"):
        load_state(target, mlp().state_dict(), {})
    assert all(torch.equal(v, before[k]) for k, v in target.state_dict().items())

    torch.manual_seed(0)
    structure = model_structure(factorize(mlp(), rank=4)[0])
    calls = []
    real_replace = cio.replace_module

    def swap_then_fail(model, old, new):  # the first layer swaps, the second fails
        calls.append(new)
        if len(calls) == 2:
            raise RuntimeError("swap failed")
        real_replace(model, old, new)

    monkeypatch.setattr(cio, "replace_module", swap_then_fail)
    other = mlp()
    with pytest.raises(ValueError, match=r"^structure could not be loaded \(swap failed\); "
                       r"the model is unchanged$"):
        restore_structure(other, structure)
    assert [type(m).__name__ for m in other] == ["Linear", "ReLU", "Linear"]


def test_a_failed_read_names_the_file_and_device(tmp_path, monkeypatch) -> None:
    path = tmp_path / "m.safetensors"
    save_model(mlp(), path)
    real = cio._open
    opened = []

    def open_once(p, device="cpu"):
        opened.append(device)
        if len(opened) > 1:  # the header read works, the tensor read fails
            raise OSError("disk gone")
        return real(p, device)

    monkeypatch.setattr(cio, "_open", open_once)
    want = rf"^{re.escape(str(path))}: reading the tensors onto cpu failed \(disk gone\)$"
    with pytest.raises(ValueError, match=want):
        load_model(mlp(), path)


def test_tensor_headers_are_the_saved_shapes_and_kinds(tmp_path) -> None:
    path = tmp_path / "m.safetensors"
    save_model(mlp(), path)
    assert tensor_headers(path) == {"0.weight": ((32, 16), "float"), "0.bias": ((32,), "float"),
                                    "2.weight": ((10, 32), "float"), "2.bias": ((10,), "float")}


def test_complex_tensors_and_unknown_layer_types_are_refused_by_name() -> None:
    state = dict(mlp().state_dict())
    state["0.weight"] = state["0.weight"].to(torch.complex64)
    with pytest.raises(ValueError, match=r"^state: layer '0': tensor '0\.weight' is complex in "
                       r"the checkpoint but torch\.float32 in the model$"):
        load_state(mlp(), state, {})
    with pytest.raises(ValueError, match=r"^state: layer '0': unknown low-rank layer type "
                       r"'Nope'; known: LowRankLinear, LowRankConv2d, LowRankConv1d$"):
        load_state(mlp(), mlp().state_dict(), {"0": {"type": "Nope", "config": {}}})
