"""MLPBank: stacked experts and towers equal separate nn.Sequential MLPs (float64)."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from compactnn.moe import (
    BankMember,
    MixtureOfExperts,
    MLPBank,
    SoftmaxGate,
    mlp_experts,
    mlp_towers,
)


def grads(loss: torch.Tensor, params: list[torch.Tensor]) -> list[torch.Tensor]:
    return list(torch.autograd.grad(loss, params))


@given(n=st.integers(1, 5), d=st.integers(1, 6), hidden=st.lists(st.integers(1, 6), max_size=2),
       out=st.integers(1, 4), batch=st.integers(1, 6), bias=st.booleans())
@settings(max_examples=25, deadline=None)
def test_bank_equals_separate_members(n, d, hidden, out, batch, bias) -> None:
    torch.manual_seed(0)
    bank = MLPBank(n, d, hidden, out, bias=bias).double()
    members = [bank.member(e) for e in range(n)]  # independent nn.Sequential copies
    assert len(members) == n and all(isinstance(m, nn.Sequential) for m in members)
    x = torch.randn(batch, d, dtype=torch.float64, requires_grad=True)
    y = bank(x)
    assert y.shape == (n, batch, out)
    probe = torch.randn_like(y)
    ref = torch.stack([m(x) for m in members])
    torch.testing.assert_close(y, ref)
    # gradients: the bank's stacked grads equal the members' grads, stacked the same way
    g_bank = grads((y * probe).sum(), [*bank.parameters(), x])
    sep_params = [p for m in members for p in m.parameters()]
    g_sep = grads((ref * probe).sum(), [*sep_params, x])
    torch.testing.assert_close(g_bank[-1], g_sep[-1])
    per = len(sep_params) // n
    states = [{k: g for (k, _), g in zip(m.named_parameters(), g_sep[e * per:(e + 1) * per],
                                         strict=True)} for e, m in enumerate(members)]
    want = bank.stack_states(states)
    for (name, _), g in zip(bank.named_parameters(), g_bank[:-1], strict=True):
        torch.testing.assert_close(g, want[name])
    # own rows per member, a subset of members, and sorted row slices
    xs = torch.randn(n, batch, d, dtype=torch.float64)
    torch.testing.assert_close(bank(xs), torch.stack([m(xs[e]) for e, m in enumerate(members)]))
    ids = torch.tensor([e for e in range(n) if e % 2 == 0])
    torch.testing.assert_close(bank(x, members=ids), ref[ids])
    counts = [(e * 7) % (batch + 1) for e in range(n)]
    if sum(counts):
        rows = torch.randn(sum(counts), d, dtype=torch.float64)
        starts = [sum(counts[:e]) for e in range(n)]
        want_rows = torch.cat([members[e](rows[starts[e]:starts[e] + c])
                               for e, c in enumerate(counts) if c])
        torch.testing.assert_close(bank.forward_rows(rows, counts), want_rows)


def test_initialization_matches_nn_linear_bounds_and_varies() -> None:
    torch.manual_seed(0)
    bank = mlp_experts(16, in_features=50, hidden_features=20, out_features=3)
    for w, b, fan_in in zip(bank.weights, bank.biases, (50, 20), strict=True):
        bound = 1 / math.sqrt(fan_in)
        assert w.abs().max() <= bound and b.abs().max() <= bound
        assert w.abs().max() > 0.9 * bound  # uniform over the whole range
        assert not torch.equal(w[0], w[1])


def test_towers_with_different_widths_and_round_trip() -> None:
    torch.manual_seed(0)
    towers = mlp_towers(3, 4, [5], [1, 3, 2]).double()
    h = torch.randn(3, 6, 4, dtype=torch.float64)
    outs = towers.split(towers(h))
    assert [o.shape for o in outs] == [(6, 1), (6, 3), (6, 2)]
    for t, o in enumerate(outs):
        torch.testing.assert_close(o, towers.member(t)(h[t]))
    rebuilt = MLPBank.from_modules([towers.member(t) for t in range(3)]).double()
    for a, b in zip(rebuilt.state_dict().values(), towers.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    # a state saved from separate towers loads into the bank
    per_module = {f"{t}.{k}": v for t in range(3) for k, v in towers.member(t).state_dict().items()}
    other = mlp_towers(3, 4, [5], [1, 3, 2]).double()
    other.load_state_dict(per_module)
    torch.testing.assert_close(other(h), towers(h))


def test_dropout_layout_and_repr() -> None:
    bank = mlp_experts(2, 3, [4, 4], 2, dropout=0.5)
    assert bank.linear_positions() == [0, 3, 6]
    assert [type(m).__name__ for m in bank.member(0)] == [
        "Linear", "ReLU", "Dropout", "Linear", "ReLU", "Dropout", "Linear"]
    assert "num_members=2" in repr(bank)
    bank.eval()
    x = torch.randn(5, 3)
    torch.testing.assert_close(bank(x)[1], bank.member(1).eval()(x))


def test_bad_input() -> None:
    with pytest.raises(ValueError, match="num_experts must be >= 1"):
        mlp_experts(0, 3, 4, 2)
    with pytest.raises(ValueError, match="in_features must be >= 1"):
        mlp_experts(2, 0, 4, 2)
    with pytest.raises(ValueError, match="dropout"):
        mlp_experts(2, 3, 4, 2, dropout=1.0)
    with pytest.raises(ValueError, match="has parameters"):
        mlp_experts(2, 3, 4, 2, activation=nn.PReLU)
    with pytest.raises(ValueError, match="2 output widths for 3 members"):
        mlp_towers(3, 3, 4, [1, 2])
    bank = mlp_experts(2, 3, 4, 2)
    with pytest.raises(ValueError, match="3 features per row"):
        bank(torch.randn(5, 4))
    with pytest.raises(ValueError, match="expert shapes do not match"):
        MLPBank.from_modules([nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2)),
                              nn.Sequential(nn.Linear(3, 5), nn.ReLU(), nn.Linear(5, 2))])
    with pytest.raises(ValueError, match="1 linear layers, the bank has 2"):
        bank.load_state_dict({"0.0.weight": torch.zeros(4, 3), "0.0.bias": torch.zeros(4),
                              "1.0.weight": torch.zeros(4, 3), "1.0.bias": torch.zeros(4)})
    with pytest.raises(ValueError, match="separate modules"):
        bank.load_state_dict({f"{e}.0.weight": torch.zeros(4, 3) for e in range(3)})


def test_indexing_and_iterating_give_members_that_train_the_bank() -> None:
    torch.manual_seed(3)
    bank = MLPBank(3, 4, [5], [2, 3, 3]).double()
    views = list(bank)
    assert all(isinstance(v, BankMember) for v in views) and bank[-1].index == 2
    x = torch.randn(2, 6, 4, dtype=torch.float64)
    for e, v in enumerate(views):  # the same function as an independent copy, any leading dims
        torch.testing.assert_close(v(x), bank.member(e)(x))
    assert views[0](x).shape == (2, 6, 2)
    # a model built from the members trains the bank, and only member 1's slices move
    before = [w.detach().clone() for w in bank.weights]
    opt = torch.optim.SGD(nn.ModuleList(views).parameters(), lr=0.1)
    assert {id(p) for g in opt.param_groups for p in g["params"]} == {
        id(p) for p in bank.parameters()}
    views[1](x).square().sum().backward()
    opt.step()
    for w, w0 in zip(bank.weights, before, strict=True):
        assert not torch.equal(w[1], w0[1])
        torch.testing.assert_close(w[[0, 2]], w0[[0, 2]], rtol=0, atol=0)
    with pytest.raises(ValueError, match="e must be"):
        bank[3]
    with pytest.raises(TypeError, match="bank must be an MLPBank"):
        BankMember(nn.Linear(2, 2), 0)


def test_mixture_over_a_list_of_members_equals_the_bank() -> None:
    torch.manual_seed(4)
    bank = mlp_experts(4, 5, [6], 3).double()
    gate = SoftmaxGate(4, input_dim=5).double()
    x = torch.randn(7, 5, dtype=torch.float64)
    out_bank, _ = MixtureOfExperts(bank, gate, execution="dense")(x)
    out_list, _ = MixtureOfExperts(list(bank), gate, execution="sparse")(x)
    torch.testing.assert_close(out_list, out_bank)
