"""RelChaNet's argument checks and its optimizer, exactly: full error texts, and fit()
hands AdamW the lr and weight_decay it was given (AdamW's own defaults differ)."""

from __future__ import annotations

import re

import pytest
import torch

from compactnn.features import RelChaNet


def test_errors_name_the_argument_and_the_fix() -> None:
    m = RelChaNet(6, 2, interval=2)
    with pytest.raises(ValueError, match=r"^x must have 2 dimensions, got shape \(2, 6, 1\)$"):
        m.transform(torch.zeros(2, 6, 1))
    with pytest.raises(RuntimeError, match="^" + re.escape(
            "RelChaNet.selected(): no scoring round has ended yet (a round ends every "
            "interval=2 mini-batches), so the active features are still a random draw; "
            "train with fit() or call observe() after each backward() first") + "$"):
        m.selected()
    x, labels = torch.zeros(4, 6), torch.zeros(4, dtype=torch.long)
    with pytest.raises(TypeError, match=r"^for classification y must be a 1-D integer "
                       r"tensor of labels$"):
        m.fit(x, torch.zeros(4))
    with pytest.raises(ValueError, match=r"^x has no rows: there is nothing to select "
                       r"features from$"):
        m.fit(torch.zeros(0, 6), torch.zeros(0, dtype=torch.long))
    with pytest.raises(ValueError, match=r"^lr must be > 0\.0, got lr=-1\.0$"):
        m.fit(x, labels, lr=-1.0)
    with pytest.raises(ValueError, match=r"^weight_decay must be >= 0\.0, got "
                       r"weight_decay=-1\.0$"):
        m.fit(x, labels, weight_decay=-1.0)


@pytest.mark.parametrize(("lr", "weight_decay"), [(1e-3, 0.0), (0.05, 0.3)])
def test_fit_uses_the_given_lr_and_weight_decay(monkeypatch, lr, weight_decay) -> None:
    made = []

    class Recording(torch.optim.AdamW):
        def __init__(self, params, **kwargs):
            super().__init__(params, **kwargs)
            made.append(self)

    monkeypatch.setattr(torch.optim, "AdamW", Recording)
    torch.manual_seed(0)
    m = RelChaNet(6, 2, interval=2)
    m.fit(torch.randn(8, 6), torch.arange(8) % 2, epochs=1, batch_size=4, lr=lr,
          weight_decay=weight_decay)
    (opt,) = made
    assert [(g["lr"], g["weight_decay"]) for g in opt.param_groups] == [(lr, weight_decay)]


def test_constructor_defaults_and_errors() -> None:
    m = RelChaNet(6, 2)
    assert (m.interval, m.num_candidates, m.task, m.seed) == (10, 4, "classification", 0)
    with pytest.raises(ValueError, match=r"^num_outputs must be >= 1, got num_outputs=0$"):
        RelChaNet(6, 2, num_outputs=0)
    with pytest.raises(TypeError, match=r"^seed must be an int"):
        RelChaNet(6, 2, seed=1.5)


def test_one_candidate_is_swapped_every_round() -> None:
    torch.manual_seed(0)
    m = RelChaNet(4, 1, num_candidates=1, interval=1, hidden=(3,))
    x, y = torch.randn(8, 4), torch.arange(8) % 2
    masks = [m.mask.clone()]
    for _ in range(3):
        m.fit(x, y, epochs=1, batch_size=8)
        masks.append(m.mask.clone())
    assert all(int(k.sum()) == 2 for k in masks)
    assert all(not torch.equal(a, b) for a, b in zip(masks, masks[1:], strict=False))


def test_regrowth_draws_come_from_the_selectors_seed_only() -> None:
    x, y = torch.randn(16, 10), torch.arange(16) % 2
    results = []
    for global_seed in (1, 2):
        torch.manual_seed(global_seed)  # must not matter
        m = RelChaNet(10, 2, num_candidates=3, interval=1, hidden=(4,), seed=7)
        m.fit(x, y, epochs=3, batch_size=4)
        results.append((m.mask.clone(), m.scores.clone()))
    assert torch.equal(results[0][0], results[1][0])
    assert torch.equal(results[0][1], results[1][1])
