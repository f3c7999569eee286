"""The model and training of the planted-expert experiment: learned static gates and the
fixed-routing controls, trained by one loop so that they differ only in their routing.

Before scoring how well a gate recovers planted experts (:mod:`compactnn.data.planted`),
the data must reward the planted routing. Two controls train the same experts and towers
with the task x expert weights *frozen*:

- ``oracle``: each task puts weight ``1/k`` on ``k`` experts reserved for its cluster
  (cluster ``c`` -> model experts ``c k .. c k + k - 1``; which model expert learns which
  planted function is left to training, as for a gate);
- ``random``: each task puts ``1/k`` on ``k`` distinct experts drawn at random, so tasks of
  different clusters share experts.

If the oracle does not reach a clearly lower test MSE than random routing, no gate can
be blamed or credited for (not) finding the planted experts.

The model (:class:`RoutedMoE`): ``n`` MLP experts ``d -> hidden -> out``
(:func:`compactnn.moe.mlp_experts`); task ``t``'s mixture ``sum_e W[t, e] expert_e(x)``
with ``W`` frozen (a control) or given by one *static* gate per task (DSelect-k, noisy
Top-k or softmax from :mod:`compactnn.moe`); one linear tower per task, initialized as
``nn.Linear``. The loss is the mean over tasks of the MSE plus the gates' auxiliary
losses (DSelect-k's entropy regularizer, summed over the tasks' gates). For Top-k the
balancing (importance) loss of [TopK] is taken over the *tasks*: ``importance_reg *
CV^2(sum_t W[t, :])``, the static analogue of balancing over the examples of a batch (a
static gate's own importance loss would see a single weight vector).

Training (:func:`train_routed`): Adam, the gates at their own learning rate, minibatches
from a seeded permutation per epoch, validation MSE (eval mode: no Top-k noise) after
every epoch, early stopping after ``patience`` epochs without improvement and the best
weights restored before the test evaluation.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from compactnn._checks import check_bool, check_choice, check_float, check_int
from compactnn.data.multitask import MultiTaskData, MultiTaskPart

__all__ = ["GATES", "SCHEDULE_KEYS", "PlantedExperts", "RoutedMoE", "gate_saturation",
           "routing_matrix", "train_routed"]

GATES = ("dselect_k", "topk", "softmax")

# DSelect-k's schedule / warm-up options (compactnn.moe.gates.dselect_k_schedule), in steps
SCHEDULE_KEYS = ("entropy_reg_start", "gamma_start", "schedule_steps", "warmup_steps",
                 "warmup_margin")


class PlantedExperts(nn.Module):
    """The planted ground-truth experts as a frozen expert bank: ``forward(x) -> (E, N, m)``
    with ``f_e(x) = W2_e tanh(W1_e x + b_e)`` (:func:`compactnn.data.planted.
    planted_expert_outputs`, in float32). Its weights are buffers: nothing of it trains."""

    def __init__(self, experts: dict[str, Any]) -> None:
        super().__init__()
        w1, b1, w2 = (torch.as_tensor(np.asarray(experts[key]), dtype=torch.float32)
                      for key in ("w1", "b1", "w2"))
        if w1.dim() != 3 or b1.shape != w1.shape[:2] or w2.dim() != 3 \
                or w2.shape[0] != w1.shape[0] or w2.shape[2] != w1.shape[1]:
            raise ValueError(f"planted experts need w1 (E, h, d), b1 (E, h), w2 (E, m, h); "
                             f"got {tuple(w1.shape)}, {tuple(b1.shape)}, {tuple(w2.shape)}")
        self.register_buffer("w1", w1)
        self.register_buffer("b1", b1)
        self.register_buffer("w2", w2)
        self.num_experts, self.out_features = w1.shape[0], w2.shape[1]

    def forward(self, x: Tensor) -> Tensor:
        hidden = torch.tanh(torch.einsum("ehd,nd->enh", self.w1, x) + self.b1[:, None, :])
        return torch.einsum("emh,enh->enm", self.w2, hidden)


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


def _gate(name: str, n: int, k: int, params: dict[str, Any]) -> nn.Module:
    from compactnn.moe import DSelectKGate, NoisyTopKGate, SoftmaxGate

    if name == "dselect_k":
        schedule = {key: params[key] for key in SCHEDULE_KEYS if key in params}
        return DSelectKGate(n, k=k, gamma=float(params.get("gamma", 1.0)),
                            entropy_reg=float(params.get("entropy_reg", 0.0)), **schedule)
    if name == "topk":
        # the balancing loss is applied across tasks by RoutedMoE, so the gate's own is off
        return NoisyTopKGate(n, k=k, noisy=bool(params.get("noisy", True)), importance_reg=0.0)
    return SoftmaxGate(n)


def _gates(name: str, num_tasks: int, n: int, k: int, params: dict[str, Any]) -> nn.Module:
    """``num_tasks`` static gates: one bank computing them in one pass when the installed
    :mod:`compactnn.moe` has gate banks, else a list of separate gates (same values)."""
    template = _gate(name, n, k, params)
    try:
        from compactnn.moe import gate_bank
    except ImportError:
        return nn.ModuleList(_gate(name, n, k, params) for _ in range(num_tasks))
    return gate_bank(template, num_tasks)


class RoutedMoE(nn.Module):
    """Experts mixed per task by frozen weights (``routing``) or by one static gate per task
    (``gate``), then one linear tower per task; ``forward(x) -> ((N, T) predictions,
    auxiliary loss)``."""

    def __init__(self, in_features: int, num_tasks: int, num_experts: int, hidden: int,
                 out: int, routing: Tensor | None = None, gate: str | None = None,
                 k: int = 2, gate_params: dict[str, Any] | None = None,
                 frozen_experts: dict[str, Any] | None = None) -> None:
        super().__init__()
        from compactnn.moe import mlp_experts

        if (routing is None) == (gate is None):
            raise ValueError("give exactly one of routing (a control) and gate")
        if frozen_experts is None:
            self.experts = mlp_experts(num_experts, in_features, [hidden], out)
        else:  # selection only: the planted experts, frozen; the towers read their outputs
            self.experts = PlantedExperts(frozen_experts)
            if self.experts.num_experts != num_experts:
                raise ValueError(f"frozen_experts holds {self.experts.num_experts} experts, "
                                 f"num_experts={num_experts}")
            out = self.experts.out_features
        params = dict(gate_params or {})
        self.importance_reg = float(params.get("importance_reg", 0.0)) if gate == "topk" else 0.0
        if routing is not None:
            if tuple(routing.shape) != (num_tasks, num_experts):
                raise ValueError(f"routing must be ({num_tasks}, {num_experts}), got "
                                 f"{tuple(routing.shape)}")
            self.register_buffer("routing", routing.float())
            self.gates = None
        else:
            check_choice("gate", gate, GATES)
            self.gates = _gates(gate, num_tasks, num_experts, k, params)
        # scale of the gates' own (per-task) regularizers; train_routed sets 1/T for
        # aux_per_task. The cross-task balancing term below is one term, never scaled.
        self.gate_aux_scale = 1.0
        bound = 1.0 / math.sqrt(out)  # nn.Linear's default for fan_in = out
        self.tower_w = nn.Parameter(torch.empty(num_tasks, out).uniform_(-bound, bound))
        self.tower_b = nn.Parameter(torch.empty(num_tasks).uniform_(-bound, bound))

    def task_weights(self) -> tuple[Tensor, Tensor]:
        """``(T, n)`` task x expert weights and the gates' auxiliary loss."""
        if self.gates is None:
            return self.routing, self.routing.new_zeros(())
        if isinstance(self.gates, nn.ModuleList):
            outs = [g() for g in self.gates]
            w = torch.stack([o[0] for o in outs])
            aux = torch.stack([o[1] for o in outs]).sum()
        else:
            w, aux = self.gates()
        aux = aux * self.gate_aux_scale
        if self.importance_reg > 0 and self.training:
            from compactnn.moe import cv_squared

            aux = aux + self.importance_reg * cv_squared(w.sum(0))
        return w, aux

    def expert_outputs(self, x: Tensor) -> Tensor:
        """``(N, n, out)``: every expert on every row."""
        if isinstance(self.experts, nn.ModuleList):
            return torch.stack([e(x) for e in self.experts], 1)
        # a stacked expert bank runs all members in one pass, ``(n, N, out)``
        return self.experts(x).transpose(0, 1)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        w, aux = self.task_weights()
        mixed = torch.einsum("tn,bno->tbo", w, self.expert_outputs(x))
        return torch.einsum("tbo,to->bt", mixed, self.tower_w) + self.tower_b, aux


def _targets(part: MultiTaskPart) -> Tensor:
    return torch.stack(part.targets, 1)


@torch.no_grad()
def _mse(model: RoutedMoE, part: MultiTaskPart, batch: int = 4096) -> float:
    was = model.training
    model.eval()
    y = _targets(part)
    err = sum(float(((model(part.x[i:i + batch])[0] - y[i:i + batch]) ** 2).sum())
              for i in range(0, len(part), batch))
    model.train(was)
    return err / y.numel()


def gate_saturation(model: RoutedMoE) -> float | None:
    """The fraction of the DSelect-k gates' selector logits on the smooth-step's flat
    part (None for other routings)."""
    gates = model.gates
    if gates is None:
        return None
    if isinstance(gates, nn.ModuleList):
        if not hasattr(gates[0], "saturation"):
            return None
        return float(np.mean([g.saturation() for g in gates]))
    return gates.saturation() if hasattr(gates, "saturation") else None


def train_routed(data: MultiTaskData, *, routing: Any = None, gate: str | None = None,
                 gate_params: dict[str, Any] | None = None, num_experts: int = 16,
                 k: int = 2, hidden: int = 16, out: int = 8, epochs: int = 50,
                 lr: float = 3e-3, gate_lr: float | None = None, batch_size: int = 128,
                 patience: int | None = 10, seed: int = 0,
                 frozen_experts: dict[str, Any] | None = None, aux_per_task: bool = False,
                 gate_warmup_epochs: int = 0, gate_warmup_factor: float = 0.1
                 ) -> dict[str, Any]:
    """Train a :class:`RoutedMoE` on regression ``data`` with frozen ``routing`` (``(T, n)``)
    or learned static gates ``gate``; returns val / test MSE (mean over tasks and rows,
    of the best-validation epoch), the eval-mode task x expert weights, the epochs run,
    the per-epoch validation MSE and DSelect-k saturation fraction (after each epoch),
    and the model. A run whose loss becomes non-finite stops and reports NaN.

    ``frozen_experts``: planted expert weights (``meta["experts"]``, optionally
    :func:`~compactnn.data.planted.with_spare_experts`) used as frozen experts, so only
    the routing and the towers learn. ``aux_per_task``: divide the gates' own
    regularizers (one per task's gate, summed) by the number of tasks, so that each
    task's regularizer weighs against its own loss as in a sum of per-task objectives
    (the default adds every task's regularizer to the *mean* task loss, ``T`` times
    stronger); Top-k's cross-task balancing term is one term and is not divided.
    ``gate_warmup_epochs``: the gates' learning rate is multiplied by
    ``gate_warmup_factor`` for the first epochs.
    """
    if any(t.kind != "regression" for t in data.tasks):
        raise ValueError("train_routed needs regression tasks")
    check_int("epochs", epochs, 1)
    check_float("lr", lr, 0.0, min_inclusive=False)
    if gate_lr is not None:
        check_float("gate_lr", gate_lr, 0.0, min_inclusive=False)
    check_int("batch_size", batch_size, 1, len(data.train))
    if patience is not None:
        check_int("patience", patience, 1)
    check_bool("aux_per_task", aux_per_task)
    check_int("gate_warmup_epochs", gate_warmup_epochs, 0, epochs)
    check_float("gate_warmup_factor", gate_warmup_factor, 0.0, 1.0, min_inclusive=False)
    if gate_warmup_epochs and gate is None:
        raise ValueError("gate_warmup_epochs needs a learned gate (gate=...), not a "
                         "frozen routing")
    ntask = len(data.tasks)
    w = None if routing is None else torch.as_tensor(np.asarray(routing, dtype=np.float32))
    torch.manual_seed(seed)
    model = RoutedMoE(int(data.train.x.shape[1]), ntask, num_experts, hidden, out,
                      routing=w, gate=gate, k=k, gate_params=gate_params,
                      frozen_experts=frozen_experts)
    gate_ids = {id(p) for p in (model.gates.parameters() if model.gates is not None else [])}
    groups = [{"params": [p for p in model.parameters() if id(p) not in gate_ids]}]
    gate_lr = gate_lr or lr
    if gate_ids:
        groups.append({"params": list(model.gates.parameters()), "lr": gate_lr})
    opt = torch.optim.Adam(groups, lr=lr)
    y = _targets(data.train)
    model.gate_aux_scale = 1.0 / ntask if aux_per_task else 1.0
    best, best_state, best_epoch, history, diverged = math.inf, None, 0, [], False
    saturation: list[float] = []
    for epoch in range(epochs):
        if gate_ids:
            opt.param_groups[1]["lr"] = gate_lr * (gate_warmup_factor
                                                   if epoch < gate_warmup_epochs else 1.0)
        gen = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
        perm = torch.randperm(len(data.train), generator=gen)
        for i in range(len(perm) // batch_size):
            idx = perm[i * batch_size:(i + 1) * batch_size]
            pred, aux = model(data.train.x[idx])
            loss = ((pred - y[idx]) ** 2).mean() + aux
            if not torch.isfinite(loss):
                diverged = True
                break
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        if diverged:
            break
        val = _mse(model, data.val)
        history.append(val)
        sat = gate_saturation(model)
        if sat is not None:
            saturation.append(sat)
        if val < best:
            best, best_state, best_epoch = val, copy.deepcopy(model.state_dict()), epoch + 1
        elif patience is not None and epoch + 1 - best_epoch >= patience:
            break
    if diverged and best_state is None:
        return {"val_mse": math.nan, "test_mse": math.nan, "best_epoch": 0,
                "epochs_run": len(history), "val_history": history,
                "saturation_history": saturation, "model": model, "weights": None}
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    with torch.no_grad():
        weights = model.task_weights()[0].detach().clone()
    return {"val_mse": _mse(model, data.val), "test_mse": _mse(model, data.test),
            "best_epoch": best_epoch, "epochs_run": len(history), "val_history": history,
            "saturation_history": saturation, "weights": weights.numpy(), "model": model}
