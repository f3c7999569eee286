"""The layer_pruning, relchanet and depth_aware experiments on tiny set-ups."""

import pytest
import torch

from compactnn.data import load_digits_split
from compactnn.experiments import depth_aware as da
from compactnn.experiments import get, registry
from compactnn.experiments import layer_pruning as lp
from compactnn.experiments import relchanet as rc


def test_registered_for_reproduce():
    names = set(registry())
    assert {"layer_pruning", "relchanet", "depth_aware"} <= names
    for n in ("layer_pruning", "relchanet", "depth_aware"):
        assert get(n).in_quick and get(n).parallel


def test_layer_pruning_arms_remove_k_blocks():
    s = lp.Setting("digits", 8, (4, 4, 4), 1, (1, 2), 0, 0, 1, 1, 1, 1, batch=256)
    rows, base = lp.seed_rows(s, 0)
    assert [(r[1], r[2]) for r in rows] == [(k, a) for k in (1, 2) for a in lp.ARMS]
    for r in rows:
        removed = r[8].split()
        assert len(removed) == r[1]
        assert all(n.startswith("layer") for n in removed)
        assert r[6] < 1.0  # removing a block removes its branch's parameters
    # similarity and random prune the same plainly trained model
    for k in (1, 2):
        sim = next(r for r in rows if r[1] == k and r[2] == "similarity")
        rnd = next(r for r in rows if r[1] == k and r[2] == "random")
        assert sim[3] == rnd[3]
    # an accuracy over the whole digits test split: a whole number of its 360 images
    n_test = len(load_digits_split(seed=0).y_test)
    assert base["base_acc"] * n_test == pytest.approx(round(base["base_acc"] * n_test), abs=1e-6)


def test_relchanet_methods_pick_k_distinct_columns():
    s = rc.Setting(("digits",), {"digits": (3,)}, 1, 0, 1, 1)
    rows = rc.dataset_rows(s, "digits", 0)
    assert rows[0][2] == "full set" and rows[0][3] == 64
    assert [r[2] for r in rows[1:]] == list(rc.METHODS)
    for r in rows[1:]:
        cols = [int(c) for c in r[5].split()]
        assert len(set(cols)) == 3 and all(0 <= c < 64 for c in cols)
    x = torch.arange(12.0).reshape(3, 4) * torch.tensor([0.0, 1.0, 3.0, 2.0])
    assert rc.select_features("variance", x, torch.zeros(3, dtype=torch.long), 2, 2, 0, s) == [2, 3]


@pytest.mark.parametrize("kind", ["mlp", "cnn"])
def test_depth_aware_models_and_profiles(kind):
    s = da.Setting("digits", ((kind, 4),), 16, 4, 1, 0, 1)
    model = da.plain_net(kind, 4, s, 8)
    assert sum(isinstance(m, torch.nn.Linear | torch.nn.Conv2d) for m in model) == 4
    # r=1 is Kaiming normal (fan-in, ReLU gain) with zero biases: the same draws give the
    # same weights up to the rounding of the std
    kaiming = da.plain_net(kind, 4, s, 8)
    torch.manual_seed(5)
    da.init_model(model, "depth-aware r=1")
    torch.manual_seed(5)
    da.init_model(kaiming, "kaiming")
    for a, b in zip(model.parameters(), kaiming.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=0.0)
    prof = da.preactivation_profile(model, torch.rand(32, 1, 8, 8))
    assert len(prof) == 4 and all(p > 0 for p in prof)
    rows, profiles = da.seed_rows(s, 0)
    assert [r[3] for r in rows] == list(da.INITS) and len(profiles) == len(da.INITS)
