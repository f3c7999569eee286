"""Budgets of model surgery: parameter and MAC ratios met from below, the
allocation schemes, break-even, MAC counts, and the report."""

from __future__ import annotations

import warnings

import pytest
import torch
from surgery_models import MODELS, assert_unchanged, build, lowrank_names, n_params, snapshot
from torch import nn

from compactnn import FactorizeReport, LowRankConv2d, LowRankLinear, count_macs, factorize

pytestmark = pytest.mark.filterwarnings("error:budget met only:UserWarning")


# --------------------------------------------------------------------------- budgets


BUDGET_CASES = [(name, key, scheme, alloc)
                for name in MODELS
                for key in ("param_ratio", "flop_ratio")
                for scheme in (("channel", "spatial") if name == "cnn" else ("channel",))
                for alloc in ("uniform", "energy")]


@pytest.mark.parametrize(("name", "key", "scheme", "allocation"), BUDGET_CASES)
@pytest.mark.parametrize("target", [0.2, 0.45, 0.7])
def test_budget_met_within_two_percent(name, key, scheme, allocation, target):
    model, x = build(name)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "budget met only to" warning either
        out, report = factorize(model, **{key: target}, conv_scheme=scheme,
                                allocation=allocation, example_inputs=x)
    if key == "param_ratio":
        achieved = n_params(out) / n_params(model)
        assert report.param_ratio == pytest.approx(achieved)
    else:
        achieved = count_macs(out, x) / count_macs(model, x)
        assert report.flop_ratio == pytest.approx(achieved)
    assert 0.98 * target <= achieved <= target
    # the report's totals are the returned model's own counts
    assert report.params_before == n_params(model)
    assert report.params_after == n_params(out)
    assert report.macs_before == count_macs(model, x)
    assert report.macs_after == count_macs(out, x)
    # and the per-layer rows add up to the totals
    delta = sum(r.params_after - r.params_before for r in report.layers)
    assert report.params_after - report.params_before == delta
    delta_macs = sum(r.macs_after - r.macs_before for r in report.layers)
    assert report.macs_after - report.macs_before == delta_macs
    # the ranks in the report are the ranks in the model
    layers = lowrank_names(out)
    assert {r.name: r.rank for r in report.layers if r.rank is not None} == {
        n: m.rank for n, m in layers.items()}
    assert out(x).shape == model(x).shape


@pytest.mark.parametrize("key", ["param_ratio", "flop_ratio"])
def test_budget_on_a_partly_factorized_model_counts_its_lowrank_layers(key):
    model, x = build("nested")
    partly, _ = factorize(model, rank=8, include=["fc1"])
    out, report = factorize(partly, **{key: 0.5}, exclude=["fc1"], example_inputs=x)
    assert report.params_before == n_params(partly)
    assert report.macs_before == count_macs(partly, x)
    assert report.macs_after == count_macs(out, x)
    if key == "param_ratio":
        achieved = n_params(out) / n_params(partly)
    else:
        achieved = count_macs(out, x) / count_macs(partly, x)
    assert 0.98 * 0.5 <= achieved <= 0.5


def test_flop_ratio_without_example_inputs_linear_only_counts_rows():
    model, x = build("mlp")
    out, report = factorize(model, flop_ratio=0.4)
    assert report.macs_before == count_macs(model, x[:1])
    ratio = count_macs(out, x) / count_macs(model, x)  # per-row MACs scale with rows
    assert 0.98 * 0.4 <= ratio <= 0.4


def test_flop_ratio_conv_needs_example_inputs():
    model, _ = build("cnn")
    snap = snapshot(model)
    with pytest.raises(ValueError, match="example_inputs"):
        factorize(model, flop_ratio=0.5)
    assert_unchanged(model, snap)


@pytest.mark.parametrize("scheme", ["channel", "spatial"])
def test_count_macs_matches_hand_count(scheme):
    conv = nn.Conv2d(4, 6, (3, 2), stride=(2, 1), padding=(1, 0))
    x = torch.randn(2, 4, 9, 7)
    y = conv(x)
    n, _, h_out, w_out = y.shape
    assert count_macs(conv, x) == n * h_out * w_out * 6 * 4 * 3 * 2
    layer = LowRankConv2d.from_dense(conv, 2, scheme=scheme)
    if scheme == "channel":
        expected = n * h_out * w_out * 2 * (4 * 3 * 2 + 6)
    else:  # 1 x kw conv at the full input height, then kh x 1 at the output height
        expected = n * w_out * 2 * (9 * 4 * 2 + h_out * 6 * 3)
    assert count_macs(layer, x) == expected
    lin = LowRankLinear(10, 8, rank=3)
    assert count_macs(lin, torch.randn(5, 7, 10)) == 35 * 3 * 18


def test_example_inputs_as_tuple_and_dict():
    class Two(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Linear(32, 32)
            self.b = nn.Linear(32, 32)

        def forward(self, x, y):
            return torch.cat([self.a(x), self.b(y)])

    model = Two()
    x, y = torch.randn(3, 32), torch.randn(5, 32)
    _, rep_t = factorize(model, flop_ratio=0.5, example_inputs=(x, y))
    _, rep_d = factorize(model, flop_ratio=0.5, example_inputs={"x": x, "y": y})
    assert rep_t.macs_before == rep_d.macs_before == (3 + 5) * 32 * 32
    assert [r.macs_before for r in rep_t.layers] == [3 * 1024, 5 * 1024]


def test_layer_not_run_by_example_inputs_warns():
    class Skip(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.used = nn.Linear(32, 32)
            self.unused = nn.Linear(32, 32)

        def forward(self, x):
            return self.used(x)

    with pytest.warns(UserWarning, match="unused"):
        factorize(Skip(), flop_ratio=0.5, example_inputs=torch.randn(2, 32))


def test_energy_allocation_follows_the_spectrum():
    torch.manual_seed(2)
    model = nn.Sequential(nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, 128))
    with torch.no_grad():  # layer 0 is rank 3 up to noise, layer 2 has a flat spectrum
        model[0].weight.copy_(torch.randn(128, 3) @ torch.randn(3, 128) / 10
                              + 1e-6 * torch.randn(128, 128))
    _, uni = factorize(model, param_ratio=0.3, allocation="uniform")
    out, ene = factorize(model, param_ratio=0.3, allocation="energy")
    r_uni = [r.rank for r in uni.layers]
    r_ene = [r.rank for r in ene.layers]
    assert abs(r_uni[0] - r_uni[1]) <= 1
    assert r_ene[0] == 3
    assert r_ene[1] > r_uni[1] + 10
    x = torch.randn(8, 128)
    # the planted layer is kept almost exactly
    torch.testing.assert_close(out[0](x), model[0](x), rtol=1e-3, atol=1e-4)
    assert ene.param_ratio <= 0.3


def test_break_even_layers_are_kept_dense_and_reported():
    model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 64))
    with pytest.warns(UserWarning, match="nothing to factorize"):
        out, report = factorize(model, rank=32)  # break-even of 64 x 64 is exactly 32
    assert not lowrank_names(out)
    assert all(r.rank is None and "break-even" in r.note for r in report.layers)
    assert report.params_after == report.params_before
    out, report = factorize(model, rank=31)
    assert len(lowrank_names(out)) == 2
    assert all(r.rank == 31 and r.note == "" for r in report.layers)
    assert report.params_after < report.params_before
    # a wide-short layer: break-even of 10 x 128 is 9.3
    out, report = factorize(nn.Sequential(nn.Linear(128, 10)), rank=9)
    assert isinstance(out[0], LowRankLinear)
    assert report.layers[0].rank == 9
    with pytest.warns(UserWarning, match="nothing to factorize"):
        _, report = factorize(nn.Sequential(nn.Linear(128, 10)), rank=10)
    assert report.layers[0].rank is None
    assert "dense" in str(report)


def test_budget_of_one_changes_nothing():
    model, x = build("nested")
    out, report = factorize(model, param_ratio=1.0)
    assert not lowrank_names(out)  # every layer at full rank is above break-even
    assert report.params_after == report.params_before
    torch.testing.assert_close(out(x), model(x), rtol=1e-4, atol=1e-4)


# --------------------------------------------------------------------------- report


def test_report_table_and_markdown():
    model, x = build("cnn")
    _, report = factorize(model, param_ratio=0.4, example_inputs=x)
    assert isinstance(report, FactorizeReport)
    text = str(report)
    lines = text.splitlines()
    for head in FactorizeReport.HEADER:
        assert head in lines[0]
    assert set(lines[1].replace(" ", "")) == {"-"}
    assert lines[-1].startswith("total")
    assert f"{report.params_before:,}" in lines[-1] and f"{report.params_after:,}" in lines[-1]
    assert f"params x{report.param_ratio:.3f}" in lines[-1]
    assert len(lines) == 2 + len(report.layers) + 1
    for row, layer in zip(lines[2:-1], report.layers, strict=True):
        assert row.startswith(layer.name)
    assert "conv3" in text and "64x32x3x1" in text and "Linear" in text
    md = report.to_markdown().splitlines()
    assert md[0].startswith("| layer |") and md[1].startswith("| --- |")
    assert md[-1].startswith("| total |")


def test_report_rank_column():
    model, _ = build("mlp")
    _, report = factorize(model, rank=8)
    rows = report.rows()
    assert rows[0][3] == "8/64" and rows[1][3] == "8/256" and rows[2][3] == "8/10"
    assert report.flop_ratio is not None  # Linear-only: per-row MACs


