"""LowRankConv2d, both schemes: exactness at full rank over every nn.Conv2d
option, the thin forward, the matrix view, rank semantics, default init, conversion,
serialization and bad inputs."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from compactnn import LowRankConv2d
from compactnn.lowrank import CONV_SCHEMES

SCHEMES = list(CONV_SCHEMES)
PAD_MODES = ["zeros", "reflect", "replicate", "circular"]
F64 = torch.float64

pytestmark = pytest.mark.filterwarnings(
    "ignore:Using padding='same' with even kernel lengths:UserWarning")


class ShapeRecorder(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.shapes: list[tuple[int, ...]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, tuple | list) else (out,):
            if isinstance(t, torch.Tensor):
                self.shapes.append(tuple(t.shape))
        return out


def assert_exact(dense: nn.Conv2d, scheme: str, x: torch.Tensor) -> LowRankConv2d:
    layer = LowRankConv2d.from_dense(dense, 1.0, init="spectral", scheme=scheme)
    assert layer.rank == layer.full_rank
    ref = dense(x)
    out = layer(x)
    assert out.shape == ref.shape
    torch.testing.assert_close(out, ref, rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(layer.dense_weight(), dense.weight, rtol=1e-9, atol=1e-10)
    back = layer.to_dense()
    assert type(back) is nn.Conv2d
    for attr in ("in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation",
                 "groups", "padding_mode"):
        assert getattr(back, attr) == getattr(dense, attr), attr
    assert (back.bias is None) == (dense.bias is None)
    torch.testing.assert_close(back(x), ref, rtol=1e-9, atol=1e-10)
    return layer


# --------------------------------------------------------------------------- exactness

GEOMETRY = [
    # kernel, stride, padding, dilation
    (3, 1, 0, 1),
    (3, 2, 1, 1),
    ((3, 2), (2, 1), (1, 0), 1),
    (3, 1, (2, 1), (2, 1)),
    (3, (1, 2), 2, 2),
    (1, 1, 0, 1),
    ((1, 3), 1, (0, 1), 1),
    ((4, 1), 3, (1, 0), 1),
    (3, 1, "same", 1),
    (2, 1, "same", 1),  # even kernel: PyTorch pads the extra pixel at the bottom/right
    ((4, 2), 1, "same", (1, 2)),
    ((2, 3), 1, "same", 3),
    (3, 1, "valid", 1),
    ((2, 4), 1, "valid", (2, 1)),
]


@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize(("kernel", "stride", "padding", "dilation"), GEOMETRY)
@pytest.mark.parametrize("padding_mode", PAD_MODES)
def test_full_rank_exact_geometry(scheme, kernel, stride, padding, dilation, padding_mode):
    torch.manual_seed(0)
    dense = nn.Conv2d(4, 6, kernel, stride=stride, padding=padding, dilation=dilation,
                      padding_mode=padding_mode, dtype=F64)
    x = torch.randn(2, 4, 11, 10, dtype=F64)
    assert_exact(dense, scheme, x)


@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize(("cin", "cout", "groups"), [(4, 6, 2), (6, 6, 3), (4, 8, 4), (3, 6, 3)])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("padding", [1, "same"])
@pytest.mark.parametrize("padding_mode", ["zeros", "circular"])
def test_full_rank_exact_groups_bias(scheme, cin, cout, groups, bias, padding, padding_mode):
    torch.manual_seed(1)
    dense = nn.Conv2d(cin, cout, (3, 2), padding=padding, groups=groups, bias=bias,
                      padding_mode=padding_mode, dtype=F64)
    x = torch.randn(2, cin, 7, 6, dtype=F64)
    layer = assert_exact(dense, scheme, x)
    assert layer.rank % groups == 0


@pytest.mark.parametrize("scheme", SCHEMES)
def test_full_rank_float32_close(scheme):
    torch.manual_seed(2)
    dense = nn.Conv2d(8, 16, 3, padding=1)
    layer = LowRankConv2d.from_dense(dense, 1.0, scheme=scheme)
    x = torch.randn(2, 8, 9, 9)
    torch.testing.assert_close(layer(x), dense(x), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("scheme", SCHEMES)
def test_to_dense_round_trip_low_rank(scheme):
    torch.manual_seed(3)
    layer = LowRankConv2d(6, 8, 3, rank=4, padding=1, groups=2, scheme=scheme, dtype=F64)
    dense = layer.to_dense()
    x = torch.randn(2, 6, 8, 8, dtype=F64)
    torch.testing.assert_close(dense(x), layer(x), rtol=1e-9, atol=1e-10)
    # the matrix view of the rebuilt kernel has rank r/G per group
    mat = layer.weight_to_matrix(dense.weight.detach())
    assert torch.linalg.matrix_rank(mat).tolist() == [2, 2]
    again = LowRankConv2d.from_dense(dense, 4, scheme=scheme)
    torch.testing.assert_close(again(x), layer(x), rtol=1e-8, atol=1e-9)


# --------------------------------------------------------------------------- matrix view


@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("groups", [1, 2])
def test_matrix_view_round_trip(scheme, groups):
    torch.manual_seed(4)
    layer = LowRankConv2d(4, 6, (3, 2), rank=2 * groups, groups=groups, scheme=scheme)
    w = torch.randn(6, 4 // groups, 3, 2)
    mat = layer.weight_to_matrix(w)
    g, m, n = layer.matrix_shape
    assert mat.shape == (g, m, n) == (groups, *(
        (6 // groups, 4 // groups * 6) if scheme == "channel" else
        (6 // groups * 3, 4 // groups * 2)))
    assert torch.equal(layer.matrix_to_weight(mat), w)
    u, v = layer.factor_matrices()
    assert u.shape == (g, m, 2) and v.shape == (g, 2, n)
    # set_factor_matrices is the inverse of factor_matrices
    u2, v2 = torch.randn_like(u), torch.randn_like(v)
    layer.set_factor_matrices(u2, v2)
    u3, v3 = layer.factor_matrices()
    assert torch.equal(u3, u2) and torch.equal(v3, v2)
    # and dense_weight is U @ V seen back in the kernel layout
    torch.testing.assert_close(layer.dense_weight(), layer.matrix_to_weight(u2 @ v2))


def test_spatial_matrix_is_the_jaderberg_view():
    # spatial scheme: W[o, i, y, x] seen as rows (o, y) and columns (i, x)
    layer = LowRankConv2d(2, 3, (4, 5), rank=1, scheme="spatial")
    w = torch.randn(3, 2, 4, 5)
    mat = layer.weight_to_matrix(w)[0]
    o, i, y, x = 2, 1, 3, 4
    assert mat[o * 4 + y, i * 5 + x] == w[o, i, y, x]


@pytest.mark.parametrize("scheme", SCHEMES)
def test_full_rank_value(scheme):
    layer = LowRankConv2d(4, 10, (3, 2), rank=1.0, groups=2, scheme=scheme)
    if scheme == "channel":  # per group 5 x (2*3*2)
        assert layer.full_rank == 2 * min(5, 12)
    else:  # per group (5*3) x (2*2)
        assert layer.full_rank == 2 * min(15, 4)
    assert layer.rank == layer.full_rank


# --------------------------------------------------------------------------- thin forward


@pytest.mark.parametrize("scheme", SCHEMES)
def test_parameter_shapes_and_gradients(scheme):
    torch.manual_seed(5)
    layer = LowRankConv2d(6, 8, (3, 5), rank=4, groups=2, scheme=scheme, padding=1)
    if scheme == "channel":
        assert layer.V.shape == (4, 3, 3, 5) and layer.U.shape == (8, 2, 1, 1)
    else:
        assert layer.V.shape == (4, 3, 1, 5) and layer.U.shape == (8, 2, 3, 1)
    assert {n for n, _ in layer.named_parameters()} == {"U", "V", "bias"}
    x = torch.randn(2, 6, 9, 9, requires_grad=True)
    layer(x).square().sum().backward()
    for p in (layer.U, layer.V, layer.bias, x):
        assert p.grad is not None and p.grad.abs().sum() > 0


@pytest.mark.parametrize("scheme", SCHEMES)
def test_gradients_match_dense_kernel_reference(scheme):
    torch.manual_seed(6)
    layer = LowRankConv2d(4, 6, 3, rank=2, groups=2, padding=1, stride=(2, 1), scheme=scheme,
                          padding_mode="reflect", dtype=F64)
    x = torch.randn(2, 4, 7, 8, dtype=F64)
    layer(x).sin().sum().backward()
    gu, gv = layer.U.grad.clone(), layer.V.grad.clone()
    # reference: the dense conv with kernel U @ V, differentiated through the matrix view
    ref = LowRankConv2d(4, 6, 3, rank=2, groups=2, padding=1, stride=(2, 1), scheme=scheme,
                        padding_mode="reflect", dtype=F64)
    ref.load_state_dict(layer.state_dict())
    dense = layer.to_dense()
    out = torch.nn.functional.conv2d(
        torch.nn.functional.pad(x, (1, 1, 1, 1), mode="reflect"), ref.dense_weight(),
        ref.bias, dense.stride, 0, dense.dilation, dense.groups)
    out.sin().sum().backward()
    torch.testing.assert_close(gu, ref.U.grad)
    torch.testing.assert_close(gv, ref.V.grad)


@pytest.mark.parametrize("scheme", SCHEMES)
def test_forward_never_builds_the_dense_kernel(scheme):
    torch.manual_seed(7)
    layer = LowRankConv2d(16, 24, 3, rank=2, padding=1, scheme=scheme)
    x = torch.randn(1, 16, 5, 5, requires_grad=True)
    kernel = (24, 16, 3, 3)
    g, m, n = layer.matrix_shape
    with ShapeRecorder() as rec:
        layer(x).sum().backward()
    assert rec.shapes
    assert kernel not in rec.shapes and (m, n) not in rec.shapes and (g, m, n) not in rec.shapes
    assert max(math.prod(s) for s in rec.shapes) < math.prod(kernel)
    with ShapeRecorder() as rec:
        layer.dense_weight()
    assert kernel in rec.shapes


@pytest.mark.parametrize("scheme", SCHEMES)
def test_forward_huge_channels_low_rank(scheme):
    # The dense 3x3 kernel 60k -> 60k would take 130 GB.
    c = 60_000
    layer = LowRankConv2d(c, c, 3, rank=1, padding=1, bias=False, scheme=scheme)
    y = layer(torch.randn(1, c, 3, 3))
    assert y.shape == (1, c, 3, 3)
    assert torch.isfinite(y).all()


# --------------------------------------------------------------------------- rank semantics


@pytest.mark.parametrize(("rank", "groups", "expected"), [
    (1.0, 1, 8), (0.5, 1, 4), (1e-6, 1, 1), (0.5, 2, 4), (0.3, 2, 2), (1e-6, 4, 4), (1.0, 4, 8),
    (6, 2, 6), (8, 4, 8),
])
def test_rank_resolution(rank, groups, expected):
    # channel scheme, 8 -> 8 channels, 3x3: per group (8/G) x (8/G*9), full rank 8
    layer = LowRankConv2d(8, 8, 3, rank=rank, groups=groups)
    assert layer.rank == expected
    assert layer.V.shape[0] == expected
    assert layer.U.shape[1] == expected // groups


@pytest.mark.parametrize(
    ("rank", "groups", "exc", "needle"),
    [
        (0, 1, ValueError, "rank=0"),
        (-1, 1, ValueError, "rank=-1"),
        (9, 1, ValueError, "rank=9"),
        (1.5, 1, ValueError, "rank=1.5"),
        (0.0, 1, ValueError, "rank=0.0"),
        (True, 1, TypeError, "True"),
        ("4", 1, TypeError, "'4'"),
        (3, 2, ValueError, "rank=3"),
        (6, 4, ValueError, "groups=4"),
    ],
)
@pytest.mark.parametrize("scheme", SCHEMES)
def test_bad_rank(rank, groups, exc, needle, scheme):
    # channel: full rank 8; spatial: per group (8/G*3) x (8/G*3), full rank 24
    if scheme == "spatial" and rank == 9:
        rank, needle = 25, "rank=25"
    with pytest.raises(exc, match="rank") as info:
        LowRankConv2d(8, 8, 3, rank=rank, groups=groups, scheme=scheme)
    assert needle in str(info.value)


@pytest.mark.parametrize(("kwargs", "needle"), [
    ({"scheme": "tucker"}, "scheme must be one of 'channel', 'spatial'; got 'tucker'"),
    ({"padding_mode": "mirror"}, "got 'mirror'"),
    ({"padding": "full"}, "'full'"),
    ({"padding": -1}, "padding=-1"),
    ({"padding": "same", "stride": 2}, "stride=(2, 2)"),
    ({"padding": "same", "stride": (1, 2)}, "stride=(1, 2)"),
    ({"groups": 3}, "groups=3"),
    ({"groups": 0}, "groups=0"),
    ({"stride": 0}, "(0, 0)"),
    ({"in_channels": 0}, "in_channels=0"),
])
def test_bad_constructor_args(kwargs, needle):
    args = {"in_channels": 4, "out_channels": 8, "kernel_size": 3, "rank": 2, **kwargs}
    with pytest.raises(ValueError) as info:
        LowRankConv2d(**args)
    assert needle in str(info.value)


@pytest.mark.parametrize("module", [nn.Linear(3, 3), nn.Conv1d(3, 3, 3), nn.BatchNorm2d(3),
                                    nn.ConvTranspose2d(3, 3, 3)])
def test_from_dense_wrong_type(module):
    with pytest.raises(TypeError, match="nn.Conv2d"):
        LowRankConv2d.from_dense(module, 1)


@pytest.mark.parametrize("where", ["weight", "bias"])
@pytest.mark.parametrize("scheme", SCHEMES)
def test_from_dense_non_finite(where, scheme):
    dense = nn.Conv2d(3, 4, 3)
    with torch.no_grad():
        getattr(dense, where).view(-1)[1] = float("nan")
    with pytest.raises(ValueError, match=where):
        LowRankConv2d.from_dense(dense, 2, scheme=scheme)


def test_from_dense_bad_scheme():
    with pytest.raises(ValueError, match="scheme must be one of .*got 'cp'"):
        LowRankConv2d.from_dense(nn.Conv2d(3, 4, 3), 2, scheme="cp")


# --------------------------------------------------------------------------- default init


@pytest.mark.parametrize("scheme", SCHEMES)
def test_reset_parameters_product_variance(scheme):
    torch.manual_seed(8)
    cin, cout, k, groups = 32, 48, 3, 2
    fan_in = cin // groups * k * k
    layers = [LowRankConv2d(cin, cout, k, rank=16, groups=groups, scheme=scheme)
              for _ in range(8)]
    ws = torch.stack([layer.dense_weight().detach() for layer in layers])
    dense_ws = torch.stack([nn.Conv2d(cin, cout, k, groups=groups).weight.detach()
                            for _ in range(8)])
    target = 1 / (3 * fan_in)
    assert dense_ws.var().item() == pytest.approx(target, rel=0.03)
    assert ws.var().item() == pytest.approx(target, rel=0.06)
    assert abs(ws.mean().item()) < 0.03 * math.sqrt(target)
    bound = 1 / math.sqrt(fan_in)
    assert max(layer.bias.abs().max().item() for layer in layers) <= bound


# --------------------------------------------------------------------------- repr / io


def test_extra_repr():
    s = repr(LowRankConv2d(4, 6, 3, rank=2, padding="same", dilation=2, groups=2, bias=False,
                           padding_mode="reflect", scheme="spatial"))
    assert s.startswith("LowRankConv2d(4, 6, kernel_size=(3, 3)")
    for part in ("rank=2", "scheme='spatial'", "padding='same'", "dilation=(2, 2)",
                 "groups=2", "bias=False", "padding_mode='reflect'", "stride=(1, 1)"):
        assert part in s, part
    plain = repr(LowRankConv2d(4, 6, 3, rank=2))
    assert "scheme='channel'" in plain
    for absent in ("padding", "dilation", "groups", "bias"):
        assert absent not in plain, absent
    assert "padding=(1, 2)" in repr(LowRankConv2d(4, 6, 3, rank=2, padding=(1, 2)))


@pytest.mark.parametrize("scheme", SCHEMES)
def test_state_dict_round_trip(scheme):
    torch.manual_seed(9)
    kw = dict(rank=4, stride=2, padding=1, groups=2, padding_mode="replicate", scheme=scheme)
    a = LowRankConv2d(4, 6, 3, **kw)
    b = LowRankConv2d(4, 6, 3, **kw)
    assert set(a.state_dict()) == {"U", "V", "bias"}
    b.load_state_dict(a.state_dict())
    x = torch.randn(2, 4, 9, 9)
    assert torch.equal(a(x), b(x))


@pytest.mark.parametrize("scheme", SCHEMES)
def test_dtype_and_device(scheme):
    layer = LowRankConv2d(3, 4, 3, rank=2, scheme=scheme, dtype=F64, device="cpu")
    for p in layer.parameters():
        assert p.dtype == F64 and p.device.type == "cpu"
    assert layer(torch.randn(1, 3, 5, 5, dtype=F64)).dtype == F64
    assert layer.to_dense().weight.dtype == F64
    dense = nn.Conv2d(3, 4, 3, dtype=F64)
    assert LowRankConv2d.from_dense(dense, 2, scheme=scheme).V.dtype == F64


def test_conv_kwargs_rebuild_dense():
    layer = LowRankConv2d(4, 6, (3, 2), rank=2, stride=(2, 1), padding=(1, 0), dilation=(1, 2),
                          groups=2, bias=False, padding_mode="circular")
    dense = nn.Conv2d(**layer.conv_kwargs())
    assert dense.weight.shape == layer.dense_weight().shape
    assert dense.padding_mode == "circular" and dense.bias is None


# --------------------------------------------------------------------------- properties


@settings(max_examples=40, deadline=None)
@given(
    groups=st.sampled_from([1, 2]),
    cin_g=st.integers(1, 3), cout_g=st.integers(1, 3),
    kh=st.integers(1, 4), kw=st.integers(1, 4),
    sh=st.integers(1, 3), sw=st.integers(1, 3),
    dh=st.integers(1, 2), dw=st.integers(1, 2),
    pad=st.sampled_from(["same", "valid", 0, 1, (2, 1)]),
    padding_mode=st.sampled_from(PAD_MODES),
    bias=st.booleans(),
    scheme=st.sampled_from(SCHEMES),
    seed=st.integers(0, 2**16),
)
def test_property_full_rank_exact(groups, cin_g, cout_g, kh, kw, sh, sw, dh, dw, pad,
                                  padding_mode, bias, scheme, seed):
    if pad == "same":
        sh = sw = 1
    torch.manual_seed(seed)
    dense = nn.Conv2d(cin_g * groups, cout_g * groups, (kh, kw), stride=(sh, sw), padding=pad,
                      dilation=(dh, dw), groups=groups, bias=bias, padding_mode=padding_mode,
                      dtype=F64)
    x = torch.randn(1, cin_g * groups, 9, 10, dtype=F64)
    layer = LowRankConv2d.from_dense(dense, 1.0, scheme=scheme)
    torch.testing.assert_close(layer(x), dense(x), rtol=1e-9, atol=1e-10)


@settings(max_examples=40, deadline=None)
@given(groups=st.sampled_from([1, 2, 3]), cin_g=st.integers(1, 4), cout_g=st.integers(1, 4),
       kh=st.integers(1, 3), kw=st.integers(1, 3), scheme=st.sampled_from(SCHEMES),
       frac=st.floats(1e-3, 1.0))
def test_property_rank_resolution(groups, cin_g, cout_g, kh, kw, scheme, frac):
    layer = LowRankConv2d(cin_g * groups, cout_g * groups, (kh, kw), rank=frac, groups=groups,
                          scheme=scheme)
    g, m, n = layer.matrix_shape
    assert g == groups
    assert layer.full_rank == groups * min(m, n)
    assert groups <= layer.rank <= layer.full_rank
    assert layer.rank % groups == 0
    per_group = min(m, n)
    assert layer.rank // groups == min(per_group, max(1, round(frac * per_group)))
    u, v = layer.factor_matrices()
    assert u.shape == (g, m, layer.rank // g) and v.shape == (g, layer.rank // g, n)

