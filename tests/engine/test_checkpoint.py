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
