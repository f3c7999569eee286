"""compactnn.features.RelChaNet: recovery on a planted problem, mask and score
bookkeeping, errors, save/load."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from compactnn.features import RelChaNet


def planted(n=3000, d=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    logit = x[:, 0] + x[:, 1] - x[:, 2] + 0.7 * x[:, 3] + 0.3 * torch.randn(n, generator=g)
    return x, (logit > 0).long()


@pytest.mark.parametrize("seed", [0, 1])
def test_recovers_planted_informative_features(seed):
    x, y = planted()
    sel = RelChaNet(40, 4, 2, hidden=(32,), seed=seed).fit(x, y, epochs=10)
    assert sel.selected().tolist() == [0, 1, 2, 3]
    # every informative feature outscored every noise feature that stayed active
    s = sel.scores
    active_noise = [i for i in sel.mask.nonzero().flatten().tolist() if i >= 4]
    assert min(s[:4]) > max(s[active_noise])


def test_mask_size_is_invariant_and_selected_is_kept_set():
    x, y = planted(n=600, d=20)
    sel = RelChaNet(20, 3, 2, hidden=(8,), num_candidates=5, interval=3, seed=3)
    assert int(sel.mask.sum()) == 8
    opt = torch.optim.SGD(sel.parameters(), lr=0.1)
    regrown = 0
    for i in range(0, 600, 50):
        loss = torch.nn.functional.cross_entropy(sel(x[i:i + 50]), y[i:i + 50])
        opt.zero_grad()
        loss.backward()
        before = sel.mask.clone()
        grown = sel.observe()
        if grown:
            regrown += 1
            assert len(grown) == 5
            assert not before[grown].any() and sel.mask[grown].all()
            assert int((before & ~sel.mask).sum()) == 5
        assert int(sel.mask.sum()) == 8
        opt.step()
    assert regrown == 4  # 12 batches, a round every 3
    chosen = sel.selected()
    assert len(chosen) == 3 and sel.mask[chosen].all()


def test_inactive_features_do_not_change_the_output():
    sel = RelChaNet(10, 2, 3, hidden=(6, 5), num_candidates=2, seed=0)
    x = torch.randn(7, 10)
    x2 = x.clone()
    x2[:, ~sel.mask] = torch.randn(7, int((~sel.mask).sum()))
    assert torch.equal(sel(x), sel(x2))
    with pytest.raises(RuntimeError, match="no scoring round"):
        sel.transform(x)
    sel.interval = 1
    torch.nn.functional.cross_entropy(sel(x), torch.zeros(7, dtype=torch.long)).backward()
    sel.observe()
    assert torch.equal(sel.transform(x), x[:, sel.selected()])


def test_scores_are_mean_of_z_standardized_gradient_sums():
    """One round by hand: L1 norms of the summed first-layer gradient columns,
    z-standardized over the active features."""
    sel = RelChaNet(6, 2, 2, hidden=(4,), num_candidates=2, interval=2, seed=0)
    x, y = torch.randn(8, 6), torch.randint(0, 2, (8,))
    total = torch.zeros_like(sel.first.weight)
    active = sel.mask.nonzero().flatten()
    for half in (x[:4], x[4:]):
        sel.zero_grad()
        torch.nn.functional.cross_entropy(sel(half), y[:4]).backward()
        total += sel.first.weight.grad
        sel.observe()
    g = total[:, active].abs().sum(0).double()
    z = (g - g.mean()) / g.std()
    torch.testing.assert_close(sel.scores[active], z)
    assert (sel.rounds[active] == 1).all() and int(sel.rounds.sum()) == 4


def test_deterministic_given_seed():
    x, y = planted(n=500, d=15)
    a = RelChaNet(15, 3, 2, hidden=(8,), seed=5).fit(x, y, epochs=2)
    b = RelChaNet(15, 3, 2, hidden=(8,), seed=5).fit(x, y, epochs=2)
    assert torch.equal(a.mask, b.mask) and torch.equal(a.selected(), b.selected())
    torch.testing.assert_close(a.scores, b.scores)


def test_regression_task_runs_and_selects():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1500, 12, generator=g)
    y = 2 * x[:, 5] - x[:, 7]
    sel = RelChaNet(12, 2, 1, hidden=(16,), task="regression", seed=0).fit(x, y, epochs=8)
    assert sel.selected().tolist() == [5, 7]


def test_bad_arguments():
    with pytest.raises(ValueError, match="num_selected=11 exceeds num_features=10"):
        RelChaNet(10, 11)
    with pytest.raises(ValueError, match="num_selected"):
        RelChaNet(10, 0)
    with pytest.raises(TypeError, match="num_features"):
        RelChaNet(10.0, 2)
    with pytest.raises(ValueError, match="task"):
        RelChaNet(10, 2, task="ranking")
    with pytest.raises(ValueError, match="num_candidates"):
        RelChaNet(10, 2, num_candidates=9)
    with pytest.raises(ValueError, match="num_candidates must be >= 1"):
        RelChaNet(10, 2, num_candidates=0)
    with pytest.raises(ValueError, match="hidden"):
        RelChaNet(10, 2, hidden=())
    sel = RelChaNet(10, 2, 3)
    state = {k: v.clone() for k, v in sel.state_dict().items()}
    with pytest.raises(ValueError, match="non-finite"):
        sel.fit(torch.full((4, 10), float("nan")), torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match="10 columns"):
        sel.fit(torch.randn(4, 9), torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match="labels must lie"):
        sel.fit(torch.randn(4, 10), torch.tensor([0, 1, 2, 3]))
    with pytest.raises(ValueError, match="same number of rows"):
        sel.fit(torch.randn(4, 10), torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="lr"):
        sel.fit(torch.randn(4, 10), torch.zeros(4, dtype=torch.long), lr=float("inf"))
    with pytest.raises(RuntimeError, match="backward"):
        sel.observe()
    after = sel.state_dict()
    assert all(torch.equal(state[k], after[k]) for k in state)


def test_save_load_round_trip(tmp_path):
    from safetensors.torch import load_file, save_file

    x, y = planted(n=400, d=12)
    sel = RelChaNet(12, 3, 2, hidden=(8,), seed=2).fit(x, y, epochs=3)
    path = tmp_path / "sel.safetensors"
    save_file(dict(sel.state_dict()), str(path))
    fresh = RelChaNet(12, 3, 2, hidden=(8,), seed=9)
    fresh.load_state_dict(load_file(str(path)))
    assert torch.equal(fresh.selected(), sel.selected())
    assert torch.equal(fresh.mask, sel.mask)
    assert torch.equal(fresh(x[:5]), sel(x[:5]))


@settings(max_examples=20, deadline=None)
@given(d=st.integers(2, 30), data=st.data())
def test_any_sizes_keep_invariants(d, data):
    k = data.draw(st.integers(1, d))
    c = data.draw(st.integers(0 if k == d else 1, d - k))
    sel = RelChaNet(d, k, 2, hidden=(3,), num_candidates=c, interval=1,
                    seed=data.draw(st.integers(0, 100)))
    x, y = torch.randn(5, d), torch.randint(0, 2, (5,))
    for _ in range(3):
        sel.zero_grad()
        torch.nn.functional.cross_entropy(sel(x), y).backward()
        sel.observe()
        assert int(sel.mask.sum()) == k + c
    chosen = sel.selected()
    assert len(chosen) == k and len(set(chosen.tolist())) == k
