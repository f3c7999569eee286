"""The routing learning-rate warm-up of :func:`~compactnn.experiments.planted_moe.
train_routed`: the gates' learning rate is ``gate_warmup_factor`` times theirs for the
first ``gate_warmup_epochs`` epochs, the experts' and towers' never changes, and a
warm-up of 0 epochs changes nothing."""

from __future__ import annotations

import pytest
import torch
from torch.optim.optimizer import register_optimizer_step_pre_hook

from compactnn.data.planted import make_planted_experts
from compactnn.experiments.planted_moe import train_routed

N_TRAIN, BATCH = 64, 32
STEPS_PER_EPOCH = N_TRAIN // BATCH


@pytest.fixture(scope="module")
def data():
    return make_planted_experts(8, 2, 2, input_dim=4, n_train=N_TRAIN, n_val=16, n_test=16,
                                seed=0)


def run(data, **kwargs):
    """``train_routed`` with the learning rate of every parameter recorded before every
    optimizer step: a list (one entry a step) of ``{id(param): lr}``; the parameters'
    values before the first step are kept in ``r["initial"]`` (``{id(param): value}``)."""
    steps: list[dict[int, float]] = []
    initial: dict[int, torch.Tensor] = {}

    def record(opt, args, kw):
        if not steps:
            initial.update({id(p): p.detach().clone() for g in opt.param_groups
                            for p in g["params"]})
        steps.append({id(p): g["lr"] for g in opt.param_groups for p in g["params"]})

    handle = register_optimizer_step_pre_hook(record)
    try:
        r = train_routed(data, num_experts=4, k=2, hidden=4, out=2, batch_size=BATCH,
                         patience=None, seed=0, **kwargs)
    finally:
        handle.remove()
    r["initial"] = initial
    return r, steps


def split(r, steps):
    """Per step: the set of learning rates of the gates' parameters and of the others'."""
    model = r["model"]
    gate_ids = {id(p) for p in model.gates.parameters()}
    other_ids = {id(p) for p in model.parameters()} - gate_ids
    assert gate_ids and other_ids
    for s in steps:
        assert set(s) == gate_ids | other_ids  # every parameter is optimized
    return ([{s[i] for i in gate_ids} for s in steps],
            [{s[i] for i in other_ids} for s in steps])


@pytest.mark.parametrize("gate", ["dselect_k", "softmax"])
def test_gate_lr_is_scaled_for_the_warmup_epochs_only(data, gate):
    lr, factor, epochs, warm = 0.01, 0.25, 4, 2
    r, steps = run(data, gate=gate, epochs=epochs, lr=lr, gate_warmup_epochs=warm,
                   gate_warmup_factor=factor)
    assert len(steps) == epochs * STEPS_PER_EPOCH
    gates, others = split(r, steps)
    warm_steps = warm * STEPS_PER_EPOCH
    assert gates[:warm_steps] == [{factor * lr}] * warm_steps
    assert gates[warm_steps:] == [{lr}] * (len(steps) - warm_steps)
    assert others == [{lr}] * len(steps)


def test_warmup_scales_a_separate_gate_lr(data):
    lr, gate_lr, factor = 0.01, 0.04, 0.5
    r, steps = run(data, gate="dselect_k", epochs=3, lr=lr, gate_lr=gate_lr,
                   gate_warmup_epochs=1, gate_warmup_factor=factor)
    gates, others = split(r, steps)
    assert gates == [{factor * gate_lr}] * STEPS_PER_EPOCH \
        + [{gate_lr}] * (2 * STEPS_PER_EPOCH)
    assert others == [{lr}] * len(steps)


def test_warmup_over_every_epoch_never_releases(data):
    r, steps = run(data, gate="dselect_k", epochs=2, lr=0.01, gate_warmup_epochs=2,
                   gate_warmup_factor=0.5)
    gates, others = split(r, steps)
    assert gates == [{0.005}] * len(steps) and others == [{0.01}] * len(steps)


def test_zero_warmup_epochs_changes_nothing(data):
    base, base_steps = run(data, gate="dselect_k", epochs=3, lr=0.01,
                           gate_params={"gamma": 1.0, "entropy_reg": 0.1})
    for factor in (0.1, 0.5):
        r, steps = run(data, gate="dselect_k", epochs=3, lr=0.01,
                       gate_params={"gamma": 1.0, "entropy_reg": 0.1},
                       gate_warmup_epochs=0, gate_warmup_factor=factor)
        gates, others = split(r, steps)
        assert gates == [{0.01}] * len(steps) and others == [{0.01}] * len(steps)
        assert r["val_history"] == base["val_history"]
        for a, b in zip(r["model"].state_dict().values(), base["model"].state_dict().values(),
                        strict=True):
            torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_the_warmup_lr_is_the_one_the_gates_move_by(data):
    # the same run with and without the warm-up (same seed, same initial gates): Adam's
    # first steps move each parameter by at most about its learning rate
    kw = {"gate": "dselect_k", "epochs": 1, "lr": 0.01, "gate_params": {"gamma": 1.0}}
    plain, _ = run(data, **kw)
    slow, _ = run(data, **kw, gate_warmup_epochs=1, gate_warmup_factor=0.1)

    def moved(r):
        z = r["model"].gates.z_logits
        return float((z.detach() - r["initial"][id(z)]).abs().max())

    torch.testing.assert_close(plain["initial"][id(plain["model"].gates.z_logits)],
                               slow["initial"][id(slow["model"].gates.z_logits)])
    assert 0 < moved(slow) <= STEPS_PER_EPOCH * 0.001 * 1.01
    assert moved(plain) > 2 * moved(slow)
