"""A fixed-capacity experience replay buffer of transitions, held in preallocated
tensors (a ring: the oldest transition is overwritten when full), sampled uniformly
with an explicit generator so that a seeded run samples the same batches."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from compactnn._checks import check_int, check_tensor

__all__ = ["ReplayBuffer"]


class ReplayBuffer:
    """Transitions ``(obs, action, reward, next_obs, done)``; observations of shape
    ``obs_shape`` stored as ``obs_dtype`` (bool for MinAtar's binary frames)."""

    def __init__(self, capacity: int, obs_shape: tuple[int, ...],
                 obs_dtype: torch.dtype = torch.float32) -> None:
        self.capacity = check_int("capacity", capacity, 1)
        if not isinstance(obs_shape, tuple) or not all(
                isinstance(d, int) and d >= 1 for d in obs_shape):
            raise ValueError(f"obs_shape must be a tuple of positive ints, got {obs_shape!r}")
        self.obs_shape = obs_shape
        self.obs = torch.zeros(capacity, *obs_shape, dtype=obs_dtype)
        self.next_obs = torch.zeros(capacity, *obs_shape, dtype=obs_dtype)
        self.action = torch.zeros(capacity, dtype=torch.long)
        self.reward = torch.zeros(capacity)
        self.done = torch.zeros(capacity, dtype=torch.bool)
        self.pos = 0  # next slot written
        self.size = 0

    def __len__(self) -> int:
        return self.size

    def add(self, obs: Tensor, action: int, reward: float, next_obs: Tensor,
            done: bool) -> None:
        check_tensor("obs", obs, shape=self.obs_shape)
        check_tensor("next_obs", next_obs, shape=self.obs_shape)
        i = self.pos
        self.obs[i] = obs
        self.next_obs[i] = next_obs
        self.action[i] = int(action)
        self.reward[i] = float(reward)
        self.done[i] = bool(done)
        self.pos = (i + 1) % self.capacity
        self.size = min(self.size + 1, self.capacity)

    def sample(self, batch_size: int, generator: torch.Generator | None = None
               ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """``batch_size`` transitions drawn uniformly with replacement; observations as
        float32."""
        check_int("batch_size", batch_size, 1)
        if self.size == 0:
            raise ValueError("cannot sample from an empty replay buffer")
        idx = torch.randint(self.size, (batch_size,), generator=generator)
        return (self.obs[idx].float(), self.action[idx], self.reward[idx],
                self.next_obs[idx].float(), self.done[idx])

    def state_dict(self) -> dict[str, Any]:
        """The filled part of the buffer (tensors and ints only)."""
        n = self.size
        return {"capacity": self.capacity, "pos": self.pos, "size": n,
                "obs": self.obs[:n].clone(), "next_obs": self.next_obs[:n].clone(),
                "action": self.action[:n].clone(), "reward": self.reward[:n].clone(),
                "done": self.done[:n].clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`'s output, checked before anything is changed."""
        try:
            cap, pos, n = (int(state[k]) for k in ("capacity", "pos", "size"))
            tensors = {k: state[k] for k in ("obs", "next_obs", "action", "reward", "done")}
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"replay state is malformed: {e!r}") from None
        if cap != self.capacity or not 0 <= n <= cap or not 0 <= pos < cap \
                or (n < cap and pos != n % cap):
            raise ValueError(f"replay state (capacity {cap}, pos {pos}, size {n}) does not fit "
                             f"a buffer of capacity {self.capacity}")
        want = {"obs": (self.obs, (n, *self.obs_shape)),
                "next_obs": (self.next_obs, (n, *self.obs_shape)),
                "action": (self.action, (n,)), "reward": (self.reward, (n,)),
                "done": (self.done, (n,))}
        for k, (buf, shape) in want.items():
            t = tensors[k]
            if not isinstance(t, Tensor) or tuple(t.shape) != shape or t.dtype != buf.dtype:
                raise ValueError(f"replay state {k!r} must be a {buf.dtype} tensor of shape "
                                 f"{shape}, got {getattr(t, 'dtype', type(t).__name__)} "
                                 f"{tuple(getattr(t, 'shape', ()))}")
            if t.is_floating_point() and not bool(torch.isfinite(t).all()):
                raise ValueError(f"replay state {k!r} contains non-finite values")
        for k, (buf, _) in want.items():
            buf[:n] = tensors[k]
        self.pos, self.size = pos, n
