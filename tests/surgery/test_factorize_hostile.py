"""factorize under hostile or careless use: tied weights, empty selections,
parameterless models, meta tensors, and random shapes and budgets (clear error
or correct result; the model untouched on error)."""

from __future__ import annotations

import warnings

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from compactnn import LowRankConv2d, LowRankLinear, factorize, merge


def unique_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def snapshot(model: nn.Module) -> tuple[list[tuple[str, type]], dict[str, torch.Tensor]]:
    return ([(n, type(m)) for n, m in model.named_modules(remove_duplicate=False)],
            {k: v.clone() for k, v in model.state_dict().items()})


def assert_untouched(model: nn.Module, snap) -> None:
    mods, state = snap
    assert [(n, type(m)) for n, m in model.named_modules(remove_duplicate=False)] == mods
    now = model.state_dict()
    assert now.keys() == state.keys()
    assert all(torch.equal(now[k], v) for k, v in state.items())


class Tied(nn.Module):
    """Two Linear layers sharing one weight (biases their own), and a head."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.d = nn.Linear(32, 32)
        self.e = nn.Linear(32, 32)
        self.e.weight = self.d.weight
        self.head = nn.Linear(32, 4)

    def forward(self, x):
        return self.head(torch.relu(self.e(torch.relu(self.d(x)))))


# -- tied parameters ------------------------------------------------------------------------
@pytest.mark.filterwarnings("ignore:budget met only")  # 32x32 layers: coarse rank steps
def test_tied_layers_stay_tied_with_one_factor_pair():
    model = Tied()
    out, report = factorize(model, param_ratio=0.5)
    assert isinstance(out.d, LowRankLinear) and isinstance(out.e, LowRankLinear)
    assert out.d.U is out.e.U and out.d.V is out.e.V  # one factor pair
    assert out.d.bias is not out.e.bias
    assert torch.equal(out.e.bias, model.e.bias)
    # the report counts what the model really holds, and meets the budget from below
    assert report.params_before == unique_count(model) == 32 * 32 + 2 * 32 + 32 * 4 + 4
    assert report.params_after == unique_count(out)
    assert 0.48 <= report.param_ratio <= 0.5
    assert sum(r.params_after for r in report.layers) == unique_count(out)
    assert "weight tied to 'd'" in report.layers[1].note
    # training one keeps the other in step, and the two compute with the same weight
    out.d.U.data.add_(1.0)
    torch.testing.assert_close(out.d.dense_weight(), out.e.dense_weight())
    merged = merge(out)
    assert merged.d.weight is merged.e.weight  # merging keeps the tie
    assert merged.d.bias is not merged.e.bias
    torch.testing.assert_close(merged.d.weight, out.d.dense_weight())


def test_tied_layers_with_a_tied_bias_share_it():
    model = Tied()
    model.e.bias = model.d.bias
    out, report = factorize(model, rank=4)
    assert out.d.bias is out.e.bias
    merged = merge(out)
    assert merged.d.bias is merged.e.bias and merged.d.weight is merged.e.weight
    assert sum(p.numel() for p in merged.parameters()) == unique_count(model)
    assert report.params_after == unique_count(out) == 4 * 64 + 32 + 4 * 32 + 4


def test_tied_layers_on_the_calibration_path_stay_tied():
    model = Tied()
    out, _ = factorize(model, rank=4, init="nonlinear", calibration=torch.randn(16, 32),
                       steps=2)
    assert out.d.U is out.e.U and out.d.V is out.e.V


def test_a_tie_to_an_embedding_is_kept_dense_with_a_note_and_other_ties_are_refused():
    class LM(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Embedding(10, 8)
            self.head = nn.Linear(8, 10, bias=False)
            self.head.weight = self.embed.weight

        def forward(self, ids):
            return self.head(self.embed(ids))

    model = LM()
    snap = snapshot(model)
    out, report = factorize(model, rank=2)  # the tied output head of a language model
    assert_untouched(model, snap)
    assert type(out.head) is nn.Linear and out.head.weight is out.embed.weight
    (row,) = report.layers
    assert row.name == "head" and row.rank is None and not row.selected
    assert "weight tied to embed.weight (Embedding)" in row.note
    tied = Tied()
    snap = snapshot(tied)
    with pytest.raises(ValueError, match=r"tied to e\.weight"):
        factorize(tied, rank=2, exclude=["e"], inplace=True)
    assert_untouched(tied, snap)


# -- silent no-ops and degenerate models ----------------------------------------------------
def test_nothing_selected_warns_and_changes_nothing():
    model = Tied()
    with pytest.warns(UserWarning, match="include/exclude leave no"):
        out, report = factorize(model, rank=2, exclude=r".*")
    assert not [r for r in report.layers if r.selected] and report.param_ratio == 1.0
    assert {r.name: r.note for r in report.layers} == dict.fromkeys(
        ["d", "e", "head"], "excluded by pattern '.*'")
    assert all(type(m) is nn.Linear for m in (out.d, out.e, out.head))


def test_a_model_without_parameters_reports_without_dividing_by_zero():
    with pytest.warns(UserWarning, match="has no nn.Linear"):
        out, report = factorize(nn.Sequential(nn.ReLU(), nn.Flatten()), rank=2,
                                example_inputs=torch.randn(2, 3))
    assert report.params_before == report.params_after == 0
    assert report.param_ratio == 1.0 and report.flop_ratio == 1.0
    assert "params x1.000" in str(report) and "| total |" in report.to_markdown()


def test_meta_model_is_refused_clearly():
    model = nn.Sequential(nn.Linear(4, 4)).to("meta")
    with pytest.raises(ValueError, match="meta device"):
        factorize(model, rank=2)
    with pytest.raises(ValueError, match="meta"):
        LowRankLinear.from_dense(nn.Linear(4, 4, device="meta"), 2)


@pytest.mark.parametrize(("kwargs", "exc", "needle"), [
    ({"inplace": "yes"}, TypeError, "inplace must be a bool"),
    ({"progress": 1}, TypeError, "progress must be a bool"),
])
def test_flags_must_be_bools(kwargs, exc, needle):
    with pytest.raises(exc, match=needle):
        factorize(Tied(), rank=2, **kwargs)


# -- random shapes and budgets ----------------------------------------------------------------
@st.composite
def models(draw):
    layers, width = [], draw(st.integers(1, 12))
    for _ in range(draw(st.integers(1, 3))):
        out = draw(st.integers(1, 12))
        layers += [nn.Linear(width, out, bias=draw(st.booleans())), nn.ReLU()]
        width = out
    return nn.Sequential(*layers), layers[0].in_features


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(spec=models(), seed=st.integers(0, 2**16),
       budget=st.one_of(st.integers(-2, 14).map(lambda r: {"rank": r}),
                        st.floats(-0.5, 1.5).map(lambda r: {"rank": r}),
                        st.floats(-0.5, 1.5).map(lambda p: {"param_ratio": p}),
                        st.sampled_from([{"rank": "2"}, {"rank": None}, {"param_ratio": True}])))
def test_random_linear_models_error_or_meet_the_request(spec, seed, budget):
    model, n_in = spec
    torch.manual_seed(seed)
    snap = snapshot(model)
    x = torch.randn(3, n_in)
    y = model(x)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out, report = factorize(model, **budget)
    except (TypeError, ValueError) as err:
        assert str(err)  # a message, naming what is wrong
        assert_untouched(model, snap)
        return
    assert_untouched(model, snap)  # a copy was changed, not the model
    assert report.params_after == unique_count(out)
    assert report.params_before == unique_count(model)
    for lr in report.layers:
        layer = out.get_submodule(lr.name)
        if lr.rank is None:
            assert type(layer) is nn.Linear
        else:
            assert isinstance(layer, LowRankLinear) and layer.rank == lr.rank
            _, m, n = layer.matrix_shape
            assert lr.rank * (m + n) < m * n  # below break-even, or kept dense
    if "param_ratio" in budget:
        assert report.param_ratio <= budget["param_ratio"] + 1e-9
    merged = merge(out)
    assert merged(x).shape == y.shape
    for lr in report.layers:  # merging back gives the dense layer U V exactly
        if lr.rank is not None:
            torch.testing.assert_close(merged.get_submodule(lr.name).weight,
                                       out.get_submodule(lr.name).dense_weight())


@settings(max_examples=25, deadline=None)
@given(cin=st.integers(1, 6), cout=st.integers(1, 6), k=st.integers(1, 3),
       groups=st.sampled_from([1, 2]), rank=st.one_of(st.integers(-1, 40), st.floats(0, 1.2)),
       scheme=st.sampled_from(["channel", "spatial", "cp"]))
def test_random_conv_layers_error_or_build(cin, cout, k, groups, rank, scheme):
    dense = nn.Conv2d(cin * groups, cout * groups, k, groups=groups)
    before = {n: t.clone() for n, t in dense.state_dict().items()}
    try:
        layer = LowRankConv2d.from_dense(dense, rank, scheme=scheme)
    except (TypeError, ValueError) as err:
        assert str(err)
        assert all(torch.equal(t, before[n]) for n, t in dense.state_dict().items())
        return
    g, m, n = layer.matrix_shape
    assert layer.rank % groups == 0 and groups <= layer.rank <= g * min(m, n)
    x = torch.randn(2, cin * groups, k + 2, k + 2)
    assert layer(x).shape == dense(x).shape
    if layer.rank == layer.full_rank:  # full rank reproduces the layer
        torch.testing.assert_close(layer(x), dense(x), rtol=1e-4, atol=1e-4)


def test_meta_calibration_is_refused_and_the_model_kept():
    model = Tied()
    snap = snapshot(model)
    with pytest.raises(ValueError, match="calibration batch 0 is a meta tensor"):
        factorize(model, rank=2, init="nonlinear", calibration=torch.empty(4, 32, device="meta"),
                  inplace=True)
    assert_untouched(model, snap)


def test_an_init_failing_mid_way_leaves_an_inplace_model_as_it_was():
    calls = []

    def flaky(layer, weight=None, bias=None):
        calls.append(layer)
        if len(calls) == 2:
            raise FloatingPointError("second layer fails")
        return layer

    model = Tied()
    snap = snapshot(model)
    with pytest.raises(FloatingPointError, match="second layer fails"):
        factorize(model, rank=2, init=flaky, inplace=True, include=["d", "e", "head"])
    assert len(calls) == 2
    assert_untouched(model, snap)
    assert model.e.weight is model.d.weight  # the tie is intact too
