"""safetensors save/load of factorized models: round trips into a freshly built dense
model, metadata, and bad files."""

from __future__ import annotations

import json
import struct

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from compactnn import LowRankConv2d, LowRankLayer, LowRankLinear, factorize, load_model, save_model
from compactnn.io import layer_config, read_metadata


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding="same", padding_mode="reflect")
        self.body = nn.Sequential(
            nn.Conv2d(8, 8, (2, 3), padding="same", groups=2, padding_mode="circular"),
            nn.ReLU(),
            nn.Conv2d(8, 16, 3, stride=2, padding=(1, 0), dilation=(1, 2), bias=False),
        )
        self.norm = nn.BatchNorm2d(16)
        self.head = nn.ModuleDict({"fc": nn.Linear(16, 12), "out": nn.Linear(12, 5)})

    def forward(self, x):
        x = self.body(self.stem(x).relu())
        x = self.norm(x).relu().mean((2, 3))
        return self.head["out"](self.head["fc"](x).relu())


def factored_net(seed: int = 0) -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(seed)
    dense = Net()
    model, _ = factorize(dense, rank=0.5, conv_scheme="spatial", exclude=["out"])
    model.body[2] = LowRankConv2d.from_dense(dense.body[2], 4, scheme="channel")
    # some non-default state: trained-like BN statistics
    model.train()
    model(torch.randn(4, 3, 10, 10))
    model.eval()
    return model, torch.randn(2, 3, 10, 10)


def kinds(model: nn.Module) -> dict[str, str]:
    return {n: type(m).__name__ for n, m in model.named_modules()}


def test_round_trip_into_fresh_dense_model(tmp_path):
    model, x = factored_net()
    path = tmp_path / "model.safetensors"
    save_model(model, path)
    torch.manual_seed(99)
    fresh = Net().eval()
    assert not any(isinstance(m, LowRankLayer) for m in fresh.modules())
    loaded = load_model(fresh, path)
    assert loaded is fresh
    assert kinds(loaded) == kinds(model)
    assert torch.equal(loaded(x), model(x))
    for a, b in zip(model.state_dict().values(), loaded.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    # every constructor argument survives, schemes and padding included
    for name, m in model.named_modules():
        if isinstance(m, LowRankLayer):
            got = loaded.get_submodule(name)
            assert layer_config(got) == layer_config(m), name
    assert loaded.stem.scheme == "spatial" and loaded.body[2].scheme == "channel"
    assert loaded.stem.padding == "same" and loaded.stem.padding_mode == "reflect"
    assert loaded.body[0].padding_mode == "circular" and loaded.body[0].groups == 2
    assert loaded.body[2].dilation == (1, 2) and loaded.body[2].bias is None
    assert type(loaded.head["out"]) is nn.Linear


def test_round_trip_into_already_factorized_model_keeps_matching_layers(tmp_path):
    model, x = factored_net(0)
    path = tmp_path / "m.safetensors"
    save_model(model, path)
    other, _ = factored_net(1)
    fc = other.head["fc"]
    load_model(other, path)
    assert other.head["fc"] is fc  # same structure: the layer object is kept
    assert torch.equal(other(x), model(x))


def test_rank_change_is_rebuilt(tmp_path):
    torch.manual_seed(0)
    a = nn.Sequential(LowRankLinear(10, 8, rank=3))
    b = nn.Sequential(LowRankLinear(10, 8, rank=5))
    save_model(a, tmp_path / "a.safetensors")
    load_model(b, tmp_path / "a.safetensors")
    assert b[0].rank == 3
    x = torch.randn(4, 10)
    assert torch.equal(a(x), b(x))


def test_dtype_follows_target_model(tmp_path):
    model, x = factored_net()
    model = model.double()
    save_model(model, tmp_path / "d.safetensors")
    with safe_open(str(tmp_path / "d.safetensors"), framework="pt") as f:
        assert f.get_tensor("head.fc.U").dtype == torch.float64
    fresh = Net().double().eval()
    load_model(fresh, tmp_path / "d.safetensors")
    assert fresh.head["fc"].U.dtype == torch.float64
    assert torch.equal(fresh(x.double()), model(x.double()))


def test_state_dict_round_trip():
    model, x = factored_net()
    fresh, _ = factored_net(5)
    assert not torch.equal(fresh(x), model(x))
    fresh.load_state_dict(model.state_dict())
    assert torch.equal(fresh(x), model(x))


def test_file_is_safetensors_without_pickle(tmp_path):
    model, _ = factored_net()
    path = tmp_path / "m.safetensors"
    save_model(model, path)
    raw = path.read_bytes()
    assert not raw.startswith((b"PK", b"\x80"))  # neither a torch zip nor a raw pickle
    (header_len,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + header_len])
    assert "__metadata__" in header
    with safe_open(str(path), framework="pt") as f:
        assert set(f.keys()) == set(model.state_dict())
        for k, v in model.state_dict().items():
            assert torch.equal(f.get_tensor(k), v)


def test_metadata(tmp_path):
    model, _ = factored_net()
    path = tmp_path / "m.safetensors"
    save_model(model, path, metadata={"run": "abc", "format": "mine"})
    meta = read_metadata(path)
    assert meta["run"] == "abc"
    assert meta["format"] == "compactnn.lowrank.v1"  # the library's keys win
    assert meta["compactnn_version"]
    structure = json.loads(meta["lowrank_layers"])
    expected = {n: type(m).__name__ for n, m in model.named_modules()
                if isinstance(m, LowRankLayer)}
    assert {n: s["type"] for n, s in structure.items()} == expected
    assert structure["body.2"]["config"]["scheme"] == "channel"
    assert structure["stem"]["config"]["padding"] == "same"


def test_non_compactnn_file_is_rejected(tmp_path):
    path = tmp_path / "plain.safetensors"
    save_file({"weight": torch.zeros(2, 2)}, str(path))
    model = Net()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match="not a compactnn checkpoint"):
        load_model(model, path)
    assert kinds(model) == kinds(Net())
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])


def test_model_lacking_a_recorded_layer_is_rejected(tmp_path):
    model, _ = factored_net()
    path = tmp_path / "m.safetensors"
    save_model(model, path)

    class Smaller(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem = nn.Conv2d(3, 8, 3, padding="same", padding_mode="reflect")

    target = Smaller()
    before = {k: v.clone() for k, v in target.state_dict().items()}
    with pytest.raises(ValueError, match="body") as info:
        load_model(target, path)
    assert "lacks" in str(info.value)
    # checked before anything is swapped
    assert type(target.stem) is nn.Conv2d
    for k, v in target.state_dict().items():
        assert torch.equal(v, before[k])


def test_shared_module_round_trip(tmp_path):
    class Shared(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Linear(16, 16)
            self.b = self.a
            self.head = nn.Linear(16, 3)

        def forward(self, x):
            return self.head(self.b(self.a(x).relu()))

    torch.manual_seed(0)
    model, _ = factorize(Shared(), rank=4)
    path = tmp_path / "s.safetensors"
    save_model(model, path)
    fresh = load_model(Shared(), path)
    assert fresh.a is fresh.b and isinstance(fresh.a, LowRankLinear)
    x = torch.randn(3, 16)
    assert torch.equal(fresh(x), model(x))


def test_loading_a_file_that_is_not_safetensors_is_a_value_error(tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="not a safetensors file"):
        load_model(nn.Linear(2, 2), bad)


# -- the model is checked against the checkpoint (issue: shapes were trusted) ------
def mlp(classes: int = 10, hidden: int = 32) -> nn.Sequential:
    return nn.Sequential(nn.Linear(16, hidden), nn.ReLU(), nn.Linear(hidden, classes))


def snapshot(model: nn.Module) -> tuple[dict[str, str], dict[str, torch.Tensor], list[int]]:
    """Module kinds, a copy of every value, and the identity of every module."""
    return (kinds(model), {k: v.clone() for k, v in model.state_dict().items()},
            [id(m) for m in model.modules()])


def assert_unchanged(model: nn.Module, snap) -> None:
    kinds_before, state_before, ids_before = snap
    assert kinds(model) == kinds_before
    assert [id(m) for m in model.modules()] == ids_before
    state = model.state_dict()
    assert state.keys() == state_before.keys()
    for k, v in state.items():
        assert torch.equal(v, state_before[k]), k


def test_lowrank_head_of_another_width_is_refused_naming_layer_and_shapes(tmp_path):
    torch.manual_seed(0)
    saved, _ = factorize(mlp(classes=8), rank=4)
    path = tmp_path / "eight.safetensors"
    save_model(saved, path)
    target = mlp(classes=10)
    snap = snapshot(target)
    with pytest.raises(ValueError, match=r"layer '2'") as info:
        load_model(target, path, strict=True)
    assert "(8, 32)" in str(info.value) and "(10, 32)" in str(info.value)
    assert_unchanged(target, snap)


def test_dense_tensor_of_another_shape_is_a_value_error_naming_both_shapes(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "dense8.safetensors"
    save_model(mlp(classes=8), path)
    target = mlp(classes=10)
    snap = snapshot(target)
    with pytest.raises(ValueError, match=r"layer '2': tensor '2\.bias' has shape \(8,\) in the "
                       r"checkpoint but \(10,\) in the model"):
        load_model(target, path)
    assert_unchanged(target, snap)


def test_lowrank_conv_with_other_stride_is_refused(tmp_path):
    torch.manual_seed(0)
    saved = nn.Sequential(LowRankConv2d(3, 8, 3, rank=2, stride=2))
    save_model(saved, tmp_path / "c.safetensors")
    target = nn.Sequential(nn.Conv2d(3, 8, 3, stride=1))
    snap = snapshot(target)
    with pytest.raises(ValueError, match=r"layer '0'.*stride=\(2, 2\)"):
        load_model(target, tmp_path / "c.safetensors")
    assert_unchanged(target, snap)


def test_lowrank_layer_into_a_nonlinear_slot_is_refused(tmp_path):
    """A recorded layer whose name is the ReLU's must not replace the ReLU."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 8))
    path = tmp_path / "m.safetensors"
    save_model(model, path)
    structure = {"1": {"type": "LowRankLinear",
                       "config": {"in_features": 8, "out_features": 8, "rank": 2, "bias": True}}}
    tensors = {**model.state_dict(), "1.U": torch.zeros(8, 2), "1.V": torch.zeros(2, 8),
               "1.bias": torch.zeros(8)}
    save_file(tensors, str(path), metadata={"format": "compactnn.lowrank.v1",
                                            "lowrank_layers": json.dumps(structure)})
    target = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 8))
    snap = snapshot(target)
    with pytest.raises(ValueError, match=r"layer '1'.*ReLU"):
        load_model(target, path, strict=False)
    assert_unchanged(target, snap)


def test_failed_load_after_structure_change_leaves_the_model_as_it_was(tmp_path):
    """The structure is fine but another tensor does not fit: nothing is swapped."""
    torch.manual_seed(0)
    saved, _ = factorize(mlp(classes=8, hidden=32), rank=4, include=["0"])
    path = tmp_path / "m.safetensors"
    save_model(saved, path)
    target = mlp(classes=10, hidden=32)
    snap = snapshot(target)
    with pytest.raises(ValueError, match=r"layer '2'.*\(8,\).*\(10,\)"):
        load_model(target, path)
    assert_unchanged(target, snap)
    assert type(target[0]) is nn.Linear


class Refuses(nn.Module):
    """A module whose loading fails inside ``load_state_dict`` (after the modules
    before it have been written): the last line of defence must roll back."""

    def __init__(self, error: BaseException) -> None:
        super().__init__()
        self.error = error
        self.register_buffer("flag", torch.zeros(1))
        self._register_load_state_dict_pre_hook(self._refuse)

    def _refuse(self, *args, **kwargs):
        raise self.error


@pytest.mark.parametrize(("error", "raised", "match"), [
    (RuntimeError("refused by a hook"), ValueError, "refused by a hook.*unchanged"),
    (KeyboardInterrupt(), KeyboardInterrupt, None),
])
def test_error_inside_load_state_dict_rolls_back_swaps_and_values(tmp_path, error, raised,
                                                                  match):
    torch.manual_seed(0)
    saved = nn.Sequential(nn.Linear(8, 8), nn.BatchNorm1d(8), nn.Linear(8, 4))
    saved, _ = factorize(saved, rank=2, include=["2"])
    saved[1].running_mean.fill_(3.0)
    path = tmp_path / "m.safetensors"
    save_model(saved, path)
    target = nn.Sequential(nn.Linear(8, 8), nn.BatchNorm1d(8), nn.Linear(8, 4))
    target.add_module("tail", Refuses(error))
    snap = snapshot(target)
    with pytest.raises(raised, match=match):
        load_model(target, path, strict=False)
    assert_unchanged(target, snap)
