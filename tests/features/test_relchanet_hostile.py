"""RelChaNet on hostile use: selecting before any scoring round, no rows, too few
mini-batches for a round, and constant (zero-variance) features."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from compactnn.features import RelChaNet


def _state(sel: RelChaNet) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in sel.state_dict().items()}


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_selected_before_any_round_is_refused():
    sel = RelChaNet(10, 3, 2, hidden=(4,), interval=2)
    with pytest.raises(RuntimeError, match=r"no scoring round has ended yet .*interval=2"):
        sel.selected()
    with pytest.raises(RuntimeError, match="no scoring round"):
        sel.transform(torch.randn(4, 10))
    # one mini-batch of a two-batch round is still no round
    F.cross_entropy(sel(torch.randn(5, 10)), torch.zeros(5, dtype=torch.long)).backward()
    assert sel.observe() == []
    with pytest.raises(RuntimeError, match="no scoring round"):
        sel.selected()
    sel.observe()
    assert len(sel.selected()) == 3


def test_selecting_every_feature_needs_no_round():
    sel = RelChaNet(4, 4, 2, hidden=(3,), num_candidates=0)
    assert sel.selected().tolist() == [0, 1, 2, 3]


def test_fit_on_no_rows_is_refused_and_changes_nothing():
    sel = RelChaNet(6, 2, 2, hidden=(4,))
    before = _state(sel)
    with pytest.raises(ValueError, match="x has no rows"):
        sel.fit(torch.zeros(0, 6), torch.zeros(0, dtype=torch.long))
    assert _same(before, _state(sel))
    with pytest.raises(RuntimeError, match="no scoring round"):
        sel.selected()


def test_fit_too_short_for_a_round_is_refused_before_training():
    """3 rows in batches of 2 for 2 epochs: 4 mini-batches, fewer than interval=10."""
    sel = RelChaNet(6, 2, 2, hidden=(4,), interval=10)
    before = _state(sel)
    x, y = torch.randn(3, 6), torch.tensor([0, 1, 0])
    with pytest.raises(ValueError, match=r"fit would end no scoring round: 2 epoch\(s\) of "
                                         r"2 mini-batch\(es\) is fewer than interval=10"):
        sel.fit(x, y, epochs=2, batch_size=2)
    assert _same(before, _state(sel))
    sel.fit(x, y, epochs=5, batch_size=2)  # 10 mini-batches: exactly one round
    assert int(sel.rounds.max()) == 1 and len(sel.selected()) == 2


def test_constant_features_are_not_selected_over_informative_ones():
    """Three constant columns of value 3 act as extra biases: with this seed the
    unguarded ranking selects all three over the informative features 0, 1, 2."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(1000, 12, generator=g)
    x[:, 8:] = 3.0
    y = ((x[:, 0] + x[:, 1] - x[:, 2]) > 0).long()
    sel = RelChaNet(12, 3, 2, hidden=(16,), seed=1).fit(x, y, epochs=4)
    assert sel.selected().tolist() == [0, 1, 2]
    assert sel.varies.tolist() == [True] * 8 + [False] * 4


def test_variation_is_tracked_across_batches_and_only_in_training():
    sel = RelChaNet(3, 1, 2, hidden=(2,))
    sel.eval()
    sel(torch.tensor([[1.0, 2.0, 3.0], [4.0, 2.0, 3.0]]))
    assert not sel.varies.any() and not bool(sel.seen)
    sel.train()
    sel(torch.tensor([[1.0, 2.0, 3.0]]))  # one row: nothing varies yet
    assert sel.varies.tolist() == [False, False, False]
    sel(torch.tensor([[1.0, 2.0, 5.0]]))  # differs from the first row in column 2 only
    assert sel.varies.tolist() == [False, False, True]
    sel(torch.zeros(0, 3))
    assert sel.reference.tolist() == [1.0, 2.0, 3.0]


@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_ranking_puts_every_varying_feature_before_constant_ones(data):
    """Whatever the scores, a constant active feature is never selected while a
    varying active one is left out, and pruning drops constant ones first."""
    d = data.draw(st.integers(3, 12))
    k = data.draw(st.integers(1, d - 1))
    c = data.draw(st.integers(1, d - k))
    sel = RelChaNet(d, k, 2, hidden=(3,), num_candidates=c, interval=1,
                    seed=data.draw(st.integers(0, 50)))
    varies = torch.tensor(data.draw(st.lists(st.booleans(), min_size=d, max_size=d)))
    scores = torch.tensor(data.draw(st.lists(st.floats(-5, 5), min_size=d, max_size=d)),
                          dtype=torch.float64)
    sel.varies.copy_(varies)
    sel.score_sum.copy_(scores)
    sel.rounds.fill_(1)
    active = sel.mask.nonzero().flatten().tolist()
    chosen = set(sel.selected().tolist())
    left_out = set(active) - chosen
    assert not any(not varies[i] and any(varies[j] for j in left_out) for i in chosen)
    # the best-scored varying features are the ones chosen among the varying ones
    vary_chosen = [i for i in chosen if varies[i]]
    vary_out = [j for j in left_out if varies[j]]
    if vary_chosen and vary_out:
        assert min(scores[i] for i in vary_chosen) >= max(scores[j] for j in vary_out)

    # a round with zero gradient (every z = 0): pruning is by constancy, then score
    sel.first.weight.grad = torch.zeros_like(sel.first.weight)
    before = sel.mask.clone()
    sel.observe()
    dropped = (before & ~sel.mask).nonzero().flatten().tolist()
    kept = (before & sel.mask).nonzero().flatten().tolist()
    assert not any(varies[i] and not varies[j] for i in dropped for j in kept)
