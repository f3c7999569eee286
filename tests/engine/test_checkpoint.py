"""Training checkpoints: nested state round trips, exact restore of model,
optimizer, scheduler and random generators, refusal of foreign files."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from compactnn.engine import checkpoint_state, load_checkpoint, lr_scheduler, save_checkpoint
from compactnn.engine.checkpoint import flatten_state, unflatten_state

scalars = st.one_of(st.integers(-10**6, 10**6), st.floats(allow_nan=False), st.booleans(),
                    st.none(), st.text(max_size=5))
states = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.tuples(inner, inner),
                            st.dictionaries(st.one_of(st.text(max_size=4), st.integers(0, 9)),
                                            inner, max_size=3)),
    max_leaves=12)


@settings(max_examples=50, deadline=None)
@given(states)
def test_flatten_round_trip_of_json_like_state(state):
    tensors: dict = {}
    skeleton = flatten_state(state, tensors, "x")
    assert tensors == {}
    assert unflatten_state(skeleton, tensors) == state


def test_flatten_round_trip_with_tensors():
    state = {0: {"momentum_buffer": torch.arange(3.0)}, "k": (torch.ones(2), [1, 2])}
    tensors: dict = {}
    back = unflatten_state(flatten_state(state, tensors, "o"), tensors)
    assert torch.equal(back[0]["momentum_buffer"], torch.arange(3.0))
    assert torch.equal(back["k"][0], torch.ones(2)) and back["k"][1] == [1, 2]


def setup(seed: int = 0):
    torch.manual_seed(seed)
    model = nn.Linear(4, 3)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    return model, opt, lr_scheduler(opt, "cosine", 10)


def step(model, opt, sched):
    opt.zero_grad()
    model(torch.randn(5, 4)).square().mean().backward()
    opt.step()
    sched.step()


def test_save_load_restores_everything_exactly(tmp_path):
    model, opt, sched = setup()
    for _ in range(3):
        step(model, opt, sched)
    save_checkpoint(tmp_path / "c.safetensors", model, opt, sched, state={"epoch": 2},
                    extra={"mask": torch.tensor([True, False])})
    step(model, opt, sched)
    ref = [p.detach().clone() for p in model.parameters()]
    expected = (torch.rand(3), np.random.rand(), random.random())  # noqa: NPY002

    model2, opt2, sched2 = setup(seed=1)
    state, extra = load_checkpoint(tmp_path / "c.safetensors", model2, opt2, sched2)
    assert state == {"epoch": 2} == checkpoint_state(tmp_path / "c.safetensors")
    assert torch.equal(extra["mask"], torch.tensor([True, False]))
    # generators, momentum and schedule are as at the save: the same next step follows
    step(model2, opt2, sched2)
    for a, b in zip(ref, model2.parameters(), strict=True):
        assert torch.equal(a, b)
    again = (torch.rand(3), np.random.rand(), random.random())  # noqa: NPY002
    assert torch.equal(expected[0], again[0]) and expected[1:] == again[1:]
    assert sched2.last_epoch == sched.last_epoch


def test_a_foreign_file_or_model_is_refused(tmp_path):
    import safetensors.torch as sf

    sf.save_file({"w": torch.zeros(1)}, str(tmp_path / "other.safetensors"))
    model, opt, sched = setup()
    with pytest.raises(ValueError, match="not a compactnn training checkpoint"):
        load_checkpoint(tmp_path / "other.safetensors", model, opt, sched)
    save_checkpoint(tmp_path / "c.safetensors", model, opt, sched)
    with pytest.raises(ValueError, match="does not fit this model"):
        load_checkpoint(tmp_path / "c.safetensors", nn.Linear(4, 2))


# --------------------------------------------------------------- hostile checkpoints


def tamper(path, edit) -> None:
    """Rewrite a checkpoint with ``edit(meta, tensors)`` applied to its contents."""
    import json

    import safetensors.torch as sf
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        raw = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    meta = json.loads(raw["json"])
    edit(meta, tensors)
    sf.save_file(tensors, str(path), metadata={**raw, "json": json.dumps(meta)})


def saved(tmp_path):
    model, opt, sched = setup()
    for _ in range(2):
        step(model, opt, sched)
    path = tmp_path / "c.safetensors"
    save_checkpoint(path, model, opt, sched, state={"epoch": 1})
    return path


def fresh_untouched(path, match):
    """Loading ``path`` fails with ``match`` and changes neither the model, the
    optimizer nor the scheduler."""
    model, opt, sched = setup(seed=7)
    before = ([p.detach().clone() for p in model.parameters()], repr(opt.state_dict()),
              sched.state_dict())
    with pytest.raises(ValueError, match=match):
        load_checkpoint(path, model, opt, sched)
    assert all(torch.equal(a, b) for a, b in zip(before[0], model.parameters(), strict=True))
    assert repr(opt.state_dict()) == before[1] and sched.state_dict() == before[2]


@pytest.mark.parametrize("edit,match", [
    (lambda m, t: m["scheduler"].update(optimizer="x"), "unknown scheduler entry 'optimizer'"),
    (lambda m, t: m["scheduler"].update(base_lrs=["fast"]), "base_lrs\\[0\\] must be a finite"),
    (lambda m, t: m["scheduler"].update(last_epoch=1.5e308 * 10), "last_epoch must be a finite"),
    (lambda m, t: m["scheduler"].update(lr_lambdas=[{"a": 1}]), "lr_lambdas\\[0\\] must be null"),
])
def test_scheduler_state_is_checked_not_copied_into_attributes(tmp_path, edit, match):
    path = saved(tmp_path)
    tamper(path, edit)
    fresh_untouched(path, match)


def _group(m):
    return m["optimizer"]["param_groups"][0]


@pytest.mark.parametrize("edit,match", [
    (lambda m, t: _group(m).update(lr="abc"), "group 0 lr must be a finite number"),
    (lambda m, t: _group(m).update(lr=float("nan")), "group 0 lr must be a finite number"),
    (lambda m, t: _group(m).update(lr=-1.0), "lr must be >= 0"),
    (lambda m, t: _group(m).update(nesterov="yes"), "nesterov must be true or false"),
    (lambda m, t: _group(m).update(device="cuda"), "other entries"),
    (lambda m, t: _group(m).update(params=[0, 5]), "holds other parameters"),
    (lambda m, t: t.pop("optim.state.0.momentum_buffer"), "'optim.state.0.momentum_buffer' is "
                                                           "missing"),
    (lambda m, t: t.update({"optim.state.0.momentum_buffer": torch.zeros(7)}), "has shape"),
    (lambda m, t: t.update({"optim.state.1.momentum_buffer": torch.full((3,), float("inf"))}),
     "non-finite"),
    (lambda m, t: t.pop("rng.torch"), "random generators' state is malformed"),
    (lambda m, t: m["rng"]["python"][1].pop(), "random generators' state is malformed"),
])
def test_optimizer_and_generator_state_is_checked_before_anything_is_applied(
        tmp_path, edit, match):
    path = saved(tmp_path)
    tamper(path, edit)
    fresh_untouched(path, match)
