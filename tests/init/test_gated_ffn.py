"""Function matching through a gated FFN: the objective against a reference
written out here, decrease from the whitened start, near-zero at full rank,
only the low-rank gate/up parameters move, determinism, never worse than the
start, biases, and bad arguments."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from compactnn import LowRankLinear
from compactnn.init import fit_gated_ffn, input_moments, whitened_

D = torch.float64


def gen(seed):
    return torch.Generator().manual_seed(seed)


def swiglu(d=8, f=20, d_out=6, rows=400, seed=0):
    """Dense weights and correlated, off-centre inputs of a tiny SwiGLU block."""
    g = gen(seed)
    x = torch.randn(rows, d, generator=g, dtype=D) @ torch.randn(d, d, generator=g, dtype=D)
    x = x / d**0.5 + 0.3
    wg = torch.randn(f, d, generator=g, dtype=D) / d**0.5
    wu = torch.randn(f, d, generator=g, dtype=D) / d**0.5
    wd = torch.randn(d_out, f, generator=g, dtype=D) / f**0.5
    return x, wg, wu, wd


def whitened_pair(x, wg, wu, rank, bias=False):
    mom = input_moments([x])
    f, d = wg.shape
    gate, up = (LowRankLinear(d, f, rank, bias=bias, dtype=D) for _ in range(2))
    whitened_(gate, wg, moments=mom)
    whitened_(up, wu, moments=mom)
    return gate, up


def reference_j(gate, up, x, wg, wu, wd, bg=None, bu=None):
    """J = mean_rows |W_down (silu(W_g x) * W_u x - silu(gate x) * up x)|^2, written out."""
    with torch.no_grad():
        h = F.silu(x @ wg.T + (0 if bg is None else bg)) * (x @ wu.T + (0 if bu is None else bu))
        h_hat = F.silu(gate(x)) * up(x)
        return float(((h - h_hat) @ wd.T).square().sum(-1).mean())


def params(*layers):
    return [p.detach().clone() for lay in layers for p in lay.parameters()]


def test_objective_decreases_from_the_whitened_start_and_is_reported_exactly():
    x, wg, wu, wd = swiglu()
    gate, up = whitened_pair(x, wg, wu, 3)
    start = reference_j(gate, up, x, wg, wu, wd)
    stats = fit_gated_ffn(gate, up, x, w_gate=wg, w_up=wu, w_down=wd, steps=60,
                          batch_size=128)
    assert stats["before"] == pytest.approx(start, rel=1e-12)
    assert stats["after"] == pytest.approx(reference_j(gate, up, x, wg, wu, wd), rel=1e-12)
    assert stats["after"] < 0.8 * stats["before"]
    assert stats["best_step"] > 0 and stats["steps"] == 60
    h = F.silu(x @ wg.T) * (x @ wu.T)
    assert stats["target"] == pytest.approx(float((h @ wd.T).square().sum(-1).mean()), rel=1e-12)


def test_full_rank_fit_reaches_nearly_zero():
    x, wg, wu, wd = swiglu(d=4, f=8, d_out=3, rows=256, seed=1)
    gate, up = (LowRankLinear(4, 8, 4, bias=False, dtype=D) for _ in range(2))
    with torch.no_grad():  # exact factors, 20% multiplicative noise on U
        for seed, (lay, w) in enumerate(((gate, wg), (up, wu))):
            lay.U.copy_(w * (1 + 0.2 * torch.randn(8, 4, generator=gen(seed), dtype=D)))
            lay.V.copy_(torch.eye(4, dtype=D))
    stats = fit_gated_ffn(gate, up, x, w_gate=wg, w_up=wu, w_down=wd, steps=1000, lr=0.05,
                          batch_size=256)
    assert stats["before"] > 0.1 * stats["target"]
    assert stats["after"] < 1e-4 * stats["target"]


def test_only_the_low_rank_gate_and_up_parameters_move():
    x, wg, wu, wd = swiglu(seed=2)
    gate, up = whitened_pair(x, wg, wu, 3)
    dense = [nn.Parameter(t.clone()) for t in (wg, wu, wd)]
    xs = x.clone().requires_grad_()
    other = LowRankLinear(20, 6, 2, dtype=D)
    other_before = params(other)
    before = params(gate, up)
    fit_gated_ffn(gate, up, xs, w_gate=dense[0], w_up=dense[1], w_down=dense[2], steps=20)
    for p, t in zip(dense, (wg, wu, wd), strict=True):
        assert torch.equal(p.detach(), t) and p.grad is None
    assert xs.grad is None and torch.equal(xs.detach(), x)
    assert all(p.grad is None for lay in (gate, up) for p in lay.parameters())
    assert all(not torch.equal(a, b) for a, b in zip(params(gate, up), before, strict=True))
    assert all(torch.equal(a, b) for a, b in zip(params(other), other_before, strict=True))


def test_deterministic_given_the_seed():
    x, wg, wu, wd = swiglu(seed=3)
    runs = []
    for seed in (0, 0, 1):
        gate, up = whitened_pair(x, wg, wu, 3)
        fit_gated_ffn(gate, up, x, w_gate=wg, w_up=wu, w_down=wd, steps=30, batch_size=64,
                      seed=seed)
        runs.append(params(gate, up))
    assert all(torch.equal(a, b) for a, b in zip(runs[0], runs[1], strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(runs[0], runs[2], strict=True))


def test_never_worse_than_the_start():
    x, wg, wu, wd = swiglu(seed=4)
    gate, up = whitened_pair(x, wg, wu, 3)
    before = params(gate, up)
    stats = fit_gated_ffn(gate, up, x, w_gate=wg, w_up=wu, w_down=wd, steps=0)
    assert stats["after"] == stats["before"] and stats["best_step"] == 0
    assert all(torch.equal(a, b) for a, b in zip(params(gate, up), before, strict=True))
    # a learning rate that only makes things worse: the start is returned untouched
    stats = fit_gated_ffn(gate, up, x, w_gate=wg, w_up=wu, w_down=wd, steps=10, lr=1e4,
                          eval_every=1)
    assert stats["after"] == stats["before"] and stats["best_step"] == 0
    assert stats["evaluations"] == 11
    assert all(torch.equal(a, b) for a, b in zip(params(gate, up), before, strict=True))


def test_biases_are_fitted_and_b_down_cancels():
    x, wg, wu, wd = swiglu(seed=5)
    bg, bu = (0.5 * torch.randn(20, generator=gen(s), dtype=D) for s in (6, 7))
    results = []
    for b_down in (None, torch.randn(6, generator=gen(8), dtype=D)):
        gate, up = whitened_pair(x, wg, wu, 3, bias=True)
        with torch.no_grad():
            gate.bias.copy_(bg)
            up.bias.copy_(bu)
        stats = fit_gated_ffn(gate, up, x, w_gate=wg, w_up=wu, w_down=wd, b_gate=bg, b_up=bu,
                              b_down=b_down, steps=60, batch_size=100)
        assert stats["after"] == pytest.approx(reference_j(gate, up, x, wg, wu, wd, bg, bu),
                                               rel=1e-12)
        assert stats["after"] < stats["before"]
        assert not torch.equal(gate.bias.detach(), bg)
        results.append(params(gate, up))
    assert all(torch.equal(a, b) for a, b in zip(*results, strict=True))


def test_three_d_token_inputs_equal_their_rows():
    x, wg, wu, wd = swiglu(seed=9)
    out = []
    for xs in (x, x.reshape(20, 20, 8)):
        gate, up = whitened_pair(x, wg, wu, 3)
        out.append(fit_gated_ffn(gate, up, xs, w_gate=wg, w_up=wu, w_down=wd, steps=5))
    assert out[0] == out[1]


def test_held_out_rows_choose_the_iterate():
    x, wg, wu, wd = swiglu(rows=440, seed=11)
    cal, val = x[:40], x[40:]  # few calibration rows: the fit overfits them
    runs = {}
    for name, kw in (("plain", {}), ("early", {"x_val": val})):
        gate, up = whitened_pair(cal, wg, wu, 3)
        runs[name] = fit_gated_ffn(gate, up, cal, w_gate=wg, w_up=wu, w_down=wd, steps=200,
                                   lr=0.05, batch_size=16, eval_every=5, **kw)
        runs[name + "_val"] = reference_j(gate, up, val, wg, wu, wd)
        runs[name + "_cal"] = reference_j(gate, up, cal, wg, wu, wd)
    early = runs["early"]
    assert early["val_after"] == pytest.approx(runs["early_val"], rel=1e-12)
    assert early["after"] == pytest.approx(runs["early_cal"], rel=1e-12)
    assert early["val_after"] <= early["val_before"]
    # the same trajectory (held-out rows do not steer it), the best of it on them
    assert runs["early_val"] < runs["plain_val"]
    assert runs["plain"]["after"] <= early["after"]
    assert "val_after" not in runs["plain"]


def test_bad_arguments_raise_and_leave_the_layers_untouched():
    x, wg, wu, wd = swiglu(seed=10)
    gate, up = whitened_pair(x, wg, wu, 3)
    before = params(gate, up)
    ok = {"w_gate": wg, "w_up": wu, "w_down": wd}
    bad = [
        ((nn.Linear(8, 20), up, x), {}, TypeError, "gate"),
        ((gate, gate, x), {}, ValueError, "different"),
        ((gate, LowRankLinear(8, 21, 3, dtype=D), x), {}, ValueError, "same shape"),
        ((gate, LowRankLinear(8, 20, 3), x), {}, ValueError, "dtype"),
        ((gate, up, x[:, :7]), {}, ValueError, "features"),
        ((gate, up, x[:0]), {}, ValueError, "no rows"),
        ((gate, up, torch.full_like(x, float("nan"))), {}, ValueError, "non-finite"),
        ((gate, up, x.long()), {}, TypeError, "floating"),
        ((gate, up, x), {"w_gate": wg.T}, ValueError, "w_gate"),
        ((gate, up, x), {"w_up": wu[:5]}, ValueError, "w_up"),
        ((gate, up, x), {"w_down": wd[:, :5]}, ValueError, "w_down"),
        ((gate, up, x), {"w_down": wd * float("inf")}, ValueError, "non-finite"),
        ((gate, up, x), {"b_down": torch.zeros(5, dtype=D)}, ValueError, "b_down"),
        ((gate, up, x), {"b_gate": torch.zeros(20, dtype=D)}, ValueError, "bias=False"),
        ((gate, up, x), {"b_up": torch.zeros(3, dtype=D)}, ValueError, "b_up"),
        ((gate, up, x), {"steps": -1}, ValueError, "steps"),
        ((gate, up, x), {"steps": 2.5}, TypeError, "steps"),
        ((gate, up, x), {"lr": 0.0}, ValueError, "lr"),
        ((gate, up, x), {"lr": float("nan")}, ValueError, "lr"),
        ((gate, up, x), {"batch_size": 0}, ValueError, "batch_size"),
        ((gate, up, x), {"seed": -1}, ValueError, "seed"),
        ((gate, up, x), {"eval_every": 0}, ValueError, "eval_every"),
        ((gate, up, x), {"activation": "softplus"}, ValueError, "activation"),
        ((gate, up, x), {"x_val": x[:, :3]}, ValueError, "x_val"),
        ((gate, up, x), {"x_val": x[:0]}, ValueError, "x_val holds no rows"),
        ((gate, up, x), {"x_val": x.numpy()}, TypeError, "x_val"),
    ]
    for args, kw, exc, match in bad:
        with pytest.raises(exc, match=match):
            fit_gated_ffn(*args, **{**ok, **kw})
        assert all(torch.equal(a, b) for a, b in zip(params(gate, up), before, strict=True))
