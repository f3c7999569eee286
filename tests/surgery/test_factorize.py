"""Model surgery: factorize by rank, selection patterns, bad inputs (with the
model left untouched), inplace, merge, shared modules, attention, and
torch.compile of a factorized model."""

from __future__ import annotations

import copy
import re

import pytest
import torch
from surgery_models import (
    MODELS,
    assert_unchanged,
    build,
    lowrank_names,
    n_params,
    snapshot,
)
from torch import nn

from compactnn import (
    LowRankConv2d,
    LowRankLinear,
    count_macs,
    factorize,
    merge,
)

pytestmark = pytest.mark.filterwarnings("error:budget met only:UserWarning")


# --------------------------------------------------------------------------- by rank


def test_rank_int_replaces_every_layer():
    model, x = build("mlp")
    out, report = factorize(model, rank=8)
    layers = lowrank_names(out)
    assert set(layers) == {"layers.0", "layers.1", "head"}
    assert all(layer.rank == 8 for layer in layers.values())
    assert isinstance(out.layers[0], LowRankLinear)
    assert [r.rank for r in report.layers] == [8, 8, 8]
    assert out(x).shape == (4, 10)


def test_rank_int_is_clipped_and_rounded_to_groups():
    model, x = build("cnn")
    out, report = factorize(model, rank=25, example_inputs=x)
    ranks = {r.name: r.rank for r in report.layers}
    # conv1: full rank 27 (32 x 27), break-even 14.4 -> kept dense
    assert ranks["conv1"] is None
    # conv3 (groups=2) rounds 25 down to a multiple of 2; fc2 (10 x 96) clips to 10,
    # which is above its break-even (9.1) -> dense
    assert ranks["conv3"] == 24 and out.conv3.rank == 24
    assert ranks["fc2"] is None
    assert ranks["conv2"] == ranks["conv4"] == ranks["fc1"] == 25


@pytest.mark.parametrize(("rank", "expected"), [(0.1, {"layers.0": 6, "layers.1": 26,
                                                       "head": 1}),
                                                (0.3, {"layers.0": 19, "layers.1": 77,
                                                       "head": 3})])
def test_rank_float_is_a_fraction_of_each_full_rank(rank, expected):
    model, _ = build("mlp")
    out, _ = factorize(model, rank=rank)
    assert {n: m.rank for n, m in lowrank_names(out).items()} == expected


def test_planted_low_rank_model_is_reproduced_exactly():
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(40, 50), nn.ReLU(), nn.Linear(50, 30))
    with torch.no_grad():
        for lin in (model[0], model[2]):
            o, i = lin.weight.shape
            lin.weight.copy_(torch.randn(o, 4) @ torch.randn(4, i) / 10)
    out, _ = factorize(model, rank=4)
    x = torch.randn(6, 40)
    torch.testing.assert_close(out(x), model(x), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("scheme", ["channel", "spatial"])
def test_conv_scheme_is_applied(scheme):
    model, x = build("cnn")
    out, _ = factorize(model, rank=0.25, conv_scheme=scheme, example_inputs=x)
    convs = [m for m in out.modules() if isinstance(m, LowRankConv2d)]
    assert convs and all(m.scheme == scheme for m in convs)
    # every nn.Conv2d option survives
    assert out.conv3.padding == "same" and out.conv3.padding_mode == "reflect"
    assert out.conv3.groups == 2 and out.conv2.stride == (2, 2)
    assert out(x).shape == (2, 10)


def test_init_and_init_kwargs_are_passed(monkeypatch):
    import compactnn.init.spectral as spectral_mod

    seen = []
    real = spectral_mod.truncated_svd

    def spy(matrix, rank, method="auto", **kw):
        seen.append(method)
        return real(matrix, rank, method, **kw)

    monkeypatch.setattr(spectral_mod, "truncated_svd", spy)
    model, _ = build("mlp")
    factorize(model, rank=4, svd_method="randomized")
    assert seen == ["randomized"] * 3
    seen.clear()
    out, _ = factorize(model, rank=4, init="default")
    assert seen == []
    assert not torch.allclose(out.layers[0].dense_weight(),
                              factorize(model, rank=4)[0].layers[0].dense_weight())


# --------------------------------------------------------------------------- selection


def test_include_list_peft_style_suffix():
    model, _ = build("nested")
    out, report = factorize(model, rank=8, include=["fc1"])
    assert set(lowrank_names(out)) == {"blocks.0.fc1", "blocks.1.fc1"}
    assert [r.name for r in report.layers if r.selected] == ["blocks.0.fc1", "blocks.1.fc1"]
    # every other layer is listed with its fate
    left = {r.name: r.note for r in report.layers if not r.selected}
    assert left and all(n not in ("blocks.0.fc1", "blocks.1.fc1") for n in left)
    assert all(note == "not matched by include: kept dense" for note in left.values())
    # a name is a suffix on a dot boundary: "c1" does not match "fc1"
    with pytest.raises(ValueError, match="'c1'"):
        factorize(model, rank=8, include=["c1"])
    # full names and nested container names
    out, _ = factorize(model, rank=8, include=["blocks.1.fc2", "heads.reg.2"])
    assert set(lowrank_names(out)) == {"blocks.1.fc2", "heads.reg.2"}


def test_include_regex_full_match():
    model, _ = build("nested")
    out, _ = factorize(model, rank=8, include=r"blocks\.\d+\.fc\d")
    assert set(lowrank_names(out)) == {"blocks.0.fc1", "blocks.0.fc2", "blocks.1.fc1",
                                       "blocks.1.fc2"}
    # full match, not search: "fc1" alone as a regex matches no qualified name
    with pytest.raises(ValueError, match="fc1"):
        factorize(model, rank=8, include=r"fc1")
    # a regex may match containers too; only the factorizable hits are taken
    out, _ = factorize(model, rank=8, include=r"heads.*")
    assert set(lowrank_names(out)) == {"heads.cls", "heads.reg.0", "heads.reg.2"}


def test_exclude_list_and_regex():
    model, _ = build("nested")
    out, _ = factorize(model, rank=8, exclude=["fc2", "embed"])
    assert set(lowrank_names(out)) == {"blocks.0.fc1", "blocks.1.fc1", "heads.cls",
                                       "heads.reg.0", "heads.reg.2"}
    out, _ = factorize(model, rank=8, exclude=r"heads\..*")
    assert set(lowrank_names(out)) == {"embed", "blocks.0.fc1", "blocks.0.fc2",
                                       "blocks.1.fc1", "blocks.1.fc2"}
    out, _ = factorize(model, rank=8, include=["fc1", "fc2"], exclude=["blocks.0.fc2"])
    assert set(lowrank_names(out)) == {"blocks.0.fc1", "blocks.1.fc1", "blocks.1.fc2"}


def test_mlp_hidden_layers_pattern():
    model, _ = build("mlp")
    out, _ = factorize(model, rank=8, include=r"layers\.\d+")
    assert set(lowrank_names(out)) == {"layers.0", "layers.1"}
    assert type(out.head) is nn.Linear


# --------------------------------------------------------------------------- bad inputs


BAD_CALLS = [
    (dict(rank=8, include=["nope"]), ValueError, "'nope'"),
    (dict(rank=8, include=r"blocks\.9\..*"), ValueError, "blocks"),
    (dict(rank=8, exclude=["nope"]), ValueError, "'nope'"),
    (dict(rank=8, include=["norm"]), TypeError, "LayerNorm"),
    (dict(rank=8, include=["norm", "fc1"]), TypeError, "'norm'"),
    (dict(rank=8, include=r"blocks\.0"), TypeError, "Block"),
    (dict(rank=8, include=[3]), TypeError, "3"),
    (dict(rank=0), ValueError, "rank=0"),
    (dict(rank=-2), ValueError, "rank=-2"),
    (dict(rank=1.5), ValueError, "rank=1.5"),
    (dict(rank=0.0), ValueError, "rank=0.0"),
    (dict(rank=True), TypeError, "True"),
    (dict(rank="4"), TypeError, "'4'"),
    (dict(rank=1000), ValueError, "rank=1000"),
    (dict(param_ratio=0.0), ValueError, "param_ratio=0.0"),
    (dict(param_ratio=1.5), ValueError, "param_ratio=1.5"),
    (dict(param_ratio=True), TypeError, "param_ratio must be a number, got True"),
    (dict(param_ratio="0.5"), TypeError, "param_ratio must be a number, got '0.5'"),
    (dict(param_ratio=float("nan")), ValueError, "param_ratio=nan"),
    (dict(rank=4, init=3), TypeError, "init must be"),
    (dict(rank=4, activations=["relu"]), TypeError, "activations must be a dict"),
    (dict(rank=4, include=r"(unclosed"), ValueError, "not a valid regex"),
    (dict(flop_ratio=-0.1), ValueError, "flop_ratio=-0.1"),
    (dict(param_ratio=0.01), ValueError, "param_ratio=0.01"),
    (dict(param_ratio=0.3, include=["fc1"]), ValueError, "param_ratio=0.3"),
    (dict(), ValueError, "exactly one"),
    (dict(rank=4, param_ratio=0.5), ValueError, "rank, param_ratio"),
    (dict(rank=4, conv_scheme="tucker"), ValueError, "tucker"),
    (dict(param_ratio=0.5, allocation="greedy"), ValueError, "greedy"),
    (dict(rank=4, init="bogus"), ValueError, "bogus"),
]


@pytest.mark.parametrize("inplace", [False, True])
@pytest.mark.parametrize(("kwargs", "exc", "needle"), BAD_CALLS)
def test_bad_inputs_raise_and_leave_the_model_untouched(kwargs, exc, needle, inplace):
    model, x = build("nested")
    snap = snapshot(model)
    y = model(x)
    with pytest.raises(exc) as info:
        factorize(model, inplace=inplace, **kwargs)
    assert needle in str(info.value)
    assert_unchanged(model, snap)
    torch.testing.assert_close(model(x), y, rtol=0, atol=0)


@pytest.mark.parametrize("inplace", [False, True])
@pytest.mark.parametrize(("where", "value"), [("weight", float("nan")), ("bias", float("inf"))])
def test_non_finite_weights(where, value, inplace):
    model, _ = build("nested")
    with torch.no_grad():
        getattr(model.blocks[1].fc2, where).view(-1)[3] = value
    snap = snapshot(model)
    with pytest.raises(ValueError, match=r"blocks\.1\.fc2") as info:
        factorize(model, rank=4, inplace=inplace)
    assert "non-finite" in str(info.value)
    assert_unchanged(model, snap)
    # a non-finite layer that is not selected is no obstacle
    out, _ = factorize(model, rank=4, exclude=["blocks.1.fc2"])
    assert type(out.blocks[1].fc2) is nn.Linear


def test_budget_floor_message_gives_reachable_ratio():
    model, _ = build("mlp")
    with pytest.raises(ValueError, match=r"param_ratio=0\.001 cannot be met") as info:
        factorize(model, param_ratio=0.001)
    floor = float(re.search(r"ratio of (\d\.\d+)", str(info.value)).group(1))
    # and a budget just above that floor is feasible
    out, report = factorize(model, param_ratio=min(1.0, floor + 0.01))
    assert report.param_ratio <= floor + 0.01


# --------------------------------------------------------------------------- inplace


def test_inplace_false_leaves_original_untouched():
    model, x = build("cnn")
    snap = snapshot(model)
    y = model(x)
    out, _ = factorize(model, param_ratio=0.4, example_inputs=x)
    assert out is not model
    assert_unchanged(model, snap)
    torch.testing.assert_close(model(x), y, rtol=0, atol=0)
    original = {id(p) for p in model.parameters()}
    assert not original & {id(p) for p in out.parameters()}
    # the copy is a deep copy: training it leaves the original alone
    with torch.no_grad():
        out.bn.weight.add_(1.0)
    assert_unchanged(model, snap)


def test_include_batchnorm_is_a_type_error():
    model, x = build("cnn")
    snap = snapshot(model)
    with pytest.raises(TypeError, match="BatchNorm2d"):
        factorize(model, flop_ratio=0.5, include=["bn"], example_inputs=x, inplace=True)
    assert_unchanged(model, snap)


def test_inplace_true_modifies_the_model():
    model, x = build("mlp")
    out, report = factorize(model, rank=8, inplace=True)
    assert out is model
    assert isinstance(model.layers[0], LowRankLinear)
    assert report.params_after == n_params(model)


def test_training_flags_preserved_by_tracing():
    model, x = build("cnn")
    model.train()
    model.bn.eval()
    running = model.bn.running_mean.clone()
    factorize(model, flop_ratio=0.5, example_inputs=x, inplace=True)
    assert model.training and not model.bn.training and model.conv1.training
    assert torch.equal(model.bn.running_mean, running)  # traced in eval mode, no grad


# --------------------------------------------------------------------------- merge


@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize("scheme", ["channel", "spatial"])
def test_merge_round_trip(name, scheme):
    model, x = build(name)
    factored, _ = factorize(model, rank=0.45, conv_scheme=scheme)
    assert lowrank_names(factored)
    snap = snapshot(factored)
    merged = merge(factored)
    assert not lowrank_names(merged)
    assert_unchanged(factored, snap)  # inplace=False by default
    dense_types = {type(m) for m in merged.modules()} & {nn.Linear, nn.Conv2d}
    assert dense_types
    torch.testing.assert_close(merged(x), factored(x), rtol=1e-4, atol=1e-5)
    # the merged model has the original architecture: the original state dict fits it
    merged.load_state_dict(model.state_dict())
    torch.testing.assert_close(merged(x), model(x), rtol=0, atol=0)


def test_merge_of_full_rank_layers_is_the_original():
    model, x = build("cnn")
    model = model.double()
    x = x.double()
    factored = copy.deepcopy(model)
    for name in ("conv1", "conv2", "conv3", "conv4"):
        setattr(factored, name, LowRankConv2d.from_dense(getattr(model, name), 1.0,
                                                         scheme="spatial"))
    factored.fc1 = LowRankLinear.from_dense(model.fc1, 1.0)
    torch.testing.assert_close(factored(x), model(x))
    merged = merge(factored, inplace=True)
    assert merged is factored
    for name in ("conv1", "conv2", "conv3", "conv4", "fc1"):
        torch.testing.assert_close(getattr(merged, name).weight, getattr(model, name).weight)
    torch.testing.assert_close(merged(x), model(x))


@pytest.mark.parametrize("layer", [LowRankLinear(12, 10, rank=3),
                                   LowRankConv2d(4, 6, 3, rank=2, scheme="spatial")])
def test_merge_of_a_bare_lowrank_layer(layer):
    merged = merge(layer)
    assert type(merged) in (nn.Linear, nn.Conv2d)
    x = torch.randn(2, 12) if isinstance(layer, LowRankLinear) else torch.randn(1, 4, 6, 6)
    torch.testing.assert_close(merged(x), layer(x), rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------- shared / attention


class Shared(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(64, 64)
        self.b = self.a  # the same module under two names, called twice
        self.head = nn.Linear(64, 4)

    def forward(self, x):
        return self.head(self.b(self.a(x).relu()))


def test_shared_module_factorized_once_and_stays_shared():
    model = Shared()
    x = torch.randn(3, 64)
    out, report = factorize(model, rank=8)
    assert out.a is out.b and isinstance(out.a, LowRankLinear)
    assert [r.name for r in report.layers] == ["a", "head"]
    assert report.params_after == n_params(out)  # counted once
    torch.testing.assert_close(out(x), out.head(out.a(out.a(x).relu())))
    # inplace too
    model2 = Shared()
    factorize(model2, rank=8, inplace=True)
    assert model2.a is model2.b and isinstance(model2.b, LowRankLinear)


def test_shared_module_macs_count_every_call():
    model = Shared()
    x = torch.randn(3, 64)
    # a runs twice on 3 rows, head once
    assert count_macs(model, x) == 2 * 3 * 64 * 64 + 3 * 64 * 4
    out, report = factorize(model, flop_ratio=0.5, example_inputs=x)
    assert report.macs_before == count_macs(model, x)
    assert report.macs_after == count_macs(out, x)
    assert 0.98 * 0.5 <= report.flop_ratio <= 0.5


@pytest.mark.parametrize("scheme", ["channel", "spatial"])
def test_conv_called_at_two_resolutions_counts_both(scheme):
    class Twice(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = LowRankConv2d(4, 8, 3, rank=2, padding=1, stride=(2, 1), scheme=scheme)

        def forward(self, x):
            return self.conv(x).mean() + self.conv(x[:1, :, :5, :7]).mean()

    model = Twice()
    x = torch.randn(2, 4, 9, 10)
    once = count_macs(model.conv, x) + count_macs(model.conv, x[:1, :, :5, :7])
    assert count_macs(model, x) == once
    dense = nn.Conv2d(4, 8, 3, padding=1, stride=(2, 1))
    model.conv = dense
    assert count_macs(model, x) == count_macs(dense, x) + count_macs(dense, x[:1, :, :5, :7])


class Attn(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(32, 4, batch_first=True)
        self.proj = nn.Linear(32, 32)

    def forward(self, x):
        return self.proj(self.attn(x, x, x, need_weights=False)[0])


def test_multihead_attention_out_proj_is_not_replaced():
    torch.manual_seed(3)
    model = Attn()
    x = torch.randn(2, 5, 32)
    out, report = factorize(model, rank=4)
    assert type(out.attn.out_proj) is type(model.attn.out_proj)
    assert isinstance(out.proj, LowRankLinear)
    assert [r.name for r in report.layers if r.selected] == ["proj"]
    assert [r.note for r in report.layers if not r.selected] == [
        "inside nn.MultiheadAttention (its forward reads .weight): kept dense"]
    assert out(x).shape == (2, 5, 32)  # MHA's functional forward still works
    with pytest.raises(TypeError, match="out_proj"):
        factorize(model, rank=4, include=["out_proj"])
    out, _ = factorize(model, rank=4, include=r".*proj")
    assert set(lowrank_names(out)) == {"proj"}


# --------------------------------------------------------------------------- compile


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_torch_compile_of_factorized_model():
    pytest.importorskip("torch._inductor")
    torch.manual_seed(4)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 8))
    out, _ = factorize(model, rank=4)
    x = torch.randn(5, 16)
    torch._dynamo.reset()
    compiled = torch.compile(out)
    y = compiled(x)
    torch.testing.assert_close(y, out(x), rtol=1e-5, atol=1e-6)
    # gradients flow through the compiled graph to the factors
    y.square().sum().backward()
    assert out[0].U.grad is not None and out[0].V.grad.abs().sum() > 0


def test_factorize_a_bare_layer_points_to_from_dense():
    with pytest.raises(TypeError, match="from_dense"):
        factorize(nn.Linear(8, 8), rank=2)


def test_calibration_with_a_data_free_init_is_ignored():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(),
                          nn.Linear(16, 4))
    calib = torch.randn(64, 12)
    with pytest.warns(UserWarning, match="calibration is ignored: init='spectral'"):
        with_data, _ = factorize(model, rank=4, init="spectral", calibration=calib)
    without, _ = factorize(model, rank=4, init="spectral")
    x = torch.randn(5, 12)
    torch.testing.assert_close(with_data(x), without(x))

