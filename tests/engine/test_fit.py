"""``fit``: training on ready-made batches through the engine's loop, and the
classification evaluator."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from compactnn import LowRankLinear, factorize
from compactnn.data import TensorSplit
from compactnn.engine import FitConfig, evaluate, fit, seed_everything


def synthetic_split(seed: int = 0) -> TensorSplit:
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(10, 3, generator=g)

    def part(n):
        x = torch.randn(n, 10, generator=g)
        return x, (x @ w).argmax(-1)

    return TensorSplit(*part(192), *part(64), *part(64), num_classes=3)


def small_model() -> nn.Module:
    return nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 3))


def run_fit(seed: int, lowrank: bool = False, fd: float = 0.0):
    data = synthetic_split()
    seed_everything(seed)
    model = small_model()
    if lowrank:
        model, _ = factorize(model, rank=4, include=["0"])
    history = fit(model, data.loader("train", 32, shuffle=True, seed=seed),
                  FitConfig(epochs=6, lr=1e-2, frobenius_decay=fd))
    return model, history, data


def test_fit_decreases_the_loss_and_learns():
    model, history, data = run_fit(0)
    assert [h["epoch"] for h in history] == list(range(1, 7))
    assert history[-1]["train_loss"] < 0.6 * history[0]["train_loss"]
    metrics = evaluate(model, data.loader("test", 50))
    assert metrics["accuracy"] > 0.8
    # evaluate agrees with a direct computation
    with torch.no_grad():
        logits = model(data.x_test)
    assert metrics["accuracy"] == pytest.approx(
        (logits.argmax(-1) == data.y_test).float().mean().item())
    assert metrics["loss"] == pytest.approx(
        nn.functional.cross_entropy(logits, data.y_test).item(), rel=1e-5)


@pytest.mark.parametrize(("lowrank", "fd"), [(False, 0.0), (True, 1e-2)])
def test_fit_is_deterministic_for_a_seed(lowrank, fd):
    a, hist_a, _ = run_fit(3, lowrank, fd)
    b, hist_b, _ = run_fit(3, lowrank, fd)
    assert hist_a == hist_b
    for (name, p), q in zip(a.named_parameters(), b.parameters(), strict=True):
        assert torch.equal(p, q), name
    c, _, _ = run_fit(4, lowrank, fd)
    assert not torch.equal(next(a.parameters()), next(c.parameters()))


def test_fit_with_frobenius_decay_shrinks_the_product():
    plain, _, _ = run_fit(5, lowrank=True, fd=0.0)
    decayed, _, _ = run_fit(5, lowrank=True, fd=0.5)
    assert isinstance(decayed[0], LowRankLinear)
    assert decayed[0].dense_weight().norm() < 0.9 * plain[0].dense_weight().norm()


def test_evaluate_restores_training_mode():
    model = small_model().train()
    evaluate(model, synthetic_split().loader("val", 64))
    assert model.training
    model.eval()
    evaluate(model, synthetic_split().loader("val", 64))
    assert not model.training


def test_bad_optimizer_name():
    with pytest.raises(ValueError, match="'lbfgs'"):
        fit(small_model(), synthetic_split().loader("train", 32), FitConfig(optimizer="lbfgs"))
