import pytest
import torch
from torch import nn

from compactnn.data.errors import DataNotFoundError
from compactnn.rl import (
    DQNAgent,
    DQNConfig,
    ReplayBuffer,
    epsilon_at,
    mean_return_last,
    td_targets,
    train_dqn,
)
from compactnn.rl import minatar as minatar_mod


class Chain:
    """Positions 0..3 (one-hot in a (1, 2, 2) frame); action 1 moves right, others left;
    reaching 3 pays 1 and ends; a random start (so the env's random state matters)."""

    num_actions, obs_shape = 2, (1, 2, 2)

    def __init__(self, seed):
        self.g = torch.Generator().manual_seed(seed)

    def _obs(self):
        o = torch.zeros(4, dtype=torch.bool)
        o[self.pos] = True
        return o.reshape(1, 2, 2)

    def reset(self):
        self.pos, self.t = int(torch.randint(0, 2, (), generator=self.g)), 0
        return self._obs()

    def step(self, a):
        self.pos = min(self.pos + 1, 3) if a == 1 else max(self.pos - 1, 0)
        self.t += 1
        done = self.pos == 3 or self.t >= 8
        return self._obs(), float(self.pos == 3), done

    def rng_state(self):
        return {"g": self.g.get_state()}

    def load_rng_state(self, s):
        self.g.set_state(s["g"])


CFG = DQNConfig(batch_size=4, replay_capacity=50, replay_start=10, target_update=7,
                eps_frames=40, lr=0.01)


def agent(seed=0, cfg=CFG):
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Flatten(), nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    return DQNAgent(net, 2, (1, 2, 2), cfg, seed)


def test_epsilon_schedule():
    cfg = DQNConfig(eps_start=1.0, eps_end=0.1, eps_frames=100)
    assert epsilon_at(0, cfg) == 1.0
    assert epsilon_at(50, cfg) == pytest.approx(0.55)
    assert epsilon_at(100, cfg) == pytest.approx(0.1) == epsilon_at(10**6, cfg)


def test_td_targets_closed_form():
    net = nn.Linear(2, 3, bias=False)
    with torch.no_grad():
        net.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]))
    nxt = torch.tensor([[1.0, 2.0], [-1.0, -3.0]])  # Q: [1, 2, 3] and [-1, -3, -4]
    y = td_targets(net, torch.tensor([0.5, 1.0]), nxt, torch.tensor([False, True]), 0.9)
    torch.testing.assert_close(y, torch.tensor([0.5 + 0.9 * 3, 1.0]))


def test_replay_ring_and_state_roundtrip():
    buf = ReplayBuffer(3, (2,))
    for i in range(5):
        buf.add(torch.full((2,), float(i)), i % 2, float(i), torch.full((2,), i + 0.5), i == 4)
    assert len(buf) == 3 and buf.pos == 2
    assert sorted(buf.reward.tolist()) == [2.0, 3.0, 4.0]  # the two oldest overwritten
    obs, act, rew, nxt, done = buf.sample(64, torch.Generator().manual_seed(0))
    assert set(rew.tolist()) <= {2.0, 3.0, 4.0}
    torch.testing.assert_close(nxt[:, 0], obs[:, 0] + 0.5)
    assert torch.equal(done, rew == 4.0) and torch.equal(act, rew.long() % 2)
    other = ReplayBuffer(3, (2,))
    other.load_state_dict(buf.state_dict())
    assert other.pos == buf.pos and torch.equal(other.obs, buf.obs)
    bad = buf.state_dict() | {"reward": torch.tensor([1.0, float("nan"), 0.0])}
    with pytest.raises(ValueError, match="non-finite"):
        other.load_state_dict(bad)
    assert torch.equal(other.reward, buf.reward)  # a refused state changes nothing
    with pytest.raises(ValueError, match="empty"):
        ReplayBuffer(2, (1,)).sample(1)


def test_learn_is_huber_on_td_error():
    ag = agent()
    o, n = torch.zeros(1, 2, 2, dtype=torch.bool), torch.ones(1, 2, 2, dtype=torch.bool)
    ag.replay.add(o, 1, 0.5, n, False)
    q = ag.q_net(o.float().unsqueeze(0))[0, 1]
    y = 0.5 + CFG.gamma * ag.target_net(n.float().unsqueeze(0)).max()
    expect = nn.functional.smooth_l1_loss(q, y)
    assert ag.learn() == pytest.approx(float(expect.detach()), rel=1e-6)


def test_target_network_refreshed_every_target_update_frames():
    cfg = DQNConfig(batch_size=4, replay_capacity=50, replay_start=1, target_update=7,
                    eps_frames=40, lr=0.01)
    ag, env = agent(cfg=cfg), Chain(0)
    obs = env.reset()
    for frame in range(2 * cfg.target_update):
        a = ag.act(obs, frame)
        nxt, r, done = env.step(a)
        ag.step(obs, a, r, nxt, done, frame)
        obs = env.reset() if done else nxt
        online, target = ag.q_net.state_dict(), ag.target_net.state_dict()
        same = all(torch.equal(online[k], target[k]) for k in online)
        assert same == ((frame + 1) % cfg.target_update == 0), frame  # lags in between
    assert ag.updates == 2 * cfg.target_update


def test_frozen_hidden_layer_does_not_move():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    net[1].requires_grad_(False)
    hidden = net[1].weight.clone()
    ag = DQNAgent(net, 2, (1, 2, 2), CFG, 0)
    train_dqn(Chain(0), ag, 60)
    assert ag.updates > 0 and torch.equal(net[1].weight, hidden)


def test_resume_is_exact(tmp_path):
    straight = agent()
    full = train_dqn(Chain(3), straight, 200)
    first = agent()
    ck = tmp_path / "ck.pt"
    part = train_dqn(Chain(3), first, 200, checkpoint=ck, stop_after=90)
    assert not part.finished and ck.exists() and 90 <= part.frames < 200
    resumed = agent(seed=5)  # different init and generator: all restored from the checkpoint
    done = train_dqn(Chain(99), resumed, 200, checkpoint=ck)
    assert done.finished and done.episodes == full.episodes
    for k, v in straight.q_net.state_dict().items():
        assert torch.equal(v, resumed.q_net.state_dict()[k])
    assert mean_return_last(done) == mean_return_last(full)


def test_checkpoint_refused_before_anything_changes(tmp_path):
    ck = tmp_path / "ck.pt"
    train_dqn(Chain(0), agent(), 100, checkpoint=ck, stop_after=30)
    other = agent(cfg=DQNConfig(batch_size=8, replay_capacity=50, replay_start=10,
                                target_update=7, eps_frames=40, lr=0.01))
    before = {k: v.clone() for k, v in other.q_net.state_dict().items()}
    with pytest.raises(ValueError, match="config"):
        train_dqn(Chain(0), other, 100, checkpoint=ck)
    assert all(torch.equal(before[k], v) for k, v in other.q_net.state_dict().items())
    with pytest.raises(ValueError, match="frames"):
        train_dqn(Chain(0), agent(), 120, checkpoint=ck)
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not a readable"):
        train_dqn(Chain(0), agent(), 100, checkpoint=tmp_path / "junk.pt")


def test_mean_return_last():
    from compactnn.rl import DQNRun

    run = DQNRun(100, [(10, 1.0), (85, 2.0), (95, 4.0), (100, 6.0)], True)
    assert mean_return_last(run, 0.1) == 5.0 and mean_return_last(run, 0.2) == 4.0


def test_missing_minatar_is_a_data_not_found(monkeypatch):
    monkeypatch.setattr(minatar_mod.importlib.util, "find_spec", lambda name: None)
    assert "pip install minatar" in minatar_mod.minatar_problem()
    with pytest.raises(DataNotFoundError, match="MinAtar is not installed"):
        minatar_mod.MinAtarEnv("breakout", 0)


def test_minatar_random_state_roundtrip():
    pytest.importorskip("minatar")
    env = minatar_mod.MinAtarEnv("space_invaders", 1)
    env.reset()
    state = env.rng_state()

    def play(e):
        out = [e.reset()]
        for a in [0, 1, 2, 3, 4, 5] * 5:
            out.append(e.step(a)[0])
        return torch.stack(out)

    a = play(env)
    env.load_rng_state(state)
    assert torch.equal(play(env), a)
    with pytest.raises(ValueError, match="key"):
        env.load_rng_state(state | {"key": torch.zeros(3, dtype=torch.int64)})
