"""compactnn.depth on hostile input: shape-changing plain blocks named for removal,
non-finite scales."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from compactnn.depth import LayerScales, prune_layers
from compactnn.depth.blocks import shape_change


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


SHAPE_CHANGING = [
    (nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2)), "0", "maps width 4 to 8"),
    (nn.Sequential(nn.Linear(4, 4), nn.Sequential(nn.Linear(4, 6), nn.Tanh()),
                   nn.Linear(6, 2)), "1", "maps width 4 to 6"),
    (nn.Sequential(nn.Conv2d(3, 3, 3, padding=1), nn.Conv2d(3, 3, 3, stride=2, padding=1),
                   nn.Flatten()), "1", "changes the spatial size"),
    (nn.Sequential(nn.Conv2d(3, 3, 3, padding=1), nn.MaxPool2d(2), nn.Flatten()), "1",
     "changes the spatial size"),
    (nn.Sequential(nn.Embedding(10, 4), nn.Linear(4, 4)), "0", "embedding"),
]


@pytest.mark.parametrize("model,name,reason", SHAPE_CHANGING)
@pytest.mark.parametrize("inplace", [False, True])
def test_removing_a_shape_changing_plain_block_is_refused_up_front(model, name, reason,
                                                                   inplace):
    before = _state(model)
    kinds = [type(m) for m in model.modules()]
    with pytest.raises(ValueError, match=rf"block '{name}' cannot be removed: .*{reason}"):
        prune_layers(model, names=[name], inplace=inplace)
    with pytest.raises(ValueError, match=rf"block '{name}' cannot be removed: .*{reason}"):
        prune_layers(model, scores={name: 0.0}, num_layers=1, inplace=inplace)
    assert _same(before, _state(model)) and [type(m) for m in model.modules()] == kinds
    with pytest.raises(ValueError, match=rf"block '{name}' cannot be scaled .*{reason}"):
        LayerScales(model, include=name)  # a regex: this block only
    assert not any(m._forward_hooks for m in model.modules())


def test_shape_keeping_plain_blocks_still_prune_to_the_identity():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 4), nn.Sequential(nn.Linear(4, 9), nn.GELU(),
                                                         nn.Dropout(0.0), nn.Linear(9, 4)),
                          nn.Conv1d(1, 1, 3, padding=1), nn.Linear(4, 2))
    x = torch.randn(5, 1, 4)
    pruned, report = prune_layers(model, names=["1", "2"])
    assert report.removed == ["1", "2"]
    torch.testing.assert_close(pruned(x), model[3](model[0](x)))


def test_lazy_layers_are_not_judged_before_their_first_forward():
    assert shape_change(nn.LazyLinear(4)) is None
    assert shape_change(nn.Sequential(nn.LazyConv2d(3, 3, padding=1), nn.ReLU())) is None
    lazy = nn.LazyLinear(4)
    lazy(torch.randn(2, 6))
    assert shape_change(lazy) == "it maps width 6 to 4"


@settings(max_examples=80, deadline=None)
@given(kind=st.sampled_from(["conv", "convT", "maxpool", "avgpool", "linear"]),
       cin=st.integers(1, 3), cout=st.integers(1, 3), k=st.integers(1, 4),
       s=st.integers(1, 3), d=st.integers(1, 2), data=st.data())
def test_static_verdict_matches_running_the_layer(kind, cin, cout, k, s, d, data):
    """shape_change(m) is None exactly when m maps inputs of two sizes to outputs of
    their own shapes (two sizes rule out a stride that happens to fit one)."""
    if kind == "conv":
        p = data.draw(st.integers(0, 4))
        m = nn.Conv1d(cin, cout, k, stride=s, padding=p, dilation=d)
    elif kind == "convT":
        p = data.draw(st.integers(0, (d * (k - 1)) // 1))
        op = data.draw(st.integers(0, max(0, min(s, d) - 1)))
        m = nn.ConvTranspose1d(cin, cout, k, stride=s, padding=p, dilation=d,
                               output_padding=op)
    elif kind == "maxpool":
        p = data.draw(st.integers(0, (d * (k - 1) + 1) // 2))
        m = nn.MaxPool1d(k, stride=s, padding=p, dilation=d)
        cout = cin
    elif kind == "avgpool":
        p = data.draw(st.integers(0, k // 2))
        m = nn.AvgPool1d(k, stride=s, padding=p)
        cout = cin
    else:
        m = nn.Linear(cin, cout)
    keeps = True
    for length in (17, 29):
        x = torch.randn(2, cin) if kind == "linear" else torch.randn(2, cin, length)
        try:
            y = m(x)
        except RuntimeError:
            return  # a configuration PyTorch itself cannot run
        keeps = keeps and y.shape == x.shape
    assert (shape_change(m) is None) == keeps


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_smallest_refuses_non_finite_scales_like_prune_layers(bad):
    model = nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 3), nn.Linear(3, 3))
    scales = LayerScales(model, include=["0", "1", "2"])
    with torch.no_grad():
        scales.weight.copy_(torch.tensor([0.5, bad, 0.1]))
    with pytest.raises(ValueError, match=r"non-finite values \{'1': (nan|inf)\}"):
        scales.smallest(1)
    with pytest.raises(ValueError, match="non-finite"):
        scales.smallest(ratio=0.5)
    with torch.no_grad():
        scales.weight[1] = 0.3
    assert scales.smallest(2) == ["2", "1"]
