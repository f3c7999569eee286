"""RelChaNet.fit: a regrown feature's first-layer column starts with fresh AdamW
moments, so the first step it takes is that of a newly created parameter."""

import torch

from compactnn.features import RelChaNet


def test_regrown_columns_start_with_zero_adam_moments(monkeypatch):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(96, 12, generator=g)
    y = (x[:, 0] - x[:, 1] > 0).long()
    sel = RelChaNet(12, 2, 2, hidden=(6,), num_candidates=3, interval=2, seed=1)
    grown: list[int] = []
    observe = sel.observe

    def recording_observe():
        grown[:] = observe()
        return list(grown)

    sel.observe = recording_observe
    checked = []

    class CheckedAdamW(torch.optim.AdamW):
        def step(self, closure=None):
            state = self.state.get(sel.first.weight, {})
            if grown and "exp_avg" in state:
                other = [c for c in range(12) if c not in grown]
                for key in ("exp_avg", "exp_avg_sq"):
                    assert torch.count_nonzero(state[key][:, grown]) == 0, key
                    # columns that were not regrown keep their history
                    assert torch.count_nonzero(state[key][:, other]) > 0, key
                checked.append(list(grown))
            return super().step(closure)

    monkeypatch.setattr(torch.optim, "AdamW", CheckedAdamW)
    sel.fit(x, y, epochs=2, batch_size=16, lr=1e-2)
    assert len(checked) >= 5  # a regrowth at every round after the first step
