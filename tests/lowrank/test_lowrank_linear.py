"""LowRankLinear: exactness at full rank, the thin forward, rank semantics, default
init statistics, conversion, serialization and bad inputs."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from compactnn import LowRankLinear
from compactnn.lowrank import break_even_rank, resolve_rank


class ShapeRecorder(TorchDispatchMode):
    """Records the shape of every tensor an aten op produces."""

    def __init__(self) -> None:
        super().__init__()
        self.shapes: list[tuple[int, ...]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, tuple | list) else (out,):
            if isinstance(t, torch.Tensor):
                self.shapes.append(tuple(t.shape))
        return out


# --------------------------------------------------------------------------- exactness


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize(("in_f", "out_f"), [(12, 7), (7, 12), (9, 9), (1, 5), (5, 1)])
def test_full_rank_spectral_equals_dense(in_f, out_f, bias):
    torch.manual_seed(0)
    dense = nn.Linear(in_f, out_f, bias=bias, dtype=torch.float64)
    layer = LowRankLinear.from_dense(dense, min(in_f, out_f), init="spectral")
    x = torch.randn(4, 3, in_f, dtype=torch.float64)
    torch.testing.assert_close(layer(x), dense(x), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(layer.dense_weight(), dense.weight, rtol=1e-10, atol=1e-12)
    if bias:
        assert torch.equal(layer.bias, dense.bias)
        assert layer.bias.data_ptr() != dense.bias.data_ptr()  # copied, not shared
    else:
        assert layer.bias is None


def test_full_rank_float32_close():
    torch.manual_seed(1)
    dense = nn.Linear(32, 24)
    layer = LowRankLinear.from_dense(dense, 1.0)
    x = torch.randn(8, 32)
    torch.testing.assert_close(layer(x), dense(x), rtol=1e-4, atol=1e-5)


def test_to_dense_round_trip():
    torch.manual_seed(2)
    layer = LowRankLinear(20, 15, rank=4)
    dense = layer.to_dense()
    assert type(dense) is nn.Linear
    assert (dense.in_features, dense.out_features) == (20, 15)
    x = torch.randn(6, 20)
    torch.testing.assert_close(dense(x), layer(x), rtol=1e-5, atol=1e-6)
    # the rebuilt weight has rank 4 exactly
    assert torch.linalg.matrix_rank(dense.weight.detach()).item() == 4
    # and factorizing it again at the same rank recovers the same function
    again = LowRankLinear.from_dense(dense, 4)
    torch.testing.assert_close(again(x), layer(x), rtol=1e-4, atol=1e-5)
    # to_dense copies: changing the dense weight leaves the layer alone
    with torch.no_grad():
        dense.weight.zero_()
    assert layer.dense_weight().abs().sum() > 0


def test_to_dense_without_bias():
    layer = LowRankLinear(6, 4, rank=2, bias=False)
    assert layer.to_dense().bias is None


def test_from_dense_keeps_source_untouched():
    torch.manual_seed(3)
    dense = nn.Linear(10, 8)
    before = {k: v.clone() for k, v in dense.state_dict().items()}
    layer = LowRankLinear.from_dense(dense, 3)
    with torch.no_grad():
        layer.U.add_(1.0)
        layer.bias.add_(1.0)
    for k, v in dense.state_dict().items():
        assert torch.equal(v, before[k])


# --------------------------------------------------------------------------- thin forward


def test_forward_parameter_shapes_and_gradients():
    torch.manual_seed(4)
    layer = LowRankLinear(30, 20, rank=5)
    assert layer.U.shape == (20, 5)
    assert layer.V.shape == (5, 30)
    assert layer.bias.shape == (20,)
    assert {n for n, _ in layer.named_parameters()} == {"U", "V", "bias"}
    x = torch.randn(7, 30, requires_grad=True)
    layer(x).square().sum().backward()
    for p in (layer.U, layer.V, layer.bias, x):
        assert p.grad is not None and p.grad.abs().sum() > 0


def test_forward_gradients_match_dense_reference():
    torch.manual_seed(5)
    layer = LowRankLinear(9, 6, rank=3, dtype=torch.float64)
    x = torch.randn(4, 9, dtype=torch.float64)
    layer(x).sin().sum().backward()
    gu, gv = layer.U.grad.clone(), layer.V.grad.clone()
    u = layer.U.detach().clone().requires_grad_()
    v = layer.V.detach().clone().requires_grad_()
    (x @ (u @ v).T + layer.bias.detach()).sin().sum().backward()
    torch.testing.assert_close(gu, u.grad)
    torch.testing.assert_close(gv, v.grad)


def test_forward_never_builds_the_dense_product():
    torch.manual_seed(6)
    out_f, in_f, r = 48, 64, 4
    layer = LowRankLinear(in_f, out_f, rank=r)
    x = torch.randn(3, in_f, requires_grad=True)
    with ShapeRecorder() as rec:
        layer(x).sum().backward()
    assert rec.shapes, "the recorder saw no ops"
    dense_numel = out_f * in_f
    big = [s for s in rec.shapes if math.prod(s) >= dense_numel]
    assert not big, f"forward/backward built a tensor as large as U @ V: {big}"
    # and dense_weight(), which does build it, is seen by the same recorder
    with ShapeRecorder() as rec:
        layer.dense_weight()
    assert (out_f, in_f) in rec.shapes


def test_forward_huge_layer_low_rank():
    # A dense 200k x 200k float32 weight would take 160 GB.
    n = 200_000
    layer = LowRankLinear(n, n, rank=2, bias=False)
    x = torch.randn(3, n)
    y = layer(x)
    assert y.shape == (3, n)
    expected = (x @ layer.V.detach().T) @ layer.U.detach().T
    torch.testing.assert_close(y.detach(), expected)


def test_batched_input_shapes():
    layer = LowRankLinear(5, 3, rank=2)
    assert layer(torch.randn(2, 4, 6, 5)).shape == (2, 4, 6, 3)
    assert layer(torch.randn(5)).shape == (3,)


# --------------------------------------------------------------------------- rank semantics


@pytest.mark.parametrize(
    ("rank", "expected"),
    [(1.0, 10), (0.5, 5), (0.25, 2), (0.26, 3), (1e-9, 1), (0.01, 1), (3, 3), (10, 10)],
)
def test_float_and_int_rank(rank, expected):
    layer = LowRankLinear(10, 16, rank=rank)
    assert layer.rank == expected
    assert layer.U.shape == (16, expected) and layer.V.shape == (expected, 10)
    assert layer.full_rank == 10


def test_full_rank_is_min_of_dims():
    assert LowRankLinear(7, 30, rank=1.0).rank == 7
    assert LowRankLinear(30, 7, rank=1.0).rank == 7
    assert LowRankLinear(30, 7, rank=0.5).matrix_shape == (1, 7, 30)


@pytest.mark.parametrize(
    ("rank", "exc", "needle"),
    [
        (0, ValueError, "rank=0"),
        (-1, ValueError, "rank=-1"),
        (9, ValueError, "rank=9"),
        (1.5, ValueError, "rank=1.5"),
        (0.0, ValueError, "rank=0.0"),
        (-0.5, ValueError, "rank=-0.5"),
        (float("nan"), ValueError, "rank=nan"),
        (float("inf"), ValueError, "rank=inf"),
        (True, TypeError, "True"),
        ("4", TypeError, "'4'"),
        (None, TypeError, "None"),
    ],
)
def test_bad_rank(rank, exc, needle):
    with pytest.raises(exc, match="rank") as info:
        LowRankLinear(8, 12, rank=rank)
    assert needle in str(info.value)


@pytest.mark.parametrize("rank", [0, 13, 1.5, True])
def test_bad_rank_in_from_dense_leaves_module(rank):
    dense = nn.Linear(12, 20)
    before = {k: v.clone() for k, v in dense.state_dict().items()}
    with pytest.raises((ValueError, TypeError), match="rank"):
        LowRankLinear.from_dense(dense, rank)
    for k, v in dense.state_dict().items():
        assert torch.equal(v, before[k])


@pytest.mark.parametrize(("name", "value"), [("in_features", 0), ("out_features", -3)])
def test_bad_features(name, value):
    kwargs = {"in_features": 4, "out_features": 4, name: value}
    with pytest.raises(ValueError, match=f"{name}={value!r}"):
        LowRankLinear(rank=1, **kwargs)


@pytest.mark.parametrize(("name", "value"), [("in_features", 2.0), ("out_features", True),
                                             ("in_features", "4"), ("bias", "no")])
def test_bad_feature_types(name, value):
    kwargs = {"in_features": 4, "out_features": 4, name: value}
    with pytest.raises(TypeError, match=f"{name} must be a"):
        LowRankLinear(rank=1, **kwargs)


@settings(max_examples=40, deadline=None)
@given(full=st.integers(1, 200), frac=st.floats(1e-6, 1.0), groups=st.sampled_from([1, 2, 4]))
def test_resolve_rank_float_property(full, frac, groups):
    full = full * groups
    r = resolve_rank(frac, full, multiple_of=groups)
    assert isinstance(r, int)
    assert groups <= r <= full
    assert r % groups == 0
    units = full // groups
    assert abs(r // groups - frac * units) <= 0.5 or r == groups
    assert resolve_rank(1.0, full, multiple_of=groups) == full


@settings(max_examples=40, deadline=None)
@given(full=st.integers(1, 100), rank=st.integers(-5, 120))
def test_resolve_rank_int_property(full, rank):
    if 1 <= rank <= full:
        assert resolve_rank(rank, full) == rank
    else:
        with pytest.raises(ValueError, match=f"rank={rank}"):
            resolve_rank(rank, full)


def test_break_even_rank():
    assert break_even_rank(100, 100) == 50
    assert break_even_rank(30, 10) == 7.5
    # below break-even the factors are smaller than the dense weight
    layer = LowRankLinear(100, 100, rank=49, bias=False)
    assert layer.U.numel() + layer.V.numel() < 100 * 100


# --------------------------------------------------------------------------- default init


def test_reset_parameters_product_variance():
    torch.manual_seed(7)
    in_f, out_f, r = 400, 300, 20
    layers = [LowRankLinear(in_f, out_f, rank=r) for _ in range(8)]
    ws = torch.stack([layer.dense_weight().detach() for layer in layers])
    # PyTorch's default Linear init (Kaiming-uniform, a=sqrt(5)) has variance 1/(3 fan_in)
    target = 1.0 / (3 * in_f)
    assert abs(ws.mean().item()) < 0.02 * math.sqrt(target)
    # averaged over 8 layers the estimate is within ~2.5% (worst of 100 seeds)
    assert ws.var(dim=(1, 2)).mean().item() == pytest.approx(target, rel=0.05)
    # balanced factors: m Var U == n Var V
    var_u = sum(layer.U.var().item() for layer in layers)
    var_v = sum(layer.V.var().item() for layer in layers)
    assert out_f * var_u == pytest.approx(in_f * var_v, rel=0.05)
    # bias as nn.Linear draws it
    bound = 1 / math.sqrt(in_f)
    biases = torch.stack([layer.bias.detach() for layer in layers])
    assert biases.abs().max().item() <= bound
    assert biases.abs().max().item() > 0.95 * bound


def test_reset_parameters_matches_dense_default_variance():
    torch.manual_seed(8)
    dense_var = torch.stack([nn.Linear(256, 128).weight.detach() for _ in range(8)]).var()
    lowrank_var = torch.stack([LowRankLinear(256, 128, rank=16).dense_weight().detach()
                               for _ in range(8)]).var()
    assert dense_var.item() == pytest.approx(1 / (3 * 256), rel=0.02)
    assert lowrank_var.item() == pytest.approx(dense_var.item(), rel=0.06)


def test_reset_parameters_redraws():
    torch.manual_seed(9)
    layer = LowRankLinear(10, 10, rank=3)
    u = layer.U.detach().clone()
    layer.reset_parameters()
    assert not torch.equal(u, layer.U)


def test_default_init_ignores_weight():
    torch.manual_seed(10)
    dense = nn.Linear(50, 40)
    layer = LowRankLinear.from_dense(dense, 40, init="default")
    # not the dense function, but the bias is copied
    assert not torch.allclose(layer.dense_weight(), dense.weight, atol=1e-3)
    assert torch.equal(layer.bias, dense.bias)


def test_custom_init_callable_and_kwargs():
    seen = {}

    def init(layer, weight=None, bias=None, scale=1.0):
        seen.update(weight=weight, scale=scale)
        with torch.no_grad():
            layer.U.fill_(scale)
            layer.V.fill_(1.0)
        return layer

    dense = nn.Linear(4, 3)
    layer = LowRankLinear.from_dense(dense, 2, init=init, scale=0.5)
    assert torch.equal(seen["weight"], dense.weight)
    assert seen["scale"] == 0.5
    assert torch.all(layer.U == 0.5)


def test_unknown_init_name():
    with pytest.raises(ValueError, match="bogus"):
        LowRankLinear.from_dense(nn.Linear(4, 3), 2, init="bogus")


# --------------------------------------------------------------------------- repr / io


def test_extra_repr():
    s = repr(LowRankLinear(8, 6, rank=3, bias=False))
    assert s.startswith("LowRankLinear(")
    for part in ("in_features=8", "out_features=6", "rank=3", "bias=False"):
        assert part in s
    assert "bias=True" in repr(LowRankLinear(8, 6, rank=3))


def test_state_dict_round_trip():
    torch.manual_seed(11)
    a = LowRankLinear(12, 9, rank=4)
    sd = a.state_dict()
    assert set(sd) == {"U", "V", "bias"}
    b = LowRankLinear(12, 9, rank=4)
    assert not torch.equal(a.U, b.U)
    b.load_state_dict(sd)
    x = torch.randn(5, 12)
    assert torch.equal(a(x), b(x))
    c = LowRankLinear(12, 9, rank=5)
    with pytest.raises(RuntimeError, match="size mismatch"):
        c.load_state_dict(sd)


def test_dtype_and_device():
    layer = LowRankLinear(6, 5, rank=2, dtype=torch.float64, device="cpu")
    for p in layer.parameters():
        assert p.dtype == torch.float64 and p.device.type == "cpu"
    assert layer(torch.randn(3, 6, dtype=torch.float64)).dtype == torch.float64
    dense = nn.Linear(6, 5, dtype=torch.float64)
    lr = LowRankLinear.from_dense(dense, 5)
    assert lr.U.dtype == torch.float64
    assert lr.to_dense().weight.dtype == torch.float64


# --------------------------------------------------------------------------- bad modules


@pytest.mark.parametrize("module", [nn.Conv2d(3, 3, 3), nn.LayerNorm(4), nn.Bilinear(3, 3, 3)])
def test_from_dense_wrong_type(module):
    with pytest.raises(TypeError, match="nn.Linear"):
        LowRankLinear.from_dense(module, 1)


@pytest.mark.parametrize("where", ["weight", "bias"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_from_dense_non_finite(where, bad):
    dense = nn.Linear(6, 4)
    with torch.no_grad():
        getattr(dense, where)[0] = bad
    before = {k: v.clone() for k, v in dense.state_dict().items()}
    with pytest.raises(ValueError, match=where):
        LowRankLinear.from_dense(dense, 2)
    for k, v in dense.state_dict().items():
        torch.testing.assert_close(v, before[k], rtol=0, atol=0, equal_nan=True)


# --------------------------------------------------------------------------- properties


@settings(max_examples=30, deadline=None)
@given(in_f=st.integers(1, 24), out_f=st.integers(1, 24), bias=st.booleans(),
       batch=st.integers(1, 4), seed=st.integers(0, 2**16))
def test_property_full_rank_exact(in_f, out_f, bias, batch, seed):
    torch.manual_seed(seed)
    dense = nn.Linear(in_f, out_f, bias=bias, dtype=torch.float64)
    layer = LowRankLinear.from_dense(dense, 1.0)
    assert layer.rank == min(in_f, out_f)
    x = torch.randn(batch, in_f, dtype=torch.float64)
    torch.testing.assert_close(layer(x), dense(x), rtol=1e-9, atol=1e-10)


@settings(max_examples=30, deadline=None)
@given(in_f=st.integers(2, 24), out_f=st.integers(2, 24), data=st.data())
def test_property_rank_r_is_best_approximation(in_f, out_f, data):
    r = data.draw(st.integers(1, min(in_f, out_f)))
    torch.manual_seed(in_f * 100 + out_f)
    dense = nn.Linear(in_f, out_f, dtype=torch.float64)
    layer = LowRankLinear.from_dense(dense, r, svd_method="exact")
    s = torch.linalg.svdvals(dense.weight.detach())
    err = (layer.dense_weight() - dense.weight).norm().item()
    assert err == pytest.approx(s[r:].square().sum().sqrt().item(), rel=1e-7, abs=1e-10)


def test_numpy_integer_ranks_are_accepted():
    import numpy as np

    assert LowRankLinear(8, 6, np.int64(3)).rank == 3
    assert LowRankLinear(8, 6, np.float32(0.5)).rank == 3
