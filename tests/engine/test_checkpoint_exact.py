"""Training checkpoints exactly: a numpy generator position of the wrong type is
refused before anything is applied, the mismatch message says what to do, and a file
without a state entry loads as an empty state."""

from __future__ import annotations

import json

import pytest
import safetensors.torch as sf
import torch
from safetensors import safe_open
from torch import nn

from compactnn.engine import load_checkpoint, lr_scheduler, save_checkpoint


def _setup(seed: int = 0):
    torch.manual_seed(seed)
    model = nn.Linear(4, 3)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    return model, opt, lr_scheduler(opt, "cosine", 10)


def _tamper(path, edit) -> None:
    with safe_open(str(path), "pt") as f:
        raw = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    meta = json.loads(raw["json"])
    edit(meta)
    sf.save_file(tensors, str(path), metadata={**raw, "json": json.dumps(meta)})


def test_a_malformed_numpy_position_is_refused_before_anything_changes(tmp_path) -> None:
    path = tmp_path / "c.safetensors"
    save_checkpoint(path, *_setup())
    _tamper(path, lambda m: m["rng"]["numpy"].__setitem__(1, "x"))
    model, opt, sched = _setup(seed=7)
    before = (torch.get_rng_state(), [p.detach().clone() for p in model.parameters()])
    with pytest.raises(ValueError, match=r": the random generators' state is malformed$"):
        load_checkpoint(path, model, opt, sched)
    assert torch.equal(torch.get_rng_state(), before[0])
    assert all(torch.equal(a, b) for a, b in zip(before[1], model.parameters(), strict=True))


def test_another_models_checkpoint_says_what_to_do(tmp_path) -> None:
    path = tmp_path / "c.safetensors"
    save_checkpoint(path, *_setup())
    with pytest.raises(ValueError, match=r"^checkpoint .* does not fit this model \(.*\); use a "
                       r"fresh output folder or the matching config$"):
        load_checkpoint(path, nn.Linear(4, 2))


def test_a_checkpoint_without_a_state_entry_has_an_empty_state(tmp_path) -> None:
    path = tmp_path / "c.safetensors"
    save_checkpoint(path, *_setup(), state={"epoch": 3})
    _tamper(path, lambda m: m.pop("state"))
    state, extra = load_checkpoint(path, *_setup())
    assert state == {} and extra == {}


@pytest.mark.parametrize("items", [[[True, 1]], [[1, 2, 3]], [["a"]], [[1.5, 0]], ["ab"]])
def test_a_malformed_table_of_items_is_refused(items) -> None:
    from compactnn.engine.checkpoint import unflatten_state

    with pytest.raises(ValueError, match=r"^malformed table of items$"):
        unflatten_state({"__items__": items}, {})
    assert unflatten_state({"__items__": [[1, "x"], ["k", 2]]}, {}) == {1: "x", "k": 2}


def test_a_save_cut_short_leaves_the_temp_name_the_run_folder_cleans(tmp_path, monkeypatch):
    from compactnn.engine.run_folder import OUTPUT_FILES

    def half_written(table, name, metadata=None):
        with open(name, "wb") as f:
            f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(sf, "save_file", half_written)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(tmp_path / "checkpoint.safetensors", *_setup())
    (left,) = tmp_path.iterdir()
    stem, dot_tmp, _ = left.name.partition(".tmp")
    assert left.name == "checkpoint.safetensors.tmp" and stem in OUTPUT_FILES


def test_state_keys_that_look_like_markers_round_trip() -> None:
    from compactnn.engine.checkpoint import flatten_state, unflatten_state

    state = {"__tensor__": "not a tensor", "__items__": 3, "__x": [1, 2]}
    tensors: dict[str, torch.Tensor] = {}
    assert unflatten_state(flatten_state(state, tensors, "s"), tensors) == state
