"""The wiring of the shortcut and two-layer-dynamics experiments on tiny settings."""

import math

import torch

from compactnn.experiments import shortcut, two_layer_dynamics


def test_shortcut_arms_outcomes():
    s = shortcut.Setting(4, 4, ("gaussian",), 8, 100, 1500, (0.01, 0.05), 0.05)
    g = torch.Generator().manual_seed(0)
    w_star, a_star = shortcut._teacher("gaussian", 4, 4, g)
    a0 = shortcut._ball(8, 4, float(a_star.norm()), g)
    w0 = torch.randn(8, 4, generator=g, dtype=torch.float64)
    w0 = w0 / w0.norm(dim=1, keepdim=True)
    out, dist, _, (steps, ww, _) = shortcut.run_arm(s, "shortcut, w0 = 0", w_star, a_star,
                                                     w0, a0)
    assert out == ["global"] * 8 and max(dist) < 1e-4
    assert steps[0] == 0 and ww[0] == [0.0] * 8  # the paper's init: w starts at 0
    # an init that is already the teacher stays there, and is classified global
    out, *_ = shortcut.run_arm(s, "plain", w_star, a_star, w_star.expand(8, 4), a_star.expand(8, 4))
    assert out == ["global"] * 8


def test_shortcut_distance_is_scale_free_without_shortcut():
    w_star, a_star = torch.tensor([1.0, 0.0], dtype=torch.float64), torch.tensor([2.0, -1.0],
                                                                              dtype=torch.float64)
    w, a = (3 * w_star).unsqueeze(0), (a_star / 3).unsqueeze(0)
    assert float(shortcut._distance(w, a, w_star, a_star, False)) < 1e-12
    assert float(shortcut._distance(w, a, w_star, a_star, True)) > 1


def test_seed_summary_times():
    # step, train, test, complexity, alignment, feature move
    rows = [[0, 1, 0.5, 0.0, 0.2, 0], [10, 0.5, 0.1, 1.0, 0.9, 1], [100, 0.1, 0.2, 2.0, 0.5, 2],
            [1000, 0.0, 0.5, 4.0, 0.4, 3]]
    d = two_layer_dynamics.seed_summary(rows)
    assert d["t_align"] == 10 and d["t_best"] == 10 and d["test_best"] == 0.1
    assert d["t_overfit"] == 1000  # half the rise (0.1 -> 0.5) is 0.3, first reached at 1000
    assert d["t_complexity"] == 100  # complexity 0 -> 4: half (2) first reached at 100
    flat = [[0, 1, 0.5, 1.0, 0.2, 0], [10, 1, 0.4, 1.0, 0.2, 0]]
    assert math.isinf(two_layer_dynamics.seed_summary(flat)["t_overfit"])


def test_two_layer_train_logs():
    s = two_layer_dynamics.Setting(3, 10, (4,), (0.1,), 2, 20, marks=5)
    logs = two_layer_dynamics.train(s, 4, 0.1, 0)
    assert len(logs) == 2 and logs[0][0][0] == 0 and logs[0][-1][0] == 20
    assert logs[0][0][5] == 0.0  # no feature movement at step 0
    assert logs[0][-1][1] < logs[0][0][1]  # gradient descent lowers the training error
