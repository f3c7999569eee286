"""The DQN training loop: frames of one environment, resumable and seeded.

Checkpoints are taken between episodes (after an episode ends, before the next
``reset``), so the environment's state is only its random state; a checkpoint holds the
agent (both networks, optimizer, replay buffer, generator), the environment's random
state, the frame count and the finished episodes' returns. It is written to a temporary
file and renamed (a crash leaves the previous one), read back with
``torch.load(weights_only=True)`` and checked before anything is restored, so a resumed
run continues exactly as an uninterrupted one would.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from compactnn._checks import check_int
from compactnn.rl.dqn import DQNAgent

__all__ = ["DQNRun", "mean_return_last", "train_dqn"]


@dataclass
class DQNRun:
    """``episodes``: ``(frame at which it ended, return)`` of every finished episode."""

    frames: int
    episodes: list[tuple[int, float]] = field(default_factory=list)
    finished: bool = False


def _save(path: Path, agent: DQNAgent, env, frame: int, frames: int,
          episodes: list[tuple[int, float]]) -> None:
    state = {"agent": agent.state_dict(), "env_rng": env.rng_state(), "frame": frame,
             "total_frames": frames,
             "episodes": torch.tensor(episodes, dtype=torch.float64).reshape(-1, 2)}
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def _load(path: Path, agent: DQNAgent, env, frames: int) -> tuple[int, list[tuple[int, float]]]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # any unreadable file: say which and why
        raise ValueError(f"{path}: not a readable DQN checkpoint ({e})") from None
    if not isinstance(state, dict) or not {"agent", "env_rng", "frame", "total_frames",
                                           "episodes"} <= set(state):
        raise ValueError(f"{path}: not a DQN checkpoint (missing entries)")
    if state["total_frames"] != frames:
        raise ValueError(f"{path}: written for a run of {state['total_frames']} frames, this "
                         f"run has {frames}")
    frame = check_int("checkpoint frame", state["frame"], 0, frames)
    ep = state["episodes"]
    if not isinstance(ep, torch.Tensor) or ep.ndim != 2 or ep.shape[1] != 2 \
            or not bool(torch.isfinite(ep).all()) or bool((ep[:, 0] > frame).any()):
        raise ValueError(f"{path}: episode log is malformed")
    env_backup = env.rng_state()
    env.load_rng_state(state["env_rng"])
    try:
        agent.load_state_dict(state["agent"])
    except ValueError:
        env.load_rng_state(env_backup)
        raise
    return frame, [(int(f), float(r)) for f, r in ep.tolist()]


def train_dqn(env, agent: DQNAgent, frames: int, *, checkpoint: str | os.PathLike | None = None,
              checkpoint_every: int = 50_000, stop_after: int | None = None) -> DQNRun:
    """Run ``frames`` environment frames (one action each), resuming from
    ``checkpoint`` when it exists and saving it at the first episode end after every
    ``checkpoint_every`` frames. ``stop_after``: stop (and save) at the first episode end
    at or after that frame, returning an unfinished run. The episode cut by the frame
    budget is not recorded."""
    check_int("frames", frames, 1)
    check_int("checkpoint_every", checkpoint_every, 1)
    if stop_after is not None:
        check_int("stop_after", stop_after, 1)
    path = Path(checkpoint) if checkpoint is not None else None
    frame, episodes = 0, []
    if path is not None and path.exists():
        frame, episodes = _load(path, agent, env, frames)
    next_save = frame + checkpoint_every
    obs, ret = env.reset(), 0.0
    while frame < frames:
        action = agent.act(obs, frame)
        nxt, reward, done = env.step(action)
        agent.step(obs, action, reward, nxt, done, frame)
        frame, ret, obs = frame + 1, ret + reward, nxt
        if not done:
            continue
        episodes.append((frame, ret))
        stopping = stop_after is not None and frame >= stop_after
        if path is not None and (frame >= next_save or stopping):
            _save(path, agent, env, frame, frames, episodes)
            next_save = frame + checkpoint_every
        if stopping:
            return DQNRun(frame, episodes, False)
        obs, ret = env.reset(), 0.0
    return DQNRun(frame, episodes, True)


def mean_return_last(run: DQNRun, fraction: float = 0.1) -> float:
    """Mean return of the episodes that ended in the last ``fraction`` of the frames
    (NaN when none did)."""
    cut = run.frames * (1.0 - fraction)
    last = [r for f, r in run.episodes if f > cut]
    return sum(last) / len(last) if last else math.nan
