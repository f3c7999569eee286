"""Iterative hard thresholding, and the per-layer scope of both baselines."""

from __future__ import annotations

import math

import pytest
import torch
from sparse_helpers import alive, mlp, n_params, sgd_steps
from torch import nn

from compactnn.models.mlp import MLP, MLPConfig
from compactnn.models.resnet import ResNet, ResNetConfig
from compactnn.sparse import (
    IterativeHardThresholding,
    magnitude_masks,
    prunable_weights,
    target_keep_for_param_ratio,
)
from compactnn.surgery import dense_first_last_exclude


# -- IHT ---------------------------------------------------------------------------------------
def test_iht_keeps_exactly_s_after_every_step():
    m = mlp()
    s = 60
    iht = IterativeHardThresholding(m, keep=s)
    assert iht.density == pytest.approx(s / (12 * 16 + 16 * 16 + 16 * 3))
    opt = torch.optim.SGD(m.parameters(), lr=0.2, momentum=0.9)
    for step in range(6):
        sgd_steps(m, opt, 1, seed=step)
        before = {n: w.detach().clone() for n, w in prunable_weights(m).items()}
        if step:  # the gradient step is dense: weights outside the support moved too
            assert sum(int((w != 0).sum()) for w in before.values()) > s
        assert iht.after_step(m) is True
        assert alive(m) == s
        expected = magnitude_masks(before, s)  # H_s of the dense step's result
        assert all(torch.equal(iht.masks[n], expected[n]) for n in expected)
        assert all(b.any() for b in (m.layers[0].bias, m.head.bias))  # never thresholded
    assert iht.steps == 6


def test_iht_warmup_exclude_and_start_sparse():
    m = mlp()
    ex = ["layers.0", "head"]
    total = 16 * 16
    iht = IterativeHardThresholding(m, keep=30, exclude=ex, warmup_steps=3)
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    for _ in range(3):
        assert iht.active is False or iht.steps == 3
        sgd_steps(m, opt, 1)
        assert iht.after_step(m) is False
        assert alive(m, exclude=ex) == total  # dense during warm-up
    assert iht.active and iht.masks is None
    sgd_steps(m, opt, 1)
    assert iht(m) is True and alive(m, exclude=ex) == 30
    assert bool((m.layers[0].weight != 0).all()) and bool((m.head.weight != 0).all())
    fresh = mlp(2)
    it2 = IterativeHardThresholding(fresh, keep=7)
    it2.threshold_(fresh)  # start from H_s of the initialization
    assert alive(fresh) == 7 and it2.steps == 0
    state = iht.state_dict()
    back = IterativeHardThresholding(m, keep=30, exclude=ex, warmup_steps=3)
    back.load_state_dict(state)
    assert back.steps == 4 and all(torch.equal(back.masks[n], iht.masks[n]) for n in iht.masks)
    with pytest.raises(ValueError, match="keep"):
        IterativeHardThresholding(m, keep=31, exclude=ex).load_state_dict(state)


def test_iht_bad_arguments():
    m = mlp()
    total = sum(w.numel() for w in prunable_weights(m).values())
    for kwargs, err in [({"keep": 0}, ValueError), ({"keep": total + 1}, ValueError),
                        ({"keep": 5, "warmup_steps": -1}, ValueError),
                        ({"keep": 5, "warmup_steps": 1.5}, TypeError),
                        ({"keep": True}, TypeError)]:
        with pytest.raises(err):
            IterativeHardThresholding(m, **kwargs)
    iht = IterativeHardThresholding(m, keep=5)
    with pytest.raises(ValueError, match="differ"):
        iht.threshold_(MLP(MLPConfig(in_features=12, hidden=(16,), num_classes=3)))
    with pytest.raises(ValueError, match=r"differ.*\(17, 16\)"):
        iht.threshold_(MLP(MLPConfig(in_features=12, hidden=(16, 17), num_classes=3)))
    m.head.weight.data[0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        iht.after_step(m)


def test_iht_on_resnet_with_first_last_dense():
    torch.manual_seed(0)
    r = ResNet(ResNetConfig(depth=8))
    ex = dense_first_last_exclude(r)
    keep = target_keep_for_param_ratio(r, 0.2, exclude=ex)
    iht = IterativeHardThresholding(r, keep=keep, exclude=ex)
    opt = torch.optim.SGD(r.parameters(), lr=0.05, momentum=0.9)
    x, y = torch.randn(4, 1, 28, 28), torch.randint(0, 10, (4,))
    for _ in range(2):
        opt.zero_grad()
        nn.functional.cross_entropy(r(x), y).backward()
        opt.step()
        iht.after_step(r)
        assert alive(r, exclude=ex) == keep
    assert iht.masks.num_params(r) == math.floor(0.2 * n_params(r))


def test_layer_scope_keeps_each_layer_its_share():
    import torch
    from torch import nn

    from compactnn.sparse import IterativeHardThresholding, magnitude_masks

    torch.manual_seed(0)
    small = nn.Linear(100, 50)
    big = nn.Linear(50, 40)
    with torch.no_grad():
        small.weight.mul_(1e-3)  # a layer whose weights are all smaller than the other's
    weights = {"a": small.weight, "b": big.weight}
    keep = 1000
    glob = magnitude_masks(weights, keep, "global")
    assert int(glob["a"].sum()) == 0  # the global ranking empties the small layer
    layer = magnitude_masks(weights, keep, "layer")
    assert sum(int(m.sum()) for m in layer.values()) == keep
    for name, w in weights.items():
        share = keep * w.numel() / 7000
        assert abs(int(layer[name].sum()) - share) <= 1
        kept = w.detach().abs()[layer[name]]
        dropped = w.detach().abs()[~layer[name]]
        assert kept.min() >= dropped.max()  # the largest within each layer
    model = nn.Sequential(small, nn.ReLU(), big)
    iht = IterativeHardThresholding(model, keep, scope="layer")
    iht.after_step(model)
    assert int((small.weight != 0).sum()) > 0
    with pytest.raises(ValueError, match="scope"):
        magnitude_masks(weights, keep, "per-neuron")

