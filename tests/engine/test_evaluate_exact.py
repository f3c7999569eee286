"""Batching, prediction and classification metrics exactly: slices of every size,
concatenated outputs (one tensor or a list), the model's mode, closed-form metrics."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from compactnn.engine import batched, classification_metrics, evaluate, predict


def test_batched_slices_every_row_once_in_order() -> None:
    x, y = torch.arange(7), torch.arange(7) * 10
    for size in (1, 2, 3, 7, 9):
        got = list(batched(x, None, y, batch_size=size))
        want_x = [x[i:i + size] for i in range(0, 7, size)]
        assert len(got) == len(want_x)
        for (bx, none, by), wx in zip(got, want_x, strict=True):
            assert none is None and torch.equal(bx, wx) and torch.equal(by, wx * 10)
    with pytest.raises(ValueError, match=r"^batch_size must be >= 1, got 0$"):
        list(batched(x, batch_size=0))


class _Two(nn.Module):
    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [x * 2, x.sum(-1)]


def test_predict_concatenates_tensors_or_lists_and_restores_the_mode() -> None:
    model = _Two().train()
    x = torch.arange(12.0).reshape(6, 2)
    out = predict(model, batched(x, batch_size=4))
    assert torch.equal(out[0], x * 2) and torch.equal(out[1], x.sum(-1)) and model.training
    lin = nn.Linear(2, 3).eval()
    out = predict(lin, batched(x, batch_size=4))
    assert torch.allclose(out, lin(x)) and not lin.training
    empty = predict(lin, [])
    assert empty.shape == (0,)


def test_metrics_are_the_mean_cross_entropy_and_accuracy() -> None:
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [3.0, 1.0]])
    targets = torch.tensor([0, 0, 1])
    m = classification_metrics(logits, targets)
    want = (math.log(1 + math.exp(-2)) + math.log(1 + math.exp(1)) + math.log(1 + math.exp(2))) / 3
    assert m["loss"] == pytest.approx(want, rel=1e-6) and m["accuracy"] == pytest.approx(1 / 3)
    with pytest.raises(ValueError, match=r"^cannot evaluate on an empty split$"):
        classification_metrics(torch.zeros(0, 2), torch.zeros(0, dtype=torch.long))
    lin = nn.Linear(2, 2)
    x, y = torch.randn(5, 2), torch.tensor([0, 1, 1, 0, 1])
    got = evaluate(lin, batched(x, y, batch_size=2))
    with torch.no_grad():
        assert got["loss"] == pytest.approx(float(F.cross_entropy(lin(x), y)), rel=1e-6)
        assert got["accuracy"] == float((lin(x).argmax(-1) == y).double().mean())


def test_one_example_is_a_split() -> None:
    m = classification_metrics(torch.tensor([[0.0, 1.0]]), torch.tensor([1]))
    assert m["accuracy"] == 1.0 and m["loss"] == pytest.approx(math.log(1 + math.exp(-1)))


class _Spy(nn.Module):
    """Records where its inputs live; answers with CPU logits."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[torch.device] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(x.device)
        return torch.zeros(len(x), 2)


def test_evaluate_moves_inputs_to_the_device_and_refuses_no_data() -> None:
    spy = _Spy()
    x, y = torch.randn(3, 2), torch.tensor([0, 0, 1])
    got = evaluate(spy, batched(x, y, batch_size=2), device="meta")
    assert spy.seen == [torch.device("meta")] * 2
    assert got["accuracy"] == pytest.approx(2 / 3) and got["loss"] == pytest.approx(math.log(2))
    with pytest.raises(ValueError, match=r"^cannot evaluate on an empty split$"):
        evaluate(spy, [])


def test_classification_metrics_moves_the_targets_to_the_logits_device() -> None:
    """On a machine with one device the move is invisible in the values, so the call
    itself is recorded: the targets go to exactly the logits' device."""
    from compactnn.engine.evaluate import classification_metrics

    seen: list[tuple] = []

    class Recording(torch.Tensor):
        def to(self, *args, **kwargs):
            seen.append(args)
            return torch.Tensor.to(self.as_subclass(torch.Tensor), *args, **kwargs)

    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    out = classification_metrics(logits, torch.tensor([0, 0]).as_subclass(Recording))
    assert seen == [(logits.device,)]
    assert out["accuracy"] == 0.5
