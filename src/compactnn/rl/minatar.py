"""MinAtar games as environments for :func:`compactnn.rl.train.train_dqn`.

MinAtar (``pip install minatar``; the ``experiments`` extra installs it) is optional:
:func:`minatar_problem` says in one line why it cannot be used, and
:func:`require_minatar` raises it as a
:class:`~compactnn.data.errors.DataNotFoundError`, which ``compactnn reproduce`` turns
into a skip instead of a traceback.

An environment here has ``num_actions``, ``obs_shape`` (channels first), ``reset() ->
obs``, ``step(action) -> (obs, reward, done)`` and ``rng_state()`` /
``load_rng_state(state)`` (tensors only), which is all a checkpoint taken between
episodes needs: MinAtar's ``reset`` rebuilds the game from its random state.
"""

from __future__ import annotations

import importlib.util
from typing import Any

import numpy as np
import torch
from torch import Tensor

from compactnn._checks import check_choice, check_float, check_int
from compactnn.data.errors import DataNotFoundError

__all__ = ["GAMES", "INSTALL", "MinAtarEnv", "minatar_problem", "require_minatar"]

GAMES = ("asterix", "breakout", "freeway", "seaquest", "space_invaders")
INSTALL = "pip install minatar gymnasium"


def minatar_problem() -> str | None:
    """None when MinAtar can be imported, else one line saying how to install it."""
    if importlib.util.find_spec("minatar") is None:
        return f"MinAtar is not installed; install it with `{INSTALL}`"
    return None


def require_minatar() -> None:
    problem = minatar_problem()
    if problem is not None:
        raise DataNotFoundError(problem, "minatar", INSTALL)


class MinAtarEnv:
    """One MinAtar game, seeded; observations are bool tensors ``(C, 10, 10)``."""

    def __init__(self, game: str, seed: int, sticky_action_prob: float = 0.1) -> None:
        require_minatar()
        from minatar import Environment

        check_choice("game", game, GAMES)
        check_int("seed", seed, 0)
        check_float("sticky_action_prob", sticky_action_prob, 0.0, 1.0)
        self.game = game
        self.env = Environment(game, sticky_action_prob=sticky_action_prob)
        self.env.seed(seed)
        h, w, c = self.env.state_shape()
        self.obs_shape = (c, h, w)
        self.num_actions = self.env.num_actions()

    def _obs(self) -> Tensor:
        return torch.from_numpy(np.ascontiguousarray(self.env.state())).permute(2, 0, 1) \
            .to(torch.bool).contiguous()

    def reset(self) -> Tensor:
        self.env.reset()
        return self._obs()

    def step(self, action: int) -> tuple[Tensor, float, bool]:
        reward, done = self.env.act(int(action))
        return self._obs(), float(reward), bool(done)

    def rng_state(self) -> dict[str, Any]:
        """The game's random state (the Mersenne Twister's) and the sticky action."""
        name, key, pos, has_gauss, gauss = self.env.random.get_state()
        return {"key": torch.from_numpy(key.astype(np.int64)), "pos": int(pos),
                "has_gauss": int(has_gauss), "gauss": float(gauss),
                "last_action": int(self.env.last_action)}

    def load_rng_state(self, state: dict[str, Any]) -> None:
        key = state["key"]
        if not isinstance(key, Tensor) or tuple(key.shape) != (624,) or key.dtype != torch.int64 \
                or bool(((key < 0) | (key >= 2 ** 32)).any()):
            raise ValueError("MinAtar random state: key must be 624 int64 values in [0, 2^32)")
        pos = check_int("pos", state["pos"], 0, 624)
        last = check_int("last_action", state["last_action"], 0, self.num_actions - 1)
        self.env.random.set_state(("MT19937", key.numpy().astype(np.uint32), pos,
                                   check_int("has_gauss", state["has_gauss"], 0, 1),
                                   check_float("gauss", state["gauss"])))
        self.env.env.random = self.env.random
        self.env.last_action = last
