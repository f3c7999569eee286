"""Sparse hidden structure in deep RL [On the Interplay Between Sparsity and Training in
Deep Reinforcement Learning]: DQN (:mod:`compactnn.rl`) on MinAtar games with a
one-hidden-layer Q-network whose hidden layer is dense, random sparse, spatially local
sparse or a convolution, all at the same number of connections
(:class:`compactnn.models.StructuredQNet`), with the hidden layer learned or fixed at
its initialization.

Every run (game, structure, regime, seed) writes ``runs/<name>.json`` when it finishes
and checkpoints every ``checkpoint_every`` frames, so an interrupted experiment resumes
where it stopped. ``python -m compactnn.experiments.minatar_sparse --help`` runs a
chosen budget (frames, seeds, games) outside ``compactnn reproduce``.
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from compactnn.experiments import ExperimentResult, register
from compactnn.experiments.reporting import new_figure, write_csv
from compactnn.experiments.stats import comparison_markdown
from compactnn.models.qnet import STRUCTURES, StructuredQNet
from compactnn.rl import DQNAgent, DQNConfig, DQNRun, MinAtarEnv, mean_return_last, train_dqn
from compactnn.rl.minatar import require_minatar

REGIMES = ("learned", "fixed")


@dataclass(frozen=True)
class Setting:
    games: tuple[str, ...]
    seeds: int
    frames: int
    units: int = 16  # conv filters / local units per patch (MinAtar's reference: 16, 3x3)
    kernel: int = 3
    checkpoint_every: int = 20_000

    def dqn(self) -> DQNConfig:
        """MinAtar's reference DQN with the schedule scaled to the frame budget: epsilon
        decays over the first 10% of frames, learning starts after 5% (at most MinAtar's
        5,000), the replay holds every frame up to MinAtar's 100,000."""
        f = self.frames
        return DQNConfig(replay_capacity=min(100_000, f), replay_start=min(5_000, f // 20),
                         target_update=min(1_000, max(1, f // 20)), eps_frames=max(1, f // 10))


QUICK = Setting(("breakout",), 1, 600, units=4)
FULL = Setting(("breakout", "space_invaders"), 5, 40_000)


def run_name(game: str, structure: str, regime: str, seed: int) -> str:
    return f"{game}-{structure}-{regime}-seed{seed}"


def one_run(s: Setting, game: str, structure: str, regime: str, seed: int,
            folder: str) -> dict:
    """Train one agent (resuming from its checkpoint) and return its record."""
    torch.set_num_threads(1)
    out = Path(folder) / f"{run_name(game, structure, regime, seed)}.json"
    if out.exists():
        return checked_record(out, s, game, structure, regime, seed)
    env = MinAtarEnv(game, seed)
    torch.manual_seed(seed)
    net = StructuredQNet(env.obs_shape, env.num_actions, structure, s.kernel, s.units,
                         learn_hidden=regime == "learned",
                         generator=torch.Generator().manual_seed(seed))
    agent = DQNAgent(net, env.num_actions, env.obs_shape, s.dqn(), seed)
    ckpt = out.with_suffix(".ckpt")
    result = train_dqn(env, agent, s.frames, checkpoint=ckpt,
                       checkpoint_every=s.checkpoint_every)
    record = {"game": game, "structure": structure, "regime": regime, "seed": seed,
              "frames": result.frames, "episodes": result.episodes,
              "score": score(result), "connections": net.hidden_connections(),
              "hidden_weights": net.hidden_weights(), "width": net.width,
              "trainable": sum(p.numel() for p in net.parameters() if p.requires_grad)}
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(record))
    tmp.replace(out)
    ckpt.unlink(missing_ok=True)
    return record


def checked_record(path: Path, s: Setting, game: str, structure: str, regime: str,
                   seed: int) -> dict:
    """A finished run's record read back, refused (``ValueError`` naming the file) unless
    it is the run asked for, at this budget, with a well-formed episode log."""
    try:
        r = json.loads(path.read_text())
        ok = (isinstance(r, dict)
              and (r.get("game"), r.get("structure"), r.get("regime"), r.get("seed"),
                   r.get("frames")) == (game, structure, regime, seed, s.frames)
              and all(isinstance(r.get(k), int) and r[k] >= 0 for k in
                      ("connections", "hidden_weights", "width", "trainable"))
              and isinstance(r.get("score"), int | float) and math.isfinite(r["score"])
              and isinstance(r.get("episodes"), list)
              and all(isinstance(e, list) and len(e) == 2 and isinstance(e[0], int)
                      and 0 < e[0] <= s.frames and isinstance(e[1], int | float)
                      and math.isfinite(e[1]) for e in r["episodes"]))
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: unreadable run record ({e}); delete it to rerun") from None
    if not ok:
        raise ValueError(f"{path}: not the record of {run_name(game, structure, regime, seed)} "
                         f"at {s.frames} frames; delete it to rerun")
    return r


def score(run: DQNRun) -> float:
    """Mean return of the episodes ending in the last 10% of frames; when none did, the
    last finished episode's return (0 when none finished)."""
    s = mean_return_last(run, 0.1)
    if math.isnan(s):
        s = run.episodes[-1][1] if run.episodes else 0.0
    return s


def random_policy_score(game: str, frames: int, seed: int) -> float:
    """:func:`score` of the uniformly random policy over ``frames`` frames: the level
    below which a trained agent has learned nothing."""
    env = MinAtarEnv(game, seed)
    g = torch.Generator().manual_seed(seed)
    episodes, ret = [], 0.0
    env.reset()
    for frame in range(1, frames + 1):
        _, reward, done = env.step(int(torch.randint(env.num_actions, (), generator=g)))
        ret += reward
        if done:
            episodes.append((frame, ret))
            ret = 0.0
            env.reset()
    return score(DQNRun(frames, episodes, True))


def run_all(out_dir: Path, s: Setting, seed: int, jobs: int) -> list[dict]:
    require_minatar()
    folder = out_dir / "runs"
    folder.mkdir(parents=True, exist_ok=True)
    tasks = [(s, g, st, rg, sd, str(folder)) for g in s.games for rg in REGIMES
             for st in STRUCTURES for sd in range(seed, seed + s.seeds)]
    if jobs > 1 and len(tasks) > 1:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(min(jobs, len(tasks)), mp_context=mp.get_context("spawn")) as p:
            return list(p.map(one_run, *zip(*tasks, strict=True)))
    return [one_run(*t) for t in tasks]


@register("minatar_sparse", "Sparse hidden structure in DQN on MinAtar: dense, random, "
          "spatially local and conv at equal connections, hidden layer learned or fixed",
          parallel=True)
def run(out_dir: Path, quick: bool, seed: int, jobs: int = 1) -> ExperimentResult:
    s = QUICK if quick else FULL
    return summarize(out_dir, s, run_all(out_dir, s, seed, jobs))


def summarize(out_dir: Path, s: Setting, records: list[dict]) -> ExperimentResult:
    csv_path = write_csv(out_dir / "minatar_sparse.csv",
                         ["game", "structure", "regime", "seed", "score", "episodes",
                          "connections", "hidden_weights", "width", "trainable"],
                         [[r["game"], r["structure"], r["regime"], r["seed"], r["score"],
                           len(r["episodes"]), r["connections"], r["hidden_weights"],
                           r["width"], r["trainable"]] for r in records])
    parts, best = [], {}
    for g in s.games:
        for rg in REGIMES:
            rows = sorted((r for r in records if r["game"] == g and r["regime"] == rg),
                          key=lambda r: r["seed"])
            values = {st: [r["score"] for r in rows if r["structure"] == st]
                      for st in STRUCTURES}
            best[(g, rg)] = max(STRUCTURES, key=lambda st: sum(values[st]) / len(values[st]))
            sizes = {r["structure"]: r for r in rows}
            labels = {st: f"{st} ({sizes[st]['width']} units, {sizes[st]['hidden_weights']} "
                          "hidden weights)" for st in STRUCTURES}
            parts.append(f"**{g}, hidden layer {rg}** (score: mean return over the last 10% "
                         "of frames; dense - other, paired over seeds, Holm over the three "
                         "comparisons)\n\n" + comparison_markdown(
                             values, "dense", lower_is_better=False, labels=labels,
                             fmt="{:.3f}", diff_fmt="{:+.3f}"))
    png = _plot(out_dir, s, records)
    conn = max((r["connections"] for r in records), default=0)
    seeds = sorted({r["seed"] for r in records})
    chance = {g: [random_policy_score(g, s.frames, sd) for sd in seeds] for g in s.games}
    flips = [g for g in s.games if best[(g, "learned")] != best[(g, "fixed")]]
    cfg = s.dqn()
    md = (
        f"DQN on MinAtar ({', '.join(s.games)}; sticky actions 0.1), {s.frames} frames per "
        f"run, {s.seeds} seed(s) per cell. Hidden layer at {conn} connections on the "
        f"largest game ({s.units} units per patch, {s.kernel}x{s.kernel} patches); ReLU; "
        f"linear output. DQN: batch {cfg.batch_size}, replay {cfg.replay_capacity}, "
        f"learning from frame {cfg.replay_start}, target update every {cfg.target_update} "
        f"frames, epsilon {cfg.eps_start} -> {cfg.eps_end} over {cfg.eps_frames} frames, "
        f"RMSprop lr {cfg.lr}, gamma {cfg.gamma}, Huber loss, one update per frame.\n\n"
        + "Uniformly random policy, same frames and seeds (the level of no learning): "
        + "; ".join(f"{g} {sum(v) / len(v):.3f}" for g, v in chance.items()) + ".\n\n"
        + "\n\n".join(parts)
        + "\n\nBest structure by mean score: "
        + "; ".join(f"{g} {rg}: {b}" for (g, rg), b in best.items())
        + (f". It differs between the regimes on {', '.join(flips)}." if flips else
           ". It is the same in both regimes on every game.")
        + f"\n\n![minatar_sparse]({png.name})\n"
    )
    return ExperimentResult("minatar_sparse", md, [csv_path, png])


def _plot(out_dir: Path, s: Setting, records: list[dict]) -> Path:
    fig, axes = new_figure(nrows=len(s.games), ncols=2, figsize=(11, 3.6 * len(s.games)),
                           squeeze=False)
    bins = 20
    for gi, g in enumerate(s.games):
        for ri, rg in enumerate(REGIMES):
            ax = axes[gi][ri]
            for st in STRUCTURES:
                curves = []
                for r in records:
                    if (r["game"], r["regime"], r["structure"]) != (g, rg, st):
                        continue
                    per_bin = [[] for _ in range(bins)]
                    for f, ret in r["episodes"]:
                        per_bin[min(bins - 1, int(f * bins / max(r["frames"], 1)))].append(ret)
                    curves.append([sum(b) / len(b) if b else math.nan for b in per_bin])
                if curves:
                    mean = [sum(c[i] for c in curves if not math.isnan(c[i]))
                            / max(1, sum(not math.isnan(c[i]) for c in curves))
                            for i in range(bins)]
                    ax.plot([(i + 0.5) * s.frames / bins for i in range(bins)], mean, label=st)
            ax.set_title(f"{g}, hidden {rg}")
            ax.set_xlabel("frame")
            ax.set_ylabel("episode return (mean over seeds)")
            ax.legend(fontsize=7)
    fig.tight_layout()
    png = out_dir / "minatar_sparse.png"
    fig.savefig(png, dpi=110)
    return png


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m compactnn.experiments.minatar_sparse",
        description="The minatar_sparse experiment at a chosen budget (resumable: rerun the "
                    "same command to continue).")
    p.add_argument("--out", required=True, help="folder for runs/, tables and the plot")
    p.add_argument("--frames", type=int, default=FULL.frames)
    p.add_argument("--seeds", type=int, default=FULL.seeds)
    p.add_argument("--games", nargs="+", default=list(FULL.games))
    p.add_argument("--units", type=int, default=FULL.units,
                   help="hidden units per patch position (conv filters); sets the connections")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--jobs", type=int, default=1)
    a = p.parse_args(argv)
    s = replace(FULL, games=tuple(a.games), seeds=a.seeds, frames=a.frames, units=a.units)
    s.dqn()  # refuse a bad budget before any run starts
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    result = summarize(out, s, run_all(out, s, a.seed, a.jobs))
    (out / "minatar_sparse.md").write_text(result.markdown)
    print(result.markdown)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
