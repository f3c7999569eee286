"""Reinforcement learning for the sparse-structure experiments: a DQN agent
(:mod:`~compactnn.rl.dqn`: replay, target network, epsilon schedule), its resumable,
seeded training loop (:mod:`~compactnn.rl.train`) and MinAtar games as environments
(:mod:`~compactnn.rl.minatar`, optional: a missing install is reported, not raised
from inside a run)."""

from compactnn.rl.dqn import DQNAgent, DQNConfig, epsilon_at, td_targets
from compactnn.rl.minatar import GAMES, INSTALL, MinAtarEnv, minatar_problem, require_minatar
from compactnn.rl.replay import ReplayBuffer
from compactnn.rl.train import DQNRun, mean_return_last, train_dqn

__all__ = ["GAMES", "INSTALL", "DQNAgent", "DQNConfig", "DQNRun", "MinAtarEnv", "ReplayBuffer",
           "epsilon_at", "mean_return_last", "minatar_problem", "require_minatar", "td_targets",
           "train_dqn"]
