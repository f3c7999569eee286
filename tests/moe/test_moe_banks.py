"""Gate banks equal T separate gates (values, aux losses, gradients; float64)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from compactnn.moe import (
    DSelectKBank,
    DSelectKGate,
    GateBank,
    MultiGateMoE,
    NoisyTopKBank,
    NoisyTopKGate,
    SoftmaxBank,
    SoftmaxGate,
    gate_bank,
    mlp_experts,
)

D = 5

GATES = {
    "dselect_k": lambda d, n: DSelectKGate(n, k=2, input_dim=d, entropy_reg=0.3),
    "dselect_k_mean": lambda d, n: DSelectKGate(n, k=3, input_dim=d, entropy_reg=0.1,
                                                reduction="mean", gamma=0.5),
    "softmax": lambda d, n: SoftmaxGate(n, input_dim=d),
    "topk": lambda d, n: NoisyTopKGate(n, k=2, input_dim=d, importance_reg=0.2, load_reg=0.5),
    "topk_quiet": lambda d, n: NoisyTopKGate(n, k=1, input_dim=d, noisy=False,
                                             importance_reg=0.7),
}


def separate_gates(kind: str, tasks: int, per_example: bool, n: int = 6) -> list:
    gates = []
    for _ in range(tasks):
        g = GATES[kind](D if per_example else None, n).double()
        with torch.no_grad():
            for p in g.parameters():
                p.normal_(0, 0.7)  # away from the initial (often zero) values
        gates.append(g)
    return gates


def fix_noise(bank: GateBank, gates: list, shape: tuple[int, ...]) -> None:
    """The same noise for the bank (batch first: (batch, T, n)) and each gate."""
    noise = torch.randn(*shape, dtype=torch.float64)
    bank.draw_noise = lambda like: noise
    for t, g in enumerate(gates):
        g.draw_noise = lambda like, t=t: noise[..., t, :]


@pytest.mark.parametrize("kind", sorted(GATES))
@pytest.mark.parametrize("per_example", [False, True])
@pytest.mark.parametrize("training", [True, False])
def test_bank_equals_separate_gates(kind: str, per_example: bool, training: bool) -> None:
    torch.manual_seed(0)
    tasks, n, batch = 3, 6, 7
    gates = separate_gates(kind, tasks, per_example, n)
    bank = type(gate_bank(gates[0], 1)).from_gates(gates)
    bank.train(training)
    for g in gates:
        g.train(training)
    x = torch.randn(batch, D, dtype=torch.float64, requires_grad=True) if per_example else None
    fix_noise(bank, gates, (batch, tasks, n) if per_example else (tasks, n))
    weights, aux = bank.task_forward(x)
    singles = [g(x) for g in gates]
    torch.testing.assert_close(weights, torch.stack([w for w, _ in singles]))
    torch.testing.assert_close(aux, torch.stack([a for _, a in singles]))
    _, total = bank(x)
    torch.testing.assert_close(total, aux.sum())
    if training and kind in ("dselect_k", "topk", "topk_quiet"):
        assert (aux > 0).all()  # the regularizers are on: the comparison is not vacuous

    # gradients of a random loss, with respect to every parameter and the routing input
    probe = torch.randn_like(weights)
    loss_bank = (weights * probe).sum() + aux.sum()
    loss_sep = sum((w * probe[t]).sum() + a for t, (w, a) in enumerate(singles))
    params = list(bank.parameters())
    grads = torch.autograd.grad(loss_bank, params + ([x] if per_example else []),
                                allow_unused=True)
    sep_params = [list(g.parameters()) for g in gates]
    flat = [p for ps in sep_params for p in ps]
    sep_grads = torch.autograd.grad(loss_sep, flat + ([x] if per_example else []),
                                    allow_unused=True)
    names = [name for name, _ in gates[0].named_parameters()]
    per_gate = [dict(zip(names, sep_grads[i * len(names):(i + 1) * len(names)], strict=True))
                for i in range(tasks)]
    per_gate = [{k: (v if v is not None else torch.zeros_like(dict(gates[0].named_parameters())[k]))
                 for k, v in d.items()} for d in per_gate]
    want = bank.stack_states(per_gate)
    for (name, _), g in zip(bank.named_parameters(), grads[: len(params)], strict=True):
        got = torch.zeros_like(want[name]) if g is None else g
        torch.testing.assert_close(got, want[name], msg=name)
    if per_example:
        torch.testing.assert_close(grads[-1], sep_grads[-1])


@pytest.mark.parametrize("kind", ["dselect_k", "softmax", "topk"])
@pytest.mark.parametrize("per_example", [False, True])
def test_task_views_and_state_round_trip(kind: str, per_example: bool) -> None:
    torch.manual_seed(1)
    gates = separate_gates(kind, 4, per_example)
    bank = type(gate_bank(gates[0], 1)).from_gates(gates)
    x = torch.randn(3, D, dtype=torch.float64) if per_example else None
    bank.eval()
    for t, g in enumerate(gates):
        view = bank[t].eval()
        assert type(view) is type(g) and view.config() == g.config()
        torch.testing.assert_close(view(x)[0], g.eval()(x)[0])
    assert len(bank) == 4 and [type(g) for g in bank] == [type(gates[0])] * 4
    # a state saved from the separate gates loads into the bank, and the bank's splits back
    per_module = {f"{t}.{k}": v for t, g in enumerate(gates) for k, v in g.state_dict().items()}
    other = type(bank)(4, **gates[0].config()).double()
    other.load_state_dict(per_module)
    for name, value in bank.state_dict().items():
        assert torch.equal(other.state_dict()[name], value)
    for g, part in zip(gates, bank.split_state(bank.state_dict()), strict=True):
        for k, v in g.state_dict().items():
            assert torch.equal(part[k], v)


@given(tasks=st.integers(1, 5), n=st.integers(2, 9), k=st.data())
@settings(max_examples=15, deadline=None)
def test_dselect_k_bank_template_initialization(tasks: int, n: int, k) -> None:
    kk = k.draw(st.integers(1, n))
    gamma = 0.5
    bank = gate_bank(DSelectKGate(n, k=kk, gamma=gamma), tasks)
    assert isinstance(bank, DSelectKBank)
    m = bank.num_binary
    assert bank.z_logits.shape == (tasks, kk, m) and bank.w_logits.shape == (tasks, kk)
    assert bank.z_logits.abs().max() <= gamma / 100 and bank.w_logits.abs().max() <= 0.05
    per_example = gate_bank(DSelectKGate(n, k=kk, gamma=gamma, input_dim=3), tasks)
    assert per_example.z_proj.out_features == tasks * kk * m
    assert per_example.w_proj.out_features == tasks * kk
    weights, _ = per_example(torch.randn(4, 3))
    assert weights.shape == (tasks, 4, n)


def test_banks_of_each_kind_and_layer_uses_a_bank_for_a_template() -> None:
    assert isinstance(gate_bank(SoftmaxGate(4), 2), SoftmaxBank)
    assert isinstance(gate_bank(NoisyTopKGate(4, k=2, input_dim=3), 2), NoisyTopKBank)
    model = MultiGateMoE(mlp_experts(4, 3, 5, 2), 3, gate=SoftmaxGate(4, input_dim=3))
    assert isinstance(model.gates, SoftmaxBank) and model.gates.num_tasks == 3
    default = MultiGateMoE(mlp_experts(4, 3, 5, 2), 2)
    assert isinstance(default.gates, DSelectKBank) and default.gates.k == 2


def test_bank_bad_input() -> None:
    with pytest.raises(ValueError, match="num_tasks must be >= 1"):
        DSelectKBank(0, 4, k=2)
    with pytest.raises(TypeError, match="num_tasks must be an int"):
        SoftmaxBank(2.0, 4)
    with pytest.raises(ValueError, match="k must be <= num_experts"):
        DSelectKBank(2, 4, k=5)
    with pytest.raises(ValueError, match="gamma"):
        DSelectKBank(2, 4, k=2, gamma=1e30)
    bank = NoisyTopKBank(2, 4, k=2, input_dim=3)
    with pytest.raises(ValueError, match=r"shape \(batch, 3\), got \(5, 4\)"):
        bank(torch.randn(5, 4))
    with pytest.raises(ValueError, match="needs a routing input"):
        bank()
    with pytest.raises(ValueError, match="configuration"):
        DSelectKBank.from_gates([DSelectKGate(4, k=2), DSelectKGate(4, k=1)])
    with pytest.raises(TypeError, match="SoftmaxGate"):
        DSelectKBank.from_gates([SoftmaxGate(4)])
    with pytest.raises(ValueError, match="2 tasks"):
        DSelectKBank(2, 4, k=2).load_state_dict(
            {f"{t}.{k}": v for t in range(3) for k, v in DSelectKGate(4, k=2).state_dict().items()})
    with pytest.raises(ValueError, match="num_tasks=3"):
        MultiGateMoE(mlp_experts(4, 3, 5, 2), 2, gate=DSelectKBank(3, 4, k=2))
    with pytest.raises(TypeError, match="no bank"):
        gate_bank(torch.nn.Linear(2, 2), 2)  # type: ignore[arg-type]


def test_analysis_reads_banks_like_separate_gates() -> None:
    from compactnn.moe import gate_weights as all_weights
    from compactnn.moe import nonzeros_per_task, selector_entropies, task_expert_weights

    torch.manual_seed(2)
    model = MultiGateMoE(mlp_experts(8, D, 4, 2), 3,
                         gate=DSelectKGate(8, k=2, input_dim=D)).eval()
    with torch.no_grad():
        model.gates.z_proj.weight.normal_(0, 5.0)
    separate = list(model.gates)
    x = torch.randn(6, D)
    want = torch.stack([g(x)[0] for g in separate])
    torch.testing.assert_close(all_weights(model, x), want)
    torch.testing.assert_close(task_expert_weights(model, x), want.mean(1))
    assert torch.equal(nonzeros_per_task(model, x), (want != 0).any(1).sum(-1))
    entropies = selector_entropies(model.gates, x)
    assert entropies.shape == (3, 6, 2)
    torch.testing.assert_close(entropies[1], selector_entropies(separate[1], x))
    static = MultiGateMoE(mlp_experts(8, D, 4, 2), 2, gate=SoftmaxGate(8))
    assert all_weights(static).shape == (2, 1, 8)
