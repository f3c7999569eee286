"""Deep Q-learning (DQN) with experience replay and a target network, in the form of
MinAtar's reference agent: epsilon-greedy behaviour with epsilon decaying linearly,
one gradient step per frame on a uniformly sampled minibatch once the buffer holds
``replay_start`` transitions, the Huber loss on the TD error against

    y = r + gamma * (1 - done) * max_a' Q_target(s', a'),

RMSprop (centered), and the target network copied from the online one every
``target_update`` frames."""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from compactnn._checks import check_float, check_int, check_module, check_tensor
from compactnn.rl.replay import ReplayBuffer

__all__ = ["DQNAgent", "DQNConfig", "epsilon_at", "td_targets"]


@dataclass(frozen=True)
class DQNConfig:
    """Defaults: MinAtar's reference DQN (its 5M-frame budget is the caller's choice)."""

    batch_size: int = 32
    replay_capacity: int = 100_000
    replay_start: int = 5_000
    target_update: int = 1_000
    gamma: float = 0.99
    lr: float = 0.00025
    rms_alpha: float = 0.95
    rms_eps: float = 0.01
    eps_start: float = 1.0
    eps_end: float = 0.1
    eps_frames: int = 100_000  # frames over which epsilon decays linearly

    def __post_init__(self) -> None:
        for k in ("batch_size", "replay_capacity", "target_update", "eps_frames"):
            check_int(k, getattr(self, k), 1)
        check_int("replay_start", self.replay_start, 0)
        check_float("gamma", self.gamma, 0.0, 1.0)
        check_float("lr", self.lr, 0.0, min_inclusive=False)
        check_float("rms_alpha", self.rms_alpha, 0.0, 1.0)
        check_float("rms_eps", self.rms_eps, 0.0, min_inclusive=False)
        check_float("eps_start", self.eps_start, 0.0, 1.0)
        check_float("eps_end", self.eps_end, 0.0, 1.0)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def epsilon_at(frame: int, cfg: DQNConfig) -> float:
    """``eps_start`` at frame 0, linear to ``eps_end`` at ``eps_frames``, then constant."""
    check_int("frame", frame, 0)
    frac = min(frame / cfg.eps_frames, 1.0)
    return cfg.eps_start + frac * (cfg.eps_end - cfg.eps_start)


def td_targets(target_net: nn.Module, reward: Tensor, next_obs: Tensor, done: Tensor,
               gamma: float) -> Tensor:
    """``r + gamma * (1 - done) * max_a Q_target(s', a)`` (no gradient)."""
    with torch.no_grad():
        best = target_net(next_obs).max(1).values
    return reward + gamma * (~done).to(reward.dtype) * best


class DQNAgent:
    """An online Q-network, its target copy, the optimizer, the replay buffer and the
    agent's random generator (exploration and minibatches). ``q_net`` maps a float
    batch of observations to ``(batch, num_actions)``; parameters with
    ``requires_grad=False`` (a frozen hidden layer) are left out of the optimizer."""

    def __init__(self, q_net: nn.Module, num_actions: int, obs_shape: tuple[int, ...],
                 cfg: DQNConfig, seed: int, obs_dtype: torch.dtype = torch.bool) -> None:
        check_module("q_net", q_net)
        self.num_actions = check_int("num_actions", num_actions, 1)
        if not isinstance(cfg, DQNConfig):
            raise TypeError(f"cfg must be a DQNConfig, got {type(cfg).__name__}")
        self.cfg = cfg
        self.q_net = q_net
        self.target_net = copy.deepcopy(q_net).requires_grad_(False)
        params = [p for p in q_net.parameters() if p.requires_grad]
        if not params:
            raise ValueError("q_net has no trainable parameter")
        self.optimizer = torch.optim.RMSprop(params, lr=cfg.lr, alpha=cfg.rms_alpha,
                                             eps=cfg.rms_eps, centered=True)
        self.replay = ReplayBuffer(cfg.replay_capacity, obs_shape, obs_dtype)
        self.rng = torch.Generator().manual_seed(check_int("seed", seed, 0))
        self.updates = 0

    def act(self, obs: Tensor, frame: int) -> int:
        """Epsilon-greedy action for one observation."""
        if float(torch.rand((), generator=self.rng)) < epsilon_at(frame, self.cfg):
            return int(torch.randint(self.num_actions, (), generator=self.rng))
        with torch.no_grad():
            return int(self.q_net(obs.float().unsqueeze(0)).argmax(1))

    def learn(self) -> float:
        """One gradient step on a sampled minibatch; returns the loss."""
        obs, action, reward, next_obs, done = self.replay.sample(self.cfg.batch_size, self.rng)
        y = td_targets(self.target_net, reward, next_obs, done, self.cfg.gamma)
        q = self.q_net(obs).gather(1, action.unsqueeze(1)).squeeze(1)
        loss = F.smooth_l1_loss(q, y)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.updates += 1
        return float(loss.detach())

    def sync_target(self) -> None:
        """Copy the online network's weights into the target network."""
        self.target_net.load_state_dict(self.q_net.state_dict())

    def step(self, obs: Tensor, action: int, reward: float, next_obs: Tensor, done: bool,
             frame: int) -> None:
        """Store a transition, learn once the buffer holds ``replay_start`` transitions,
        and refresh the target network every ``target_update`` frames."""
        check_tensor("obs", obs)
        self.replay.add(obs, action, reward, next_obs, done)
        if len(self.replay) >= max(self.cfg.replay_start, 1):
            self.learn()
        if (frame + 1) % self.cfg.target_update == 0:
            self.sync_target()

    def state_dict(self) -> dict[str, Any]:
        return {"q_net": self.q_net.state_dict(), "target_net": self.target_net.state_dict(),
                "optimizer": self.optimizer.state_dict(), "replay": self.replay.state_dict(),
                "rng": self.rng.get_state(), "updates": self.updates,
                "config": self.cfg.as_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`'s output; the config must equal this agent's, and
        nothing changes unless every part loads."""
        if state.get("config") != self.cfg.as_dict():
            raise ValueError(f"checkpoint was written with DQN config {state.get('config')}, "
                             f"this agent has {self.cfg.as_dict()}")
        backup = self.state_dict()
        try:
            self.q_net.load_state_dict(state["q_net"])
            self.target_net.load_state_dict(state["target_net"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.replay.load_state_dict(state["replay"])
            self.rng.set_state(state["rng"])
            self.updates = check_int("updates", state["updates"], 0)
        except (KeyError, RuntimeError, TypeError, ValueError) as e:
            self.q_net.load_state_dict(backup["q_net"])
            self.target_net.load_state_dict(backup["target_net"])
            self.optimizer.load_state_dict(backup["optimizer"])
            self.replay.load_state_dict(backup["replay"])
            self.rng.set_state(backup["rng"])
            raise ValueError(f"DQN checkpoint does not fit this agent: {e}") from None
