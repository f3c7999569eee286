"""Fixed-routing controls for the planted-expert experiment: does the planted routing
actually win?

Before scoring how well a gate recovers planted experts
(:mod:`compactnn.data.planted`), the data must reward the planted routing. The control
trains the same experts and towers as the gated models, but with the task x expert
weights *frozen*:

- ``oracle``: each task puts weight ``1/k`` on ``k`` experts reserved for its cluster
  (cluster ``c`` -> model experts ``c k .. c k + k - 1``; which model expert learns which
  planted function is left to training, as for a gate);
- ``random``: each task puts ``1/k`` on ``k`` distinct experts drawn at random, so tasks of
  different clusters share experts.

If the oracle does not reach a clearly lower test MSE than random routing, no gate can
be blamed or credited for (not) finding the planted experts.

The model: ``n`` MLP experts ``d -> hidden -> out`` (:func:`compactnn.moe.mlp_experts`),
task ``t``'s mixture ``sum_e W[t, e] expert_e(x)`` and a linear tower per task,
initialized as ``nn.Linear``. Training: Adam on the mean over tasks of the MSE, minibatches
from a seeded permutation per epoch, validation MSE after every epoch, early stopping
after ``patience`` epochs without improvement and the best weights restored.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from compactnn._checks import check_choice, check_float, check_int
from compactnn.data.multitask import MultiTaskData, MultiTaskPart

__all__ = ["FixedRoutingModel", "routing_matrix", "train_fixed_routing"]


def routing_matrix(kind: str, num_tasks: int, clusters: Any, num_experts: int, k: int,
                   seed: int = 0) -> np.ndarray:
    """The frozen ``(T, n)`` task x expert weights of a control (see the module doc)."""
    check_choice("kind", kind, ("oracle", "random"))
    check_int("num_tasks", num_tasks, 1)
    check_int("num_experts", num_experts, 1)
    check_int("k", k, 1, num_experts)
    clusters = np.asarray(clusters)
    if clusters.shape != (num_tasks,):
        raise ValueError(f"clusters must have shape ({num_tasks},), got {clusters.shape}")
    w = np.zeros((num_tasks, num_experts))
    if kind == "oracle":
        if (clusters.max() + 1) * k > num_experts:
            raise ValueError(f"an oracle needs k * clusters = {(clusters.max() + 1) * k} "
                             f"experts, got {num_experts}")
        for t, c in enumerate(clusters):
            w[t, c * k:(c + 1) * k] = 1.0 / k
    else:
        rng = np.random.default_rng([seed, 11])
        for t in range(num_tasks):
            w[t, rng.choice(num_experts, size=k, replace=False)] = 1.0 / k
    return w


class FixedRoutingModel(nn.Module):
    """Experts mixed per task by frozen weights, then one linear tower per task;
    ``forward(x) -> (N, T)`` predictions."""

    def __init__(self, in_features: int, routing: Tensor, hidden: int, out: int) -> None:
        super().__init__()
        from compactnn.moe import mlp_experts

        num_tasks, n = routing.shape
        self.experts = mlp_experts(n, in_features, [hidden], out)
        self.register_buffer("routing", routing.float())
        bound = 1.0 / math.sqrt(out)  # nn.Linear's default for fan_in = out
        self.tower_w = nn.Parameter(torch.empty(num_tasks, out).uniform_(-bound, bound))
        self.tower_b = nn.Parameter(torch.empty(num_tasks).uniform_(-bound, bound))

    def expert_outputs(self, x: Tensor) -> Tensor:
        return torch.stack([e(x) for e in self.experts], 1)  # (N, n, out)

    def forward(self, x: Tensor) -> Tensor:
        mixed = torch.einsum("tn,bno->tbo", self.routing, self.expert_outputs(x))
        return torch.einsum("tbo,to->bt", mixed, self.tower_w) + self.tower_b


def _targets(part: MultiTaskPart) -> Tensor:
    return torch.stack(part.targets, 1)


@torch.no_grad()
def _mse(model: nn.Module, part: MultiTaskPart, batch: int = 4096) -> float:
    model.eval()
    y = _targets(part)
    err = sum(float(((model(part.x[i:i + batch]) - y[i:i + batch]) ** 2).sum())
              for i in range(0, len(part), batch))
    model.train()
    return err / y.numel()


def train_fixed_routing(data: MultiTaskData, routing: Any, *, hidden: int = 16, out: int = 8,
                        epochs: int = 50, lr: float = 3e-3, batch_size: int = 128,
                        patience: int | None = 10, seed: int = 0) -> dict[str, Any]:
    """Train a :class:`FixedRoutingModel` on regression ``data`` with the frozen task x
    expert weights ``routing`` (``(T, n)``); returns val / test MSE (mean over tasks and
    rows, of the best-validation epoch), the epochs run and the model."""
    if any(t.kind != "regression" for t in data.tasks):
        raise ValueError("train_fixed_routing needs regression tasks")
    w = torch.as_tensor(np.asarray(routing, dtype=np.float32))
    if w.ndim != 2 or w.shape[0] != len(data.tasks):
        raise ValueError(f"routing must be (T={len(data.tasks)}, n_experts), got "
                         f"{tuple(w.shape)}")
    check_int("epochs", epochs, 1)
    check_float("lr", lr, 0.0, min_inclusive=False)
    check_int("batch_size", batch_size, 1, len(data.train))
    if patience is not None:
        check_int("patience", patience, 1)
    torch.manual_seed(seed)
    model = FixedRoutingModel(int(data.train.x.shape[1]), w, hidden, out)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    y = _targets(data.train)
    best, best_state, best_epoch, history = math.inf, None, 0, []
    for epoch in range(epochs):
        gen = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
        perm = torch.randperm(len(data.train), generator=gen)
        for i in range(len(perm) // batch_size):
            idx = perm[i * batch_size:(i + 1) * batch_size]
            loss = ((model(data.train.x[idx]) - y[idx]) ** 2).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        val = _mse(model, data.val)
        history.append(val)
        if val < best:
            best, best_state, best_epoch = val, copy.deepcopy(model.state_dict()), epoch + 1
        elif patience is not None and epoch + 1 - best_epoch >= patience:
            break
    if best_state is not None:
        model.load_state_dict(best_state)
    return {"val_mse": _mse(model, data.val), "test_mse": _mse(model, data.test),
            "best_epoch": best_epoch, "epochs_run": len(history), "val_history": history,
            "model": model}
