"""The matrix view shared by every low-rank layer: the rows the factors act on
(``input_rows``), the structure (``config`` / ``from_config``), the dense
modules seen through the same view, and the shape check of dense weights."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from compactnn import LowRankConv2d, LowRankLinear
from compactnn.lowrank import dense_matrix, dense_matrix_shape, is_factorizable, to_lowrank


def rows_times_matrix(layer, x):
    """``forward(x)`` rebuilt from ``input_rows``: rows @ (U V)^T + b."""
    (u, v), rows = layer.factor_matrices(), layer.input_rows(x)
    out = rows @ (u[0] @ v[0]).T
    return out if layer.bias is None else out + layer.bias


@settings(max_examples=25, deadline=None)
@given(cin=st.integers(1, 4), cout=st.integers(1, 5), k=st.integers(1, 3),
       stride=st.integers(1, 2), pad=st.sampled_from([0, 1, "same", "valid"]),
       mode=st.sampled_from(["zeros", "reflect", "replicate", "circular"]),
       dil=st.integers(1, 2), hw=st.integers(4, 7))
def test_conv_input_rows_reproduce_the_forward(cin, cout, k, stride, pad, mode, dil, hw):
    if pad == "same" and stride != 1:
        stride = 1
    hw = max(hw, dil * (k - 1) + 1)  # torch refuses a kernel larger than the input
    torch.manual_seed(0)
    layer = LowRankConv2d(cin, cout, k, rank=1, stride=stride, padding=pad, dilation=dil,
                          padding_mode=mode).double()
    x = torch.randn(2, cin, hw, hw, dtype=torch.float64)
    y = layer(x)  # (N, out, Ho, Wo)
    flat = rows_times_matrix(layer, x).reshape(2, y.shape[2], y.shape[3], cout)
    torch.testing.assert_close(flat.permute(0, 3, 1, 2), y)
    assert layer.rows_per_sample(x) == hw * hw


def test_linear_input_rows_flatten_leading_dims():
    layer = LowRankLinear(6, 3, 2).double()
    x = torch.randn(2, 5, 6, dtype=torch.float64)
    torch.testing.assert_close(rows_times_matrix(layer, x), layer(x).reshape(-1, 3))
    assert layer.rows_per_sample(x) == 5
    with pytest.raises(ValueError, match="in_features=6"):
        layer.input_rows(torch.randn(4, 5))


@pytest.mark.parametrize(("kwargs", "needle"), [({"scheme": "spatial"}, "scheme='spatial'"),
                                                ({"groups": 2}, "groups=2")])
def test_input_rows_refused_where_rows_are_not_units(kwargs, needle):
    layer = LowRankConv2d(4, 4, 3, rank=2, **kwargs)
    assert layer.input_rows_problem() is not None
    with pytest.raises(ValueError, match=needle):
        layer.input_rows(torch.randn(1, 4, 5, 5))


@pytest.mark.parametrize("layer", [
    LowRankLinear(7, 5, 3, bias=False),
    LowRankConv2d(4, 6, (3, 1), rank=4, stride=2, padding=(1, 0), dilation=(2, 1), groups=2,
                  padding_mode="reflect", scheme="spatial"),
    LowRankConv2d(3, 5, 3, rank=0.5, padding="same", bias=False),
])
def test_config_round_trip(layer):
    rebuilt = type(layer).from_config(layer.config(), dtype=torch.float64)
    assert rebuilt.config() == layer.config()
    assert rebuilt.U.dtype == torch.float64
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == \
        {k: v.shape for k, v in layer.state_dict().items()}
    rebuilt.load_state_dict(layer.state_dict())
    x = (torch.randn(2, 7) if isinstance(layer, LowRankLinear)
         else torch.randn(2, layer.in_channels, 8, 8))
    torch.testing.assert_close(rebuilt.float()(x), layer(x))


def test_from_config_refuses_bad_input():
    with pytest.raises(TypeError, match="config must be a mapping"):
        LowRankLinear.from_config([4, 4, 2])
    with pytest.raises(TypeError, match="unexpected keyword"):
        LowRankLinear.from_config({"in_features": 4, "out_features": 4, "rank": 2, "x": 1})


@pytest.mark.parametrize("scheme", ["channel", "spatial"])
@pytest.mark.parametrize("groups", [1, 2])
def test_dense_view_is_the_layers_view(scheme, groups):
    conv = nn.Conv2d(4, 6, (3, 2), groups=groups)
    layer = to_lowrank(conv, groups, scheme=scheme)
    assert dense_matrix_shape(conv, scheme) == layer.matrix_shape
    torch.testing.assert_close(dense_matrix(conv, scheme), layer.weight_to_matrix(conv.weight))
    lin = nn.Linear(5, 3)
    assert dense_matrix_shape(lin) == to_lowrank(lin, 2).matrix_shape == (1, 3, 5)
    assert torch.equal(dense_matrix(lin)[0], lin.weight)


def test_dense_view_refuses_other_modules():
    class MyLinear(nn.Linear):
        pass

    assert not is_factorizable(MyLinear(2, 2)) and is_factorizable(nn.Linear(2, 2))
    with pytest.raises(TypeError, match="MyLinear"):
        dense_matrix_shape(MyLinear(2, 2))
    with pytest.raises(ValueError, match="scheme"):
        dense_matrix(nn.Conv2d(2, 2, 3), "tucker")


@pytest.mark.parametrize("bad", [lambda w: w.T, lambda w: w.reshape(-1), lambda w: w[:, :-1]])
def test_dense_weight_shape_is_checked_not_only_its_size(bad):
    layer = LowRankLinear(6, 4, 2)
    with pytest.raises(ValueError, match=r"weight must have shape \(4, 6\)"):
        layer.check_dense_weight(bad(torch.randn(4, 6)))
    with pytest.raises(TypeError, match="floating"):
        layer.check_dense_weight(torch.ones(4, 6, dtype=torch.long))
    with pytest.raises(ValueError, match="meta"):
        layer.check_dense_weight(torch.empty(4, 6, device="meta"))
