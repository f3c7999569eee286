"""Planted-expert multi-task data: the generator, expert matching, support recovery, and
the oracle control that makes the expert-selection test valid."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from compactnn.data.planted import (
    make_planted_experts,
    match_experts,
    planted_expert_outputs,
    support_recovery,
)
from compactnn.experiments.planted_moe import routing_matrix, train_routed


def test_generator_is_deterministic_and_clusters_share_no_expert():
    a = make_planted_experts(12, 3, 2, input_dim=6, n_train=50, n_val=10, n_test=10, seed=4)
    b = make_planted_experts(12, 3, 2, input_dim=6, n_train=50, n_val=10, n_test=10, seed=4)
    c = make_planted_experts(12, 3, 2, input_dim=6, n_train=50, n_val=10, n_test=10, seed=5)
    assert torch.equal(a.train.x, b.train.x) and all(
        torch.equal(x, y) for x, y in zip(a.test.targets, b.test.targets, strict=True))
    assert not torch.equal(a.train.x, c.train.x)
    ce = a.meta["cluster_experts"]
    assert sorted(ce.ravel().tolist()) == list(range(6))  # a partition of the experts
    assert (a.meta["planted_supports"] == ce[a.meta["clusters"]]).all()
    assert a.meta["clusters"].tolist() == [t % 3 for t in range(12)]


def test_targets_follow_the_planted_formula():
    d = make_planted_experts(6, 2, 2, input_dim=5, expert_hidden=3, expert_out=2, n_train=40,
                             n_val=5, n_test=5, noise_std=0.0, standardize_targets=False)
    x = d.train.x.double().numpy()
    ex = d.meta["experts"]
    for t in range(6):
        want = np.zeros(len(x))
        for j, e in enumerate(d.meta["planted_supports"][t]):
            h = np.tanh(x @ ex["w1"][e].T + ex["b1"][e])
            want += (h @ ex["w2"][e].T) @ d.meta["heads"][t, j]
        np.testing.assert_allclose(d.train.targets[t].numpy(), want, rtol=1e-5, atol=1e-5)


def test_matching_recovers_a_permutation_up_to_linear_maps():
    d = make_planted_experts(8, 4, 2, input_dim=6, n_train=300, n_val=5, n_test=5)
    f = planted_expert_outputs(d.meta["experts"], d.train.x.numpy())  # (8, N, 4)
    rng = np.random.default_rng(0)
    perm = rng.permutation(8)
    # learned expert i computes an invertible linear map of planted expert perm[i] (+ shift)
    learned = np.stack([f[perm[i]] @ rng.standard_normal((4, 6)) + 1.0 for i in range(8)])
    matching, sim = match_experts(learned, f)
    assert matching == {i: int(perm[i]) for i in range(8)}
    np.testing.assert_allclose(sim[np.arange(8), perm], 1.0, atol=1e-9)
    assert (sim < 1.0 - 1e-6).sum() == 8 * 8 - 8


def test_support_recovery_by_hand():
    planted = [[0, 1], [0, 1], [2, 3]]
    matching = {0: 1, 1: 0, 2: 3, 3: 2}  # learned i is planted matching[i]
    w = np.array([[0.5, 0.5, 0, 0],   # {1, 0}: exact
                  [0.9, 0.0, 0.1, 0],  # {1, 3}: precision 1/2, recall 1/2
                  [0, 0, 0, 1.0]])     # {2}: precision 1, recall 1/2
    r = support_recovery(w, planted, matching)
    assert r["precision"] == pytest.approx((1 + 0.5 + 1) / 3)
    assert r["recall"] == pytest.approx((1 + 0.5 + 0.5) / 3)
    assert r["exact"] == pytest.approx(1 / 3)
    assert r["support_size"] == pytest.approx(5 / 3)
    # an unmatched learned expert (more learned than planted experts) matches nothing
    r = support_recovery(np.array([[0.5, 0, 0, 0, 0.5]]), [[1, 0]], matching)
    assert r["precision"] == 0.5 and r["recall"] == 0.5 and r["exact"] == 0.0
    # a tolerance drops tiny weights from the support
    assert support_recovery(np.array([[0.5, 0.499, 1e-4, 0]]), [[1, 0]], matching,
                            tol=1e-3)["exact"] == 1.0


@pytest.mark.parametrize("kwargs", [{"num_clusters": 0}, {"num_clusters": 9},
                                    {"n_train": 1}, {"noise_std": -1.0},
                                    {"experts_per_cluster": 0}])
def test_generator_rejects_bad_arguments(kwargs):
    with pytest.raises(ValueError):
        make_planted_experts(**{"num_tasks": 8, "n_train": 20, **kwargs})


def test_generator_rejects_wrong_types():
    with pytest.raises(TypeError):
        make_planted_experts(num_tasks=8.0)
    with pytest.raises(TypeError):
        make_planted_experts(standardize_targets=1)


def test_metric_rejects_bad_shapes():
    with pytest.raises(ValueError):
        match_experts(np.zeros((2, 5, 3)), np.zeros((2, 6, 3)))
    with pytest.raises(ValueError):
        match_experts(np.full((2, 5, 3), np.nan), np.zeros((2, 5, 3)))
    with pytest.raises(ValueError):
        support_recovery(np.zeros((3, 4)), [[0, 1]], {})


def test_oracle_routing_beats_random_routing_on_a_small_case():
    """The planted routing is what the loss rewards: the same experts and towers trained
    with the oracle's frozen routing reach a clearly lower test MSE than with random
    routing, and learn the planted experts (support recovery 1 through the matching)."""
    data = make_planted_experts(32, 8, 2, input_dim=16, n_train=1500, n_val=300,
                                n_test=600, seed=0)
    clusters = data.meta["clusters"]
    mse = {}
    for kind in ("oracle", "random"):
        w = routing_matrix(kind, 32, clusters, 16, 2, seed=0)
        r = train_routed(data, routing=w, hidden=16, out=8, epochs=20, lr=1e-2, seed=0)
        mse[kind] = r["test_mse"]
        if kind == "oracle":
            with torch.no_grad():
                g = r["model"].expert_outputs(data.test.x).permute(1, 0, 2).numpy()
            f = planted_expert_outputs(data.meta["experts"], data.test.x.numpy())
            matching, _ = match_experts(g, f)
            rec = support_recovery(w, data.meta["planted_supports"], matching)
            assert rec["exact"] == 1.0
    assert mse["oracle"] < 0.9 * mse["random"], mse


def test_routing_matrix():
    w = routing_matrix("oracle", 4, np.array([0, 1, 0, 1]), 4, 2)
    np.testing.assert_array_equal(w, [[.5, .5, 0, 0], [0, 0, .5, .5], [.5, .5, 0, 0],
                                      [0, 0, .5, .5]])
    r = routing_matrix("random", 50, np.zeros(50, int), 6, 3, seed=1)
    assert ((r > 0).sum(1) == 3).all() and np.allclose(r.sum(1), 1.0)
    assert (routing_matrix("random", 50, np.zeros(50, int), 6, 3, seed=1) == r).all()
    with pytest.raises(ValueError):
        routing_matrix("oracle", 4, np.array([0, 1, 2, 3]), 4, 2)
    with pytest.raises(ValueError):
        routing_matrix("learned", 4, np.zeros(4, int), 4, 2)


def test_with_spare_experts_keeps_the_planted_ones_and_adds_same_shaped_draws():
    from compactnn.data.planted import with_spare_experts

    d = make_planted_experts(8, 2, 2, input_dim=5, expert_hidden=3, expert_out=2,
                             n_train=10, n_val=2, n_test=2, seed=1)
    e = d.meta["experts"]
    out = with_spare_experts(e, 3, seed=4)
    assert out["w1"].shape == (7, 3, 5) and out["b1"].shape == (7, 3)
    assert out["w2"].shape == (7, 2, 3)
    for key in ("w1", "b1", "w2"):
        np.testing.assert_array_equal(out[key][:4], e[key])
    # seeded: the same spares again, other ones for another seed
    np.testing.assert_array_equal(with_spare_experts(e, 3, seed=4)["w1"], out["w1"])
    assert not np.allclose(with_spare_experts(e, 3, seed=5)["w1"][4:], out["w1"][4:])
    assert with_spare_experts(e, 0)["w1"].shape == e["w1"].shape
    with pytest.raises(ValueError, match="spare"):
        with_spare_experts(e, -1)
    with pytest.raises(ValueError, match="w1"):
        with_spare_experts({"w1": e["w1"]}, 2)
