"""A corpus of hostile checkpoint files, built here from a real one: truncated,
pickles renamed, tampered metadata, huge claimed shapes, wrong dtypes, extra and
missing tensors, headers that lie. Each must be refused with a ``ValueError``
naming the file and the fault, before anything is built for real, and must leave
the target model exactly as it was."""

from __future__ import annotations

import json
import pickle
import struct
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch import nn

from compactnn import LowRankConv2d, LowRankLinear, load_model, save_model
from compactnn.io import read_metadata


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.norm = nn.BatchNorm2d(8)
        self.act = nn.ReLU()
        self.fc = nn.Linear(8, 16)
        self.out = nn.Linear(16, 4)


def saved_net() -> nn.Module:
    torch.manual_seed(0)
    net = Net()
    net.conv = LowRankConv2d.from_dense(net.conv, 4)
    net.fc = LowRankLinear.from_dense(net.fc, 4)
    return net


def read_raw(path: Path) -> tuple[dict, bytes]:
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8:8 + n]), raw[8 + n:]


def write_raw(path: Path, header: dict, data: bytes) -> None:
    blob = json.dumps(header).encode()
    blob += b" " * (-len(blob) % 8)
    path.write_bytes(struct.pack("<Q", len(blob)) + blob + data)


def with_layers(edit: Callable[[dict], object]) -> Callable[[dict, bytes], tuple[dict, bytes]]:
    """A corruption that edits the recorded structure (a dict) in place."""
    def corrupt(header: dict, data: bytes) -> tuple[dict, bytes]:
        layers = json.loads(header["__metadata__"]["lowrank_layers"])
        edit(layers)
        header["__metadata__"]["lowrank_layers"] = json.dumps(layers)
        return header, data
    return corrupt


def with_meta(**changes: str | None) -> Callable[[dict, bytes], tuple[dict, bytes]]:
    def corrupt(header: dict, data: bytes) -> tuple[dict, bytes]:
        for k, v in changes.items():
            if v is None:
                header["__metadata__"].pop(k)
            else:
                header["__metadata__"][k] = v
        return header, data
    return corrupt


def with_tensor(key: str, **changes) -> Callable[[dict, bytes], tuple[dict, bytes]]:
    def corrupt(header: dict, data: bytes) -> tuple[dict, bytes]:
        header[key].update(changes)
        return header, data
    return corrupt


def without_tensor(key: str) -> Callable[[dict, bytes], tuple[dict, bytes]]:
    def corrupt(header: dict, data: bytes) -> tuple[dict, bytes]:
        begin, end = header.pop(key)["data_offsets"]
        for info in header.values():  # the bytes after it move up
            if isinstance(info, dict) and "data_offsets" in info and info["data_offsets"][0] >= end:
                info["data_offsets"] = [o - (end - begin) for o in info["data_offsets"]]
        return header, data[:begin] + data[end:]
    return corrupt


def with_extra_tensor(header: dict, data: bytes) -> tuple[dict, bytes]:
    header["evil.weight"] = {"dtype": "F32", "shape": [2], "data_offsets": [len(data),
                                                                            len(data) + 8]}
    return header, data + bytes(8)


def set_config(layer: str, **values) -> Callable[[dict], None]:
    def edit(layers: dict) -> None:
        layers[layer]["config"].update(values)
    return edit


def huge(layers: dict) -> None:
    layers["fc"]["config"].update(in_features=50000, out_features=50000, rank=50000)


# (id, corruption of the header and data, what the message must say)
CASES = [
    ("bad-json", with_meta(lowrank_layers="{not json"), "not valid JSON"),
    ("no-lowrank-layers", with_meta(lowrank_layers=None), "lacks the 'lowrank_layers'"),
    ("no-format", with_meta(format=None), "not a compactnn checkpoint"),
    ("other-format", with_meta(format="compactnn.lowrank.v0"), "not a compactnn checkpoint"),
    ("layers-a-list", with_meta(lowrank_layers="[]"), "must map layer names"),
    ("no-type", with_layers(lambda d: d["fc"].pop("type")), "exactly the keys 'type'"),
    ("no-config", with_layers(lambda d: d["fc"].pop("config")), "exactly the keys 'type'"),
    ("extra-entry-key", with_layers(lambda d: d["fc"].update(code="x")), "exactly the keys"),
    ("config-not-object", with_layers(lambda d: d["fc"].update(config=[8, 16])),
     "'config' must be an object"),
    ("unknown-type", with_layers(lambda d: d["fc"].update(type="os.system")),
     "unknown low-rank layer type 'os.system'"),
    ("device-key", with_layers(set_config("fc", device="meta")), r"unknown keys \['device'\]"),
    ("dtype-key", with_layers(set_config("fc", dtype="float16")), r"unknown keys \['dtype'\]"),
    ("unknown-key", with_layers(set_config("fc", init="spectral")), r"unknown keys \['init'\]"),
    ("missing-key", with_layers(lambda d: d["fc"]["config"].pop("bias")), r"lacks \['bias'\]"),
    ("rank-float", with_layers(set_config("fc", rank=2.5)), "rank must be an int"),
    ("rank-str", with_layers(set_config("fc", rank="4")), "rank must be an int"),
    ("rank-bool", with_layers(set_config("fc", rank=True)), "rank must be an int"),
    ("rank-zero", with_layers(set_config("fc", rank=0)), "rank must lie in"),
    ("width-overflow", with_layers(set_config("fc", in_features=2**70)),
     "in_features must lie in"),
    ("bias-str", with_layers(set_config("fc", bias="yes")), "bias must be true or false"),
    ("kernel-triple", with_layers(set_config("conv", kernel_size=[3, 3, 3])),
     "kernel_size must be an int or a pair"),
    ("padding-negative", with_layers(set_config("conv", padding=[-1, 1])),
     "padding must lie in"),
    ("padding-word", with_layers(set_config("conv", padding="bogus")), "invalid"),
    ("scheme-unknown", with_layers(set_config("conv", scheme="diagonal")), "invalid"),
    ("rank-beyond-full", with_layers(set_config("fc", rank=9)), "invalid"),
    ("other-width", with_layers(set_config("fc", out_features=12)),
     r"layer 'fc'.*\(12, 8\).*\(16, 8\)"),
    ("other-kernel", with_layers(set_config("conv", kernel_size=[5, 5])),
     r"layer 'conv'.*kernel_size=\(5, 5\)"),
    ("relu-slot", with_layers(lambda d: d.update(act=d["fc"])), r"layer 'act'.*ReLU"),
    ("batchnorm-slot", with_layers(lambda d: d.update(norm=d["fc"])),
     r"layer 'norm'.*BatchNorm2d"),
    ("root-slot", with_layers(lambda d: d.update({"": d["fc"]})), "model itself"),
    ("absent-slot", with_layers(lambda d: d.update(ghost=d["fc"])), r"\['ghost'\].*lacks"),
    ("huge-claimed-layer", with_layers(huge), r"layer 'fc'.*50000"),
    ("rank-change-without-tensors", with_layers(set_config("fc", rank=3)),
     r"'fc\.U' has shape \(16, 4\) in the checkpoint but \(16, 3\)"),
    ("lowrank-tensor-missing", without_tensor("fc.U"), r"lacks its tensors \['fc\.U'\]"),
    ("dense-tensor-missing", without_tensor("out.weight"), r"missing keys \['out\.weight'\]"),
    ("extra-tensor", with_extra_tensor, r"unexpected keys \['evil\.weight'\]"),
    ("shape-transposed", with_tensor("fc.V", shape=[8, 4]),
     r"'fc\.V' has shape \(8, 4\) in the checkpoint but \(4, 8\)"),
    ("header-lies-about-size", with_tensor("out.weight", shape=[4, 17]),
     "not a safetensors file or is damaged"),
    ("int-weights", with_tensor("fc.U", dtype="I32"), r"'fc\.U' is int .*float32"),
    ("float-counter", with_tensor("norm.num_batches_tracked", dtype="F64"),
     r"'norm\.num_batches_tracked' is float .*int64"),
    ("unknown-dtype", with_tensor("fc.U", dtype="Q32"), "not a safetensors file"),
    ("offsets-overlap", with_tensor("fc.U", data_offsets=[0, 256]), "not a safetensors file"),
]


@pytest.fixture(scope="module")
def clean_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("corpus") / "clean.safetensors"
    save_model(saved_net(), path)
    return path


def snapshot(model: nn.Module):
    return ([(n, type(m)) for n, m in model.named_modules()],
            {k: v.clone() for k, v in model.state_dict().items()})


def assert_unchanged(model: nn.Module, snap) -> None:
    modules, state = snap
    assert [(n, type(m)) for n, m in model.named_modules()] == modules
    now = model.state_dict()
    assert now.keys() == state.keys()
    assert all(torch.equal(now[k], state[k]) for k in state)


def test_clean_file_loads(clean_file):
    target = Net()
    load_model(target, clean_file)
    ref = saved_net()
    x = torch.randn(2, 3, 6, 6)
    assert torch.equal(target.conv(x), ref.conv(x))
    x = torch.randn(2, 8)
    assert torch.equal(target.fc(x), ref.fc(x))


@pytest.mark.parametrize(("corrupt", "match"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_tampered_file_is_refused_and_model_untouched(clean_file, tmp_path, monkeypatch,
                                                      corrupt, match):
    header, data = read_raw(clean_file)
    header, data = corrupt(header, data)
    path = tmp_path / "hostile.safetensors"
    write_raw(path, header, data)
    built = []
    for cls in (LowRankLinear, LowRankConv2d):
        monkeypatch.setattr(cls, "__init__", spying(cls.__init__, built))
    target = Net()
    snap = snapshot(target)
    with pytest.raises(ValueError, match=match) as info:
        load_model(target, path, strict=True)
    assert str(path) in str(info.value)
    assert_unchanged(target, snap)
    assert built == [], f"layers were allocated before the file was refused: {built}"


class Allocated(Exception):
    pass


def spying(init, built: list):
    """Wrap a layer constructor: record (and refuse) every build that would
    allocate memory, i.e. every build off the meta device; nothing is allocated
    even by code that would build from unchecked sizes."""
    def wrapper(self, *args, **kwargs):
        device = kwargs.get("device") or torch.get_default_device()
        if torch.device(device).type != "meta":
            built.append((type(self).__name__, args, kwargs))
            raise Allocated(f"{type(self).__name__}{args} built on {device}")
        return init(self, *args, **kwargs)
    return wrapper


def test_huge_claimed_layer_is_checked_on_meta_only(clean_file, tmp_path, monkeypatch):
    """The 50000-wide claim reaches the constructor only on the meta device."""
    header, data = read_raw(clean_file)
    write_raw(tmp_path / "h.safetensors", *with_layers(huge)(header, data))
    seen = []
    real = LowRankLinear.__init__

    def record(self, *args, **kwargs):
        device = torch.get_default_device().type
        seen.append((args, device))
        if device != "meta":  # never let a regression allocate 2 x 10 GB here
            raise Allocated(f"LowRankLinear{args} built on {device}")
        real(self, *args, **kwargs)

    monkeypatch.setattr(LowRankLinear, "__init__", record)
    with pytest.raises(ValueError, match="50000"):
        load_model(Net(), tmp_path / "h.safetensors")
    assert seen and all(device == "meta" for _, device in seen)


@pytest.mark.parametrize("cut", [0, 7, 8, 100, -1, -64])
def test_truncated_file(clean_file, tmp_path, cut):
    raw = clean_file.read_bytes()
    path = tmp_path / "cut.safetensors"
    path.write_bytes(raw[:cut] if cut >= 0 else raw[:len(raw) + cut])
    target = Net()
    snap = snapshot(target)
    with pytest.raises(ValueError, match="not a safetensors file or is damaged") as info:
        load_model(target, path)
    assert str(path) in str(info.value)
    assert_unchanged(target, snap)
    with pytest.raises(ValueError, match=str(path)):
        read_metadata(path)


@pytest.mark.parametrize("kind", ["torch-zip", "torch-legacy", "raw-pickle"])
def test_pickle_renamed_is_refused_without_unpickling(tmp_path, monkeypatch, kind):
    path = tmp_path / "model.safetensors"
    state = saved_net().state_dict()
    if kind == "torch-zip":
        torch.save(state, path)
    elif kind == "torch-legacy":
        torch.save(state, path, _use_new_zipfile_serialization=False)
    else:
        path.write_bytes(pickle.dumps({"weights": [1, 2, 3]}, protocol=4))

    def never(*args, **kwargs):
        raise AssertionError("something tried to unpickle the checkpoint")

    monkeypatch.setattr(pickle, "loads", never)
    monkeypatch.setattr(pickle, "load", never)
    monkeypatch.setattr(torch, "load", never)
    target = Net()
    snap = snapshot(target)
    with pytest.raises(ValueError, match="pickle or torch.save archive") as info:
        load_model(target, path)
    assert str(path) in str(info.value)
    assert_unchanged(target, snap)


def test_directory_and_missing_file(tmp_path):
    with pytest.raises(ValueError, match=f"{tmp_path} is a directory"):
        load_model(Net(), tmp_path)
    with pytest.raises(ValueError, match="is a directory"):
        read_metadata(tmp_path)
    with pytest.raises(FileNotFoundError, match="nothing.safetensors"):
        load_model(Net(), tmp_path / "nothing.safetensors")


def test_plain_safetensors_without_metadata(tmp_path):
    from safetensors.torch import save_file

    save_file(Net().state_dict(), str(tmp_path / "plain.safetensors"))
    with pytest.raises(ValueError, match="not a compactnn checkpoint"):
        load_model(Net(), tmp_path / "plain.safetensors")


def test_float64_file_into_float32_model_is_converted(clean_file, tmp_path):
    """A wider float dtype is a legitimate file: values are converted, the model
    keeps its dtype."""
    src = saved_net().double()
    save_model(src, tmp_path / "d.safetensors")
    target = load_model(Net(), tmp_path / "d.safetensors")
    assert target.fc.U.dtype == torch.float32
    assert torch.equal(target.fc.U, src.fc.U.float())


def test_shared_module_recorded_twice_differently_is_refused(tmp_path):
    class Tied(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Linear(8, 8)
            self.b = self.a

    torch.manual_seed(0)
    src = Tied()
    src.a = src.b = LowRankLinear.from_dense(src.a, 2)
    path = tmp_path / "t.safetensors"
    save_model(src, path)
    header, data = read_raw(path)
    layers = json.loads(header["__metadata__"]["lowrank_layers"])
    layers["b"] = json.loads(json.dumps(layers["a"]))
    layers["b"]["config"]["rank"] = 3
    header["__metadata__"]["lowrank_layers"] = json.dumps(layers)
    write_raw(path, header, data)
    target = Tied()
    snap = snapshot(target)
    with pytest.raises(ValueError, match="recorded twice"):
        load_model(target, path)
    assert_unchanged(target, snap)
    layers["b"]["config"]["rank"] = 2  # the same record twice is harmless
    header["__metadata__"]["lowrank_layers"] = json.dumps(layers)
    write_raw(path, header, data)
    load_model(target, path)
    assert target.a is target.b and isinstance(target.a, LowRankLinear)
