"""Selection of the prunable weights, magnitude masks and parameter budgets."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from sparse_helpers import alive, mlp, n_params
from torch import nn

from compactnn import factorize
from compactnn.models.resnet import ResNet, ResNetConfig
from compactnn.sparse import (
    SparsityMasks,
    magnitude_masks,
    prunable_weights,
    target_keep_for_param_ratio,
    target_keep_for_params,
)
from compactnn.surgery import dense_first_last_exclude


# -- selection ---------------------------------------------------------------------------------
def test_prunable_weights_selection():
    m = mlp()
    assert list(prunable_weights(m)) == ["layers.0.weight", "layers.1.weight", "head.weight"]
    assert list(prunable_weights(m, exclude=["layers.0", "head"])) == ["layers.1.weight"]
    assert list(prunable_weights(m, include=r"layers\.\d")) == ["layers.0.weight",
                                                                 "layers.1.weight"]
    assert prunable_weights(m)["head.weight"] is m.head.weight
    with pytest.raises(ValueError, match="matched no module"):
        prunable_weights(m, exclude=["nope"])
    with pytest.raises(TypeError):
        prunable_weights(m, include=["act"])
    shared = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 4))
    shared[2].weight = shared[0].weight
    assert list(prunable_weights(shared)) == ["0.weight"]
    # wrappers are looked through
    assert list(prunable_weights(nn.DataParallel(m))) == list(prunable_weights(m))
    r = ResNet(ResNetConfig(depth=8))
    names = list(prunable_weights(r, exclude=dense_first_last_exclude(r)))
    assert "stem.weight" not in names and "fc.weight" not in names and len(names) == 6


# -- masks -------------------------------------------------------------------------------------
@settings(max_examples=30, deadline=None)
@given(keep_frac=st.floats(0, 1), seed=st.integers(0, 2**16))
def test_global_masks_keep_exactly_the_largest(keep_frac, seed):
    g = torch.Generator().manual_seed(seed)
    w = {"a": torch.randn(5, 7, generator=g), "b": 3 * torch.randn(11, generator=g),
         "c": 0.1 * torch.randn(2, 3, 3, 3, generator=g)}
    total = sum(v.numel() for v in w.values())
    keep = round(keep_frac * total)
    masks = magnitude_masks(w, keep)
    assert set(masks) == set(w)
    assert all(masks[n].shape == w[n].shape and masks[n].dtype == torch.bool for n in w)
    assert sum(int(m.sum()) for m in masks.values()) == keep
    kept = torch.cat([w[n].abs()[masks[n]] for n in w])
    dropped = torch.cat([w[n].abs()[~masks[n]] for n in w])
    if len(kept) and len(dropped):
        assert float(kept.min()) >= float(dropped.max())
    expected = torch.cat([v.abs().reshape(-1) for v in w.values()]).sort(descending=True)[0]
    torch.testing.assert_close(kept.sort(descending=True)[0], expected[:keep])


def test_global_masks_errors():
    w = {"a": torch.randn(4)}
    for bad in (-1, 5):
        with pytest.raises(ValueError, match="keep"):
            magnitude_masks(w, bad)
    for bad in (True, 2.0):
        with pytest.raises(TypeError):
            magnitude_masks(w, bad)
    with pytest.raises(ValueError, match="NaN"):
        magnitude_masks({"a": torch.tensor([1.0, float("nan")])}, 1)
    with pytest.raises(ValueError):
        magnitude_masks({}, 0)


def test_sparsity_masks_apply_and_account():
    m = mlp()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    weights = prunable_weights(m)
    masks = SparsityMasks(magnitude_masks(weights, 100))
    assert masks.num_kept() == 100 and masks.numel() == 12 * 16 + 16 * 16 + 16 * 3
    assert masks.density() == pytest.approx(100 / masks.numel())
    assert masks.num_params(m) == n_params(m) - (masks.numel() - 100)
    assert masks.apply_(m) is m
    assert alive(m) == 100
    for name in weights:
        mk = masks[name]
        assert torch.equal(m.state_dict()[name][mk], before[name][mk])
        assert not m.state_dict()[name][~mk].any()
    assert torch.equal(m.layers[0].bias, before["layers.0.bias"])  # biases untouched
    m.layers[0].weight.data.add_(1.0)  # re-applying re-zeroes
    masks.apply_(m)
    assert alive(m) == 100
    again = SparsityMasks(masks.state_dict())
    assert all(torch.equal(again[n], masks[n]) for n in masks) and len(again) == 3
    assert "density" in repr(masks)
    dense = SparsityMasks.dense(m)
    assert dense.density() == 1.0 and dense.num_params(m) == n_params(m)


def test_sparsity_masks_errors():
    m = mlp()
    with pytest.raises(TypeError, match="bool"):
        SparsityMasks({"head.weight": torch.ones(3, 16)})
    with pytest.raises(KeyError, match="no parameter"):
        SparsityMasks({"nope.weight": torch.ones(3, dtype=torch.bool)}).apply_(m)
    with pytest.raises(ValueError, match="shape"):
        SparsityMasks({"head.weight": torch.ones(16, 3, dtype=torch.bool)}).apply_(m)


# -- budgets -----------------------------------------------------------------------------------
@pytest.mark.parametrize("ratio", [0.05, 0.1, 0.25, 0.5, 1.0])
def test_param_ratio_accounting_is_exact(ratio):
    r = ResNet(ResNetConfig(depth=8))
    ex = dense_first_last_exclude(r)
    total = n_params(r)
    keep = target_keep_for_param_ratio(r, ratio, exclude=ex)
    masks = SparsityMasks(magnitude_masks(prunable_weights(r, exclude=ex), keep))
    assert masks.num_params(r) == math.floor(ratio * total)
    fixed = total - masks.numel()  # biases, BN, stem, fc
    assert fixed + keep == math.floor(ratio * total)
    masks.apply_(r)
    assert alive(r, exclude=ex) == keep


def test_equal_size_to_a_factorized_model():
    torch.manual_seed(0)
    r = ResNet(ResNetConfig(depth=8))
    ex = dense_first_last_exclude(r)
    _, rep = factorize(r, param_ratio=0.2, exclude=ex)
    keep = target_keep_for_params(r, rep.params_after, exclude=ex)
    masks = SparsityMasks(magnitude_masks(prunable_weights(r, exclude=ex), keep))
    assert masks.num_params(r) == rep.params_after
    # a ratio computed as after / before lands on the same count despite float error
    assert target_keep_for_param_ratio(r, rep.params_after / rep.params_before,
                                       exclude=ex) == keep


def test_unreachable_budgets_and_bad_ratios():
    r = ResNet(ResNetConfig(depth=8))
    ex = dense_first_last_exclude(r)
    fixed_ratio = (n_params(r) - sum(w.numel() for w in prunable_weights(r, exclude=ex).values())
                   ) / n_params(r)
    with pytest.raises(ValueError, match="unreachable"):
        target_keep_for_param_ratio(r, fixed_ratio * 0.9, exclude=ex)
    with pytest.raises(ValueError, match="unreachable"):
        target_keep_for_params(r, 10, exclude=ex)
    with pytest.raises(ValueError, match="exceeds"):
        target_keep_for_params(r, n_params(r) + 1)
    for bad in (0, -0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match="param_ratio"):
            target_keep_for_param_ratio(r, bad)
    for bad in (True, "0.5", None):
        with pytest.raises(TypeError, match="param_ratio must be a number"):
            target_keep_for_param_ratio(r, bad)
    with pytest.raises(ValueError, match="no prunable"):
        target_keep_for_params(nn.Sequential(nn.BatchNorm1d(3)), 3)


