"""Tests of the unstructured sparsity baselines: global magnitude masks, budgets,
iterative magnitude pruning (rewinding / fine-tuning) and iterative hard
thresholding."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from compactnn import factorize
from compactnn.models.mlp import MLP, MLPConfig
from compactnn.models.resnet import ResNet, ResNetConfig
from compactnn.sparse import (
    IterativeHardThresholding,
    IterativeMagnitudePruning,
    SparsityMasks,
    magnitude_masks,
    prunable_weights,
    pruning_schedule,
    target_keep_for_param_ratio,
    target_keep_for_params,
)
from compactnn.surgery import dense_first_last_exclude


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models: one intra-op thread (two spin-wait on a busy 2-core machine)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def mlp(seed: int = 0) -> MLP:
    torch.manual_seed(seed)
    return MLP(MLPConfig(in_features=12, hidden=(16, 16), num_classes=3))


def n_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def alive(model: nn.Module, **sel) -> int:
    return sum(int((w != 0).sum()) for w in prunable_weights(model, **sel).values())


def sgd_steps(model, opt, steps, hook=None, seed=0):
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x, y = torch.randn(8, 12, generator=g), torch.randint(0, 3, (8,), generator=g)
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        if hook is not None:
            hook(model)


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


# -- IMP ---------------------------------------------------------------------------------------
@settings(max_examples=60, deadline=None)
@given(total=st.integers(1, 10**6), frac=st.floats(1e-4, 1), rounds=st.integers(1, 12),
       kind=st.sampled_from(["geometric", "cubic"]))
def test_pruning_schedule_monotone_to_target(total, frac, rounds, kind):
    keep = max(1, min(total, round(frac * total)))
    s = pruning_schedule(total, keep, rounds, kind)
    assert len(s) == rounds and s[-1] == keep
    assert all(a >= b for a, b in zip([total, *s], s, strict=False))
    assert all(keep <= k <= total for k in s)


def test_pruning_schedule_values_and_errors():
    assert pruning_schedule(1000, 125, 3) == [500, 250, 125]  # halves each round
    # Zhu & Gupta: density 0.1 + 0.9 (1 - i/3)^3 = 0.3667, 0.1333, 0.1
    assert pruning_schedule(1000, 100, 3, "cubic") == [367, 133, 100]
    assert pruning_schedule(10, 10, 3) == [10, 10, 10]
    for args, err in [((10, 0, 2), ValueError), ((10, 11, 2), ValueError),
                      ((10, 5, 0), ValueError), ((10, 5, 2.0), TypeError)]:
        with pytest.raises(err):
            pruning_schedule(*args)
    with pytest.raises(ValueError, match="schedule"):
        pruning_schedule(10, 5, 2, "linear")


def test_imp_with_rewinding_to_init():
    m = mlp()
    init = {k: v.clone() for k, v in m.state_dict().items()}
    total = sum(w.numel() for w in prunable_weights(m).values())
    imp = IterativeMagnitudePruning(m, keep=64, rounds=3)
    assert imp.schedule[-1] == 64 and imp.current_keep == total and not imp.done
    seen_masks = []
    for rnd in range(3):
        opt = torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9)
        sgd_steps(m, opt, 5, hook=imp.after_step, seed=rnd)
        if rnd:  # pruned weights stayed zero through momentum steps
            assert alive(m) <= imp.current_keep
        trained = {n: w.detach().clone() for n, w in prunable_weights(m).items()}
        kept = imp.prune(m)
        assert kept == imp.schedule[rnd] == imp.current_keep
        assert imp.masks.num_kept() == kept == alive(m)
        # the largest trained magnitudes (pruned ones are zero, so among the survivors)
        expected = magnitude_masks(trained, kept)
        assert all(torch.equal(imp.masks[n], expected[n]) for n in expected)
        for name, w in prunable_weights(m).items():
            mk = imp.masks[name]
            assert torch.equal(w[mk], init[name][mk])  # rewound
            assert not w[~mk].any()
        assert torch.equal(m.layers[0].bias, init["layers.0.bias"])
        if seen_masks:  # a pruned weight never comes back
            assert all(not (imp.masks[n] & ~seen_masks[-1][n]).any() for n in imp.masks)
        seen_masks.append({n: imp.masks[n].clone() for n in imp.masks})
    assert imp.done
    with pytest.raises(RuntimeError, match="rounds"):
        imp.prune(m)


def test_imp_prunes_globally_by_trained_magnitude():
    m = mlp()
    imp = IterativeMagnitudePruning(m, keep=50, rounds=1, rewind=False)
    sgd_steps(m, torch.optim.SGD(m.parameters(), lr=0.1), 3)
    trained = {n: w.detach().clone() for n, w in prunable_weights(m).items()}
    imp.prune(m)
    expected = magnitude_masks(trained, 50)
    assert all(torch.equal(imp.masks[n], expected[n]) for n in expected)
    for n, w in prunable_weights(m).items():  # fine-tuning: trained values kept
        assert torch.equal(w[expected[n]], trained[n][expected[n]])


def test_imp_late_rewinding_and_state_dict():
    m = mlp()
    imp = IterativeMagnitudePruning(m, keep=40, rounds=2, exclude=["head"])
    sgd_steps(m, torch.optim.SGD(m.parameters(), lr=0.1), 2)
    imp.save_rewind_state(m)  # rewind point after 2 steps
    early = {k: v.clone() for k, v in m.state_dict().items()}
    sgd_steps(m, torch.optim.SGD(m.parameters(), lr=0.1), 3, seed=1)
    imp.prune(m)
    for name, w in prunable_weights(m, exclude=["head"]).items():
        mk = imp.masks[name]
        assert torch.equal(w[mk], early[name][mk]) and not w[~mk].any()
    assert torch.equal(m.head.weight, early["head.weight"])  # excluded: rewound, not pruned
    assert bool((m.head.weight != 0).all())
    state = imp.state_dict()
    other = IterativeMagnitudePruning(mlp(1), keep=40, rounds=2, exclude=["head"])
    other.load_state_dict(state)
    assert other.round == 1 and other.current_keep == imp.current_keep
    assert all(torch.equal(other.masks[n], imp.masks[n]) for n in imp.masks)
    with pytest.raises(ValueError, match="schedule"):
        IterativeMagnitudePruning(mlp(), keep=41, rounds=2, exclude=["head"]).load_state_dict(
            state)


def test_imp_bad_arguments():
    m = mlp()
    total = sum(w.numel() for w in prunable_weights(m).values())
    for kwargs, err in [({"keep": 0, "rounds": 2}, ValueError),
                        ({"keep": total + 1, "rounds": 2}, ValueError),
                        ({"keep": 10, "rounds": 0}, ValueError),
                        ({"keep": 10, "rounds": 2, "schedule": "linear"}, ValueError),
                        ({"keep": 10.0, "rounds": 2}, TypeError)]:
        with pytest.raises(err):
            IterativeMagnitudePruning(m, **kwargs)
    with pytest.raises(RuntimeError, match="rewind=True"):
        IterativeMagnitudePruning(m, keep=10, rounds=2, rewind=False).save_rewind_state(m)
    imp = IterativeMagnitudePruning(m, keep=10, rounds=2)
    with pytest.raises(ValueError, match="differ"):
        imp.prune(MLP(MLPConfig(in_features=12, hidden=(16,), num_classes=3)))


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
