"""Iterative magnitude pruning: schedules, rewinding and fine-tuning."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from sparse_helpers import alive, mlp, sgd_steps

from compactnn.models.mlp import MLP, MLPConfig
from compactnn.sparse import (
    IterativeMagnitudePruning,
    magnitude_masks,
    prunable_weights,
    pruning_schedule,
)


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


