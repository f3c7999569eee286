"""load_model's options and side effects: what ``strict=`` and ``map_location=``
change, what a load leaves untouched (the RNG, frozen flags, a wrapper), atomic
saves, argument checks, and the in-memory entry points ``load_state`` and
``restore_structure``."""

from __future__ import annotations

import pytest
import torch
from safetensors import safe_open
from torch import nn

from compactnn import LowRankLinear, factorize, load_model, save_model


def mlp(classes: int = 10, hidden: int = 32) -> nn.Sequential:
    return nn.Sequential(nn.Linear(16, hidden), nn.ReLU(), nn.Linear(hidden, classes))


def factored_mlp() -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    model, _ = factorize(mlp(), rank=4)
    return model, torch.randn(3, 16)


def snapshot(model: nn.Module):
    return ({n: type(m).__name__ for n, m in model.named_modules()},
            {k: v.clone() for k, v in model.state_dict().items()},
            [id(m) for m in model.modules()])


def assert_unchanged(model: nn.Module, snap) -> None:
    kinds_before, state_before, ids_before = snap
    assert {n: type(m).__name__ for n, m in model.named_modules()} == kinds_before
    assert [id(m) for m in model.modules()] == ids_before
    state = model.state_dict()
    assert state.keys() == state_before.keys()
    for k, v in state.items():
        assert torch.equal(v, state_before[k]), k


# -- strict= and map_location= have observable effects ----------------------------
class WithExtra(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = mlp()
        self.extra = nn.Linear(16, 12)


def test_strict_true_names_the_unexpected_key(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "extra.safetensors"
    save_model(WithExtra(), path)
    target = nn.Module()
    target.body = mlp()
    snap = snapshot(target)
    with pytest.raises(ValueError, match=r"unexpected keys \['extra\.bias', 'extra\.weight'\]"):
        load_model(target, path, strict=True)
    assert_unchanged(target, snap)


def test_strict_false_skips_the_unexpected_key_and_loads_the_rest(tmp_path):
    torch.manual_seed(0)
    saved = WithExtra()
    path = tmp_path / "extra.safetensors"
    save_model(saved, path)
    target = nn.Module()
    target.body = mlp()
    load_model(target, path, strict=False)
    for k, v in target.state_dict().items():
        assert torch.equal(v, saved.state_dict()[k]), k


def test_strict_true_names_the_missing_key_and_strict_false_keeps_it(tmp_path):
    torch.manual_seed(0)
    saved = nn.Module()
    saved.body = mlp()
    path = tmp_path / "body.safetensors"
    save_model(saved, path)
    target = WithExtra()
    snap = snapshot(target)
    with pytest.raises(ValueError, match=r"missing keys \['extra\.bias', 'extra\.weight'\]"):
        load_model(target, path)
    assert_unchanged(target, snap)
    extra = target.extra.weight.clone()
    load_model(target, path, strict=False)
    assert torch.equal(target.extra.weight, extra)  # not in the file: kept
    for k, v in saved.state_dict().items():
        assert torch.equal(target.state_dict()[k], v), k


def test_strict_false_skips_a_recorded_layer_the_model_lacks(tmp_path):
    torch.manual_seed(0)
    saved, _ = factorize(WithExtra(), rank=2)
    path = tmp_path / "lr.safetensors"
    save_model(saved, path)
    target = nn.Module()
    target.body = mlp()
    with pytest.raises(ValueError, match="lacks"):
        load_model(target, path)
    load_model(target, path, strict=False)
    assert isinstance(target.body[0], LowRankLinear)
    x = torch.randn(3, 16)
    assert torch.equal(target.body(x), saved.body(x))


def test_tensors_are_read_onto_map_location(tmp_path, monkeypatch):
    """The file is opened for reading on the requested device (recorded by a spy
    that reads on the CPU, the only device this test can count on)."""
    import safetensors

    model, x = factored_mlp()
    path = tmp_path / "m.safetensors"
    save_model(model, path)
    real = safetensors.safe_open
    devices = []

    def spy(filename, framework, device="cpu"):
        devices.append(device)
        return real(filename, framework=framework, device="cpu")

    monkeypatch.setattr(safetensors, "safe_open", spy)
    fresh = load_model(mlp(), path, map_location=torch.device("cuda", 1))
    assert "cuda:1" in devices
    assert torch.equal(fresh(x), model(x))
    devices.clear()
    load_model(mlp(), path, map_location="cpu")
    assert set(devices) == {"cpu"}


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_map_location_cuda_into_cuda_and_cpu_models(tmp_path):
    model, x = factored_mlp()
    path = tmp_path / "m.safetensors"
    save_model(model, path)
    on_gpu = load_model(mlp().cuda(), path, map_location="cuda")
    assert on_gpu[0].U.device.type == "cuda"
    assert torch.allclose(on_gpu(x.cuda()).cpu(), model(x), atol=1e-5)
    on_cpu = load_model(mlp(), path, map_location="cuda")
    assert on_cpu[0].U.device.type == "cpu"
    assert torch.equal(on_cpu(x), model(x))


@pytest.mark.parametrize(("where", "error", "match"), [
    ("meta", ValueError, "map_location='meta'"),
    ("no-such-device", ValueError, "map_location='no-such-device'"),
    (3, TypeError, "map_location"),
    (lambda storage, loc: storage, TypeError, "map_location"),
])
def test_bad_map_location_is_refused_before_anything(tmp_path, where, error, match):
    model, _ = factored_mlp()
    path = tmp_path / "m.safetensors"
    save_model(model, path)
    target = mlp()
    snap = snapshot(target)
    with pytest.raises(error, match=match):
        load_model(target, path, map_location=where)
    assert_unchanged(target, snap)


@pytest.mark.parametrize(("kwargs", "error", "match"), [
    ({"strict": "yes"}, TypeError, "strict"),
    ({"strict": 1}, TypeError, "strict"),
])
def test_bad_strict_is_refused(tmp_path, kwargs, error, match):
    model, _ = factored_mlp()
    save_model(model, tmp_path / "m.safetensors")
    with pytest.raises(error, match=match):
        load_model(mlp(), tmp_path / "m.safetensors", **kwargs)


# -- loading touches nothing but the model ----------------------------------------
def test_load_does_not_consume_the_global_rng(tmp_path):
    torch.manual_seed(0)
    saved, _ = factorize(mlp(), rank=4)
    save_model(saved, tmp_path / "m.safetensors")
    target = mlp()
    torch.manual_seed(123)
    load_model(target, tmp_path / "m.safetensors")
    after = torch.rand(3)
    torch.manual_seed(123)
    assert torch.equal(after, torch.rand(3))


def test_rebuilt_layer_keeps_training_mode_and_frozen_flag(tmp_path):
    torch.manual_seed(0)
    saved, _ = factorize(mlp(), rank=4)
    save_model(saved, tmp_path / "m.safetensors")
    target = mlp().eval()
    target[0].requires_grad_(False)
    load_model(target, tmp_path / "m.safetensors")
    assert isinstance(target[0], LowRankLinear) and not target[0].training
    assert not any(p.requires_grad for p in target[0].parameters())
    assert all(p.requires_grad for p in target[2].parameters())


def test_failed_save_leaves_the_existing_file_and_no_temporary(tmp_path, monkeypatch):
    import safetensors.torch as st

    torch.manual_seed(0)
    path = tmp_path / "m.safetensors"
    save_model(mlp(), path)
    before = path.read_bytes()

    def torn(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"torn")
        raise OSError("disk full")

    monkeypatch.setattr(st, "save_file", torn)
    with pytest.raises(OSError, match="disk full"):
        save_model(mlp(classes=3), path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["m.safetensors"]


@pytest.mark.parametrize(("args", "error", "match"), [
    (("not a model", "m.safetensors"), TypeError, "model"),
    ((nn.Linear(2, 2), 42), TypeError, "path"),
    ((nn.Linear(2, 2), "m.safetensors", {"run": 3}), TypeError, "metadata"),
    ((nn.Linear(2, 2), "m.safetensors", ["run"]), TypeError, "metadata"),
])
def test_save_model_validates_arguments(tmp_path, monkeypatch, args, error, match):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(error, match=match):
        save_model(*args)
    assert list(tmp_path.iterdir()) == []


def test_save_into_a_directory_is_a_value_error(tmp_path):
    with pytest.raises(ValueError, match="directory"):
        save_model(nn.Linear(2, 2), tmp_path)


@pytest.mark.parametrize("parent", ["missing", "missing/deeper", "a_file"])
def test_save_into_a_missing_folder_names_the_folder(tmp_path, parent):
    # not the temporary file the atomic write would have made there
    (tmp_path / "a_file").write_text("x")
    folder = tmp_path / parent
    with pytest.raises(FileNotFoundError) as err:
        save_model(nn.Linear(2, 2), folder / "m.safetensors")
    msg = str(err.value)
    assert f"the folder {str(folder)!r}" in msg and ".tmp" not in msg and "\n" not in msg
    assert msg.endswith("create it first or save elsewhere")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file"]


# -- the in-memory entry points -------------------------------------------------
def test_load_state_round_trip_and_all_or_nothing():
    from compactnn.io import load_state, model_structure

    torch.manual_seed(0)
    saved, _ = factorize(mlp(), rank=4)
    state, structure = saved.state_dict(), model_structure(saved)
    target = load_state(mlp(), state, structure)
    x = torch.randn(2, 16)
    assert torch.equal(target(x), saved(x))
    other = mlp(classes=7)
    snap = snapshot(other)
    with pytest.raises(ValueError, match=r"\(7, 32\)"):
        load_state(other, state, structure)
    assert_unchanged(other, snap)


def test_restore_structure_is_checked_and_all_or_nothing():
    from compactnn.io import model_structure, restore_structure

    torch.manual_seed(0)
    saved, _ = factorize(mlp(), rank=4)
    structure = model_structure(saved)
    target = restore_structure(mlp(), structure)
    assert [type(m).__name__ for m in target] == ["LowRankLinear", "ReLU", "LowRankLinear"]
    assert target[0].rank == saved[0].rank
    structure["1"] = structure["0"]  # names the ReLU
    other = mlp()
    snap = snapshot(other)
    with pytest.raises(ValueError, match=r"layer '1'.*ReLU"):
        restore_structure(other, structure)
    assert_unchanged(other, snap)


def test_wrapped_model_is_saved_and_loaded_through_its_wrapper(tmp_path):
    torch.manual_seed(0)
    saved, _ = factorize(mlp(), rank=4)
    save_model(nn.DataParallel(saved), tmp_path / "w.safetensors")
    with safe_open(str(tmp_path / "w.safetensors"), framework="pt") as f:
        assert set(f.keys()) == set(saved.state_dict())  # no "module." prefix
    wrapper = nn.DataParallel(mlp())
    assert load_model(wrapper, tmp_path / "w.safetensors") is wrapper
    x = torch.randn(2, 16)
    assert isinstance(wrapper.module[0], LowRankLinear)
    assert torch.equal(wrapper.module(x), saved(x))


def test_data_that_differs_from_its_header_is_refused(tmp_path, monkeypatch):
    """A file changed between reading its headers and its data (or a reader that
    disagrees with them) is refused, not loaded."""
    import safetensors

    torch.manual_seed(0)
    saved, _ = factorize(mlp(), rank=4)
    path = tmp_path / "m.safetensors"
    save_model(saved, path)
    real = safetensors.safe_open

    class Lying:
        def __init__(self, f):
            self.f = f

        def __enter__(self):
            self.inner = self.f.__enter__()
            return self

        def __exit__(self, *exc):
            return self.f.__exit__(*exc)

        def __getattr__(self, name):
            return getattr(self.inner, name)

        def get_tensor(self, key):
            t = self.inner.get_tensor(key)
            return t.to(torch.int64) if key == "0.U" else t

    monkeypatch.setattr(safetensors, "safe_open", lambda *a, **k: Lying(real(*a, **k)))
    target = mlp()
    snap = snapshot(target)
    with pytest.raises(ValueError, match=r"'0\.U' is torch\.int64"):
        load_model(target, path)
    assert_unchanged(target, snap)


@pytest.mark.parametrize("call", ["load_state", "restore_structure"])
def test_in_memory_entry_points_validate_argument_types(call):
    from compactnn import io

    fn = getattr(io, call)
    args = (mlp(), {}) if call == "load_state" else (mlp(),)
    with pytest.raises(TypeError, match="structure"):
        fn(*args, [("0", "LowRankLinear")])
    with pytest.raises(TypeError, match="model"):
        fn("model", *args[1:], {})
    if call == "load_state":
        with pytest.raises(TypeError, match="state"):
            fn(mlp(), {"0.weight": [1.0]}, {})
