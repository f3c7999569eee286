"""Feature selection by input-neuron pruning and random regrowth with relative
change scores [RelChaNet].

A dense network sees only an *active* set of input features: ``num_selected``
kept features plus ``num_candidates`` candidates (the input is multiplied by a
0/1 mask, so an inactive feature's first-layer column gets no gradient). During
training the gradient of the first layer's weight is summed over mini-batches,
``S += dL/dW1``. Every ``interval`` mini-batches a round ends:

1. each active feature ``i`` gets the change ``g_i = ||S[:, i]||_1``: how much
   the network's input weights moved for it since the round began (for a
   candidate: since it entered);
2. the changes are z-standardized over the active features,
   ``z_i = (g_i - mean g) / std g``: a *relative* change, comparable across
   rounds with different candidates and learning-rate phases;
3. each active feature's score is the running mean of its ``z_i`` over the
   rounds it took part in;
4. the active features with the ``num_candidates`` lowest scores are pruned;
   as many inactive features are regrown, drawn uniformly at random, with
   freshly initialized first-layer columns; ``S`` is reset.

:meth:`RelChaNet.selected` returns the ``num_selected`` active features with
the best scores (the kept set); it refuses to answer before a round has ended.

A feature that never varied in the rows seen by training-mode forwards is ranked below
every feature that did, both when pruning and when selecting: a constant column acts as
a second bias, so its gradient (and its relative change) can be large although it
carries no information. Choices the sources we could consult leave open and that we fixed
here: the per-round change is the L1 norm of the summed gradient column (step
1), scores are averaged over rounds (step 3), a round is ``interval`` mini-batches,
and a regrown column is drawn like PyTorch's default Linear init. The paper's
extension that adapts the input layer's size at run time is not implemented
(its rule was not available to us precisely enough to reproduce).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from compactnn._checks import check_choice, check_float, check_int, check_tensor

__all__ = ["RelChaNet"]

TASKS = ("classification", "regression")


class RelChaNet(nn.Module):
    """Select ``num_selected`` of ``num_features`` inputs while training a dense net.

    Args:
        num_features: width of the input rows.
        num_selected: how many features to select (``k``).
        num_outputs: classes (classification) or targets (regression).
        hidden: widths of the hidden layers (ReLU); the first is the input
            layer whose columns are pruned and regrown.
        num_candidates: candidates tried beside the kept features each round
            (default ``min(2 k, num_features - k)``: a wide active set makes the
            z-standardized changes less noisy).
        interval: mini-batches per round.
        task: ``"classification"`` (cross-entropy) or ``"regression"`` (MSE).
        seed: seeds the initial active set, the regrowth draws and the weights.

    Use :meth:`fit` to train, or call :meth:`observe` after each ``backward()``
    of your own loop. Buffers ``mask`` (current active set), ``score_sum``,
    ``rounds``, ``varies`` (features seen to vary), ``reference`` (the first row
    seen) and ``seen`` are in the state dict, so a saved selector reloads exactly.
    """

    def __init__(self, num_features: int, num_selected: int, num_outputs: int = 2, *,
                 hidden: Sequence[int] = (64,), num_candidates: int | None = None,
                 interval: int = 10, task: str = "classification", seed: int = 0) -> None:
        super().__init__()
        d = check_int("num_features", num_features, minimum=1)
        k = check_int("num_selected", num_selected, minimum=1)
        if k > d:
            raise ValueError(f"num_selected={k} exceeds num_features={d}")
        check_int("num_outputs", num_outputs, minimum=1)
        if num_candidates is None:
            num_candidates = min(2 * k, d - k)
        c = check_int("num_candidates", num_candidates, minimum=0, maximum=d - k)
        if c == 0 and k < d:
            raise ValueError("num_candidates must be >= 1 when num_selected < num_features "
                             "(no feature could ever be tried)")
        self.interval = check_int("interval", interval, minimum=1)
        self.task = check_choice("task", task, TASKS)
        self.seed = check_int("seed", seed)
        if isinstance(hidden, int) or not hidden:
            raise ValueError(f"hidden must be a non-empty sequence of widths, got {hidden!r}")
        widths = [check_int(f"hidden[{i}]", h, minimum=1) for i, h in enumerate(hidden)]
        self.num_features, self.num_selected, self.num_candidates = d, k, c
        self.num_outputs = num_outputs
        self._gen = torch.Generator().manual_seed(self.seed)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            self.first = nn.Linear(d, widths[0])
            layers: list[nn.Module] = []
            for a, b in zip(widths[:-1], widths[1:], strict=True):
                layers += [nn.ReLU(), nn.Linear(a, b)]
            layers += [nn.ReLU(), nn.Linear(widths[-1], num_outputs)]
            self.body = nn.Sequential(*layers)
        active = torch.randperm(d, generator=self._gen)[: k + c]
        mask = torch.zeros(d, dtype=torch.bool)
        mask[active] = True
        self.register_buffer("mask", mask)
        self.register_buffer("score_sum", torch.zeros(d, dtype=torch.float64))
        self.register_buffer("rounds", torch.zeros(d, dtype=torch.long))
        self.register_buffer("varies", torch.zeros(d, dtype=torch.bool))
        self.register_buffer("reference", torch.zeros(d, dtype=torch.float64))
        self.register_buffer("seen", torch.zeros((), dtype=torch.bool))
        self._grad_sum = torch.zeros_like(self.first.weight)
        self._batches = 0

    # -- the network ------------------------------------------------------------------
    def forward(self, x: Tensor) -> Tensor:
        if self.training:
            self._note_variation(x)
        return self.body(self.first(x * self.mask.to(x.dtype)))

    @torch.no_grad()
    def _note_variation(self, x: Tensor) -> None:
        """Mark the columns of ``x`` that differ from the first row ever seen (with
        no host sync, so a GPU step does not wait for it)."""
        if x.dim() != 2 or x.shape[0] == 0:
            return
        rows = x.detach().to(self.reference.dtype)
        ref = torch.where(self.seen, self.reference, rows[0])
        self.varies |= (rows != ref).any(0)
        self.reference.copy_(ref)
        self.seen.fill_(True)

    # -- scores and selection ---------------------------------------------------------
    @property
    def scores(self) -> Tensor:
        """Mean relative-change score per feature (``-inf`` where never scored)."""
        s = self.score_sum / self.rounds.clamp(min=1)
        return torch.where(self.rounds > 0, s, torch.full_like(s, -math.inf))

    def selected(self) -> Tensor:
        """Indices (ascending) of the ``num_selected`` kept features: the active
        features with the best scores (ties to the lower index), features seen to
        vary before constant ones. A feature that was pruned is not selected even if
        an early round scored it well: it lost to the features that stayed.

        Raises ``RuntimeError`` before the first round has ended (the active set is
        then a random draw), unless every feature is selected."""
        if self.num_selected < self.num_features and int(self.rounds.max()) == 0:
            raise RuntimeError(
                "RelChaNet.selected(): no scoring round has ended yet (a round ends every "
                f"interval={self.interval} mini-batches), so the active features are "
                "still a random draw; train with fit() or call observe() after each "
                "backward() first")
        active = self.mask.nonzero().flatten().tolist()
        s, varies = self.scores.tolist(), self.varies.tolist()
        order = sorted(active, key=lambda i: (not varies[i], -s[i], i))
        return torch.tensor(sorted(order[: self.num_selected]), dtype=torch.long)

    def transform(self, x: Tensor) -> Tensor:
        """The selected columns of ``x`` (rows of ``num_features``), for any
        downstream model."""
        check_tensor("x", x, ndim=2)
        if x.shape[1] != self.num_features:
            raise ValueError(f"x must have {self.num_features} columns, got {x.shape[1]}")
        return x[:, self.selected().to(x.device)]

    # -- the pruning / regrowth round ---------------------------------------------------
    @torch.no_grad()
    def observe(self) -> list[int]:
        """Add the current first-layer gradient to the round's sum; at the end of a
        round, score, prune and regrow. Call after ``backward()`` (before or after
        the optimizer step). Returns the regrown feature indices (``[]`` mid-round)."""
        g = self.first.weight.grad
        if g is None:
            raise RuntimeError("the input layer has no gradient: call observe() after "
                               "loss.backward()")
        if self._grad_sum.device != g.device or self._grad_sum.dtype != g.dtype:
            self._grad_sum = torch.zeros_like(g)
        self._grad_sum += g
        self._batches += 1
        if self._batches < self.interval:
            return []
        return self._end_round()

    def _end_round(self) -> list[int]:
        active = self.mask.nonzero().flatten()
        change = self._grad_sum[:, active].abs().sum(0).double().cpu()
        std = change.std() if len(change) > 1 else change.new_tensor(0.0)
        z = (change - change.mean()) / std if float(std) > 0 else torch.zeros_like(change)
        idx = active.cpu()
        self.score_sum[idx] += z.to(self.score_sum.device)
        self.rounds[idx] += 1
        self._grad_sum.zero_()
        self._batches = 0
        pool = (~self.mask).nonzero().flatten().cpu()
        swap = min(self.num_candidates, len(pool))  # 0 when every feature is active
        if swap == 0:
            return []
        s, varies = self.scores[idx].tolist(), self.varies[idx.to(self.varies.device)].tolist()
        # constant features go first, then the lowest scores (ties: the higher index)
        order = sorted(range(len(idx)), key=lambda j: (varies[j], s[j], -int(idx[j])))
        drop = idx[order[:swap]]
        grow = pool[torch.randperm(len(pool), generator=self._gen)[:swap]]
        self.mask[drop.to(self.mask.device)] = False
        self.mask[grow.to(self.mask.device)] = True
        self._reset_columns(grow)
        return grow.tolist()

    def _reset_columns(self, cols: Tensor) -> None:
        """Fresh first-layer columns for regrown features, drawn like PyTorch's
        default Linear init (uniform in +-1/sqrt(fan_in))."""
        w = self.first.weight
        bound = 1.0 / math.sqrt(self.num_features)
        fresh = (torch.rand(w.shape[0], len(cols), generator=self._gen) * 2 - 1) * bound
        w[:, cols.to(w.device)] = fresh.to(device=w.device, dtype=w.dtype)

    # -- a ready-made training loop ---------------------------------------------------
    def fit(self, x: Tensor, y: Tensor, *, epochs: int = 20, batch_size: int = 64,
            lr: float = 1e-3, weight_decay: float = 0.0) -> RelChaNet:
        """Train the selector on ``(x, y)`` with AdamW, running the rounds; returns
        ``self``. Adam's moments of regrown columns are reset with them."""
        check_tensor("x", x, ndim=2, floating=True)
        if x.shape[1] != self.num_features:
            raise ValueError(f"x must have {self.num_features} columns, got {x.shape[1]}")
        check_tensor("y", y, ndim=(1, 2), finite=True)
        if len(y) != len(x):
            raise ValueError(f"x and y must have the same number of rows, got {len(x)} "
                             f"and {len(y)}")
        if self.task == "classification":
            if y.ndim != 1 or y.is_floating_point():
                raise TypeError("for classification y must be a 1-D integer tensor of labels")
            if len(y) and (int(y.min()) < 0 or int(y.max()) >= self.num_outputs):
                raise ValueError(f"labels must lie in [0, {self.num_outputs}), got "
                                 f"[{int(y.min())}, {int(y.max())}]")
        epochs = check_int("epochs", epochs, minimum=1)
        batch_size = check_int("batch_size", batch_size, minimum=1)
        if len(x) == 0:
            raise ValueError("x has no rows: there is nothing to select features from")
        batches = epochs * math.ceil(len(x) / batch_size)
        if int(self.rounds.max()) == 0 and self._batches + batches < self.interval:
            raise ValueError(
                f"fit would end no scoring round: {epochs} epoch(s) of "
                f"{math.ceil(len(x) / batch_size)} mini-batch(es) is fewer than "
                f"interval={self.interval}; raise epochs or lower batch_size or interval")
        lr = check_float("lr", lr, minimum=0.0, min_inclusive=False)
        weight_decay = check_float("weight_decay", weight_decay, minimum=0.0)
        opt = torch.optim.AdamW(self.parameters(), lr=lr, weight_decay=weight_decay)
        self.train()
        for _ in range(epochs):
            perm = torch.randperm(len(x), generator=self._gen)
            for start in range(0, len(x), batch_size):
                b = perm[start:start + batch_size]
                out = self(x[b])
                if self.task == "classification":
                    loss = F.cross_entropy(out, y[b])
                else:
                    loss = F.mse_loss(out, y[b].reshape(out.shape).to(out.dtype))
                opt.zero_grad(set_to_none=True)
                loss.backward()
                grown = self.observe()
                if grown:  # fresh columns start with fresh optimizer moments
                    self._reset_columns_state(opt, grown)
                opt.step()
        return self

    def _reset_columns_state(self, opt: torch.optim.Optimizer, cols: list[int]) -> None:
        state = opt.state.get(self.first.weight, {})
        for key in ("exp_avg", "exp_avg_sq"):
            if key in state:
                state[key][:, cols] = 0.0

    def extra_repr(self) -> str:
        return (f"num_features={self.num_features}, num_selected={self.num_selected}, "
                f"num_candidates={self.num_candidates}, interval={self.interval}, "
                f"task={self.task!r}")

