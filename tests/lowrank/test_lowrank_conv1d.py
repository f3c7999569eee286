"""LowRankConv1d: exact at full rank against nn.Conv1d for every padding and
grouping, spectral factors optimal, surgery, calibration, save / load, errors."""

import re

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from compactnn import LowRankConv1d, factorize, load_model, merge, save_model
from compactnn.lowrank import dense_matrix, to_lowrank

torch.set_num_threads(1)


@settings(max_examples=25, deadline=None)
@given(k=st.integers(1, 5), stride=st.integers(1, 3), dilation=st.integers(1, 2),
       groups=st.sampled_from([1, 2]), pad=st.sampled_from([0, 1, 2, "same", "valid"]),
       mode=st.sampled_from(["zeros", "reflect", "replicate", "circular"]),
       bias=st.booleans(), seed=st.integers(0, 100))
def test_full_rank_equals_the_dense_conv1d(k, stride, dilation, groups, pad, mode, bias, seed):
    if pad == "same" and stride != 1:
        return
    torch.manual_seed(seed)
    dense = nn.Conv1d(4, 6, k, stride=stride, padding=pad, dilation=dilation, groups=groups,
                      bias=bias, padding_mode=mode)
    full = to_lowrank(dense, 1.0)
    assert isinstance(full, LowRankConv1d) and full.rank == min(6, 4 * k // groups * groups)
    x = torch.randn(2, 4, 12)
    torch.testing.assert_close(full(x), dense(x), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(full(x[0]), dense(x[0]), rtol=1e-4, atol=1e-5)  # unbatched
    torch.testing.assert_close(full.dense_weight(), dense.weight, rtol=1e-4, atol=1e-5)
    back = full.to_dense()
    assert type(back) is nn.Conv1d and back.padding_mode == mode
    torch.testing.assert_close(back(x), dense(x), rtol=1e-4, atol=1e-5)


def test_truncation_is_the_best_rank_r_kernel_and_rows_are_the_unfolded_windows():
    torch.manual_seed(0)
    dense = nn.Conv1d(8, 16, 3, padding=1)
    low = to_lowrank(dense, 4)
    w = dense_matrix(dense)[0]
    assert w.shape == (16, 24)
    u, s, vh = torch.linalg.svd(w)
    best = (u[:, :4] * s[:4]) @ vh[:4]
    torch.testing.assert_close(low.weight_to_matrix(low.dense_weight())[0], best,
                               rtol=1e-4, atol=1e-5)
    x = torch.randn(3, 8, 10)
    rows = low.input_rows(x)
    assert rows.shape == (30, 24)
    # a row times the matrix view is the dense output at that position
    torch.testing.assert_close(rows @ w.T + dense.bias,
                               dense(x).transpose(1, 2).reshape(-1, 16), rtol=1e-4, atol=1e-5)


def test_factorize_an_audio_style_model_with_calibration_and_save_load(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv1d(8, 32, 5, padding=2), nn.ReLU(),
                          nn.Conv1d(32, 32, 3, padding=1), nn.ReLU(), nn.Flatten(),
                          nn.Linear(32 * 16, 4))
    x = torch.randn(16, 8, 16)
    out, report = factorize(model, rank=6, init="whitened", calibration=x,
                            example_inputs=x[:1])
    kinds = {r.name: r.kind for r in report.layers if r.rank is not None}
    assert kinds == {"0": "Conv1d", "2": "Conv1d"}  # the 4-output head is below rank 6
    conv = next(r for r in report.layers if r.name == "2")
    assert conv.macs_before == 16 * 32 * 96 and conv.macs_after == 16 * 6 * (32 + 96)
    assert isinstance(out[0], LowRankConv1d)
    spectral, _ = factorize(model, rank=6)
    with torch.no_grad():
        err = (out(x) - model(x)).pow(2).mean()
        assert err < (spectral(x) - model(x)).pow(2).mean()
        torch.testing.assert_close(merge(out)(x), out(x), rtol=1e-4, atol=1e-5)
    save_model(out, tmp_path / "m.safetensors")
    fresh = nn.Sequential(nn.Conv1d(8, 32, 5, padding=2), nn.ReLU(),
                          nn.Conv1d(32, 32, 3, padding=1), nn.ReLU(), nn.Flatten(),
                          nn.Linear(32 * 16, 4))
    load_model(fresh, tmp_path / "m.safetensors")
    with torch.no_grad():
        torch.testing.assert_close(fresh(x), out(x))


def test_errors_and_unsupported_types_are_named_in_the_report():
    with pytest.raises(ValueError, match="channel scheme only"):
        LowRankConv1d(4, 4, 3, rank=2, scheme="spatial")
    with pytest.raises(ValueError, match="1-tuple"):
        LowRankConv1d(4, 4, (3, 3), rank=2)
    with pytest.raises(ValueError, match=r"\(N, C, L\)"):
        LowRankConv1d(4, 4, 3, rank=2)(torch.randn(1, 4, 1, 8))
    model = nn.Sequential(nn.Conv3d(2, 4, 3), nn.Flatten(), nn.LazyLinear(3))
    model(torch.randn(1, 2, 4, 4, 4))
    _, report = factorize(model, rank=1)
    fate = {r.name: r.note for r in report.layers}
    assert fate["0"] == "unsupported type Conv3d: kept dense"


@pytest.mark.parametrize("kwargs, message", [
    (dict(kernel_size=0), "kernel_size must be >= 1, got kernel_size=0"),
    (dict(stride=0), "stride must be >= 1, got stride=0"),
    (dict(dilation=(0,)), "dilation must be >= 1, got dilation=0"),
    (dict(padding=-1), "padding must be >= 0, got padding=-1"),
])
def test_range_errors_name_the_one_dimensional_value(kwargs, message):
    # not the (1, k) pair of the 2-D layer underneath
    args = dict(in_channels=4, out_channels=4, kernel_size=3, rank=2)
    args.update(kwargs)
    with pytest.raises(ValueError, match=re.escape(message)):
        LowRankConv1d(**args)
