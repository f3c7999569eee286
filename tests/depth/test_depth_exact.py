"""Layer pruning's numbers against reference computations: io-similarity as a mean
over examples (whatever the batching), and the number of blocks a ratio removes."""

import pytest
import torch
from test_depth import resnet

from compactnn.depth import LayerScales, io_similarity_scores, prune_layers, removal_path
from compactnn.depth.scales import count_to_remove

BLOCKS = ["layer1.0", "layer1.1", "layer2.0", "layer2.1", "layer3.0", "layer3.1"]


def reference_scores(model, x):
    """``1 - cos`` between each block's output and its removal path, per example,
    averaged over all of ``x`` in one batch."""
    per_example = {}

    def hook_for(name):
        def hook(module, args, out):
            a, b = out.flatten(1).double(), removal_path(module, args[0]).flatten(1).double()
            per_example[name] = 1 - (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1))
        return hook

    handles = [model.get_submodule(n).register_forward_hook(hook_for(n)) for n in BLOCKS]
    with torch.no_grad():
        model(x)
    for h in handles:
        h.remove()
    return {n: float(v.mean()) for n, v in per_example.items()}


def test_io_similarity_is_a_mean_over_examples_not_batches():
    model = resnet()
    x = torch.randn(5, 1, 10, 10, generator=torch.Generator().manual_seed(1))
    want = reference_scores(model, x)
    # batches of 4 and 1: a mean of batch means would weigh the last example 4 times more
    got = io_similarity_scores(model, [x[:4], (x[4:], None)])
    assert got.keys() == want.keys()
    for n in BLOCKS:
        assert got[n] == pytest.approx(want[n], rel=1e-5, abs=1e-7)
    split = io_similarity_scores(model, [x[:1], x[1:]])
    assert split == pytest.approx(got, rel=1e-5, abs=1e-7)


def test_io_similarity_of_a_zeroed_branch_is_zero_and_others_match_the_reference():
    model = resnet()
    scales = LayerScales(model)
    with torch.no_grad():
        scales.weight[2] = 0.0
    scales.remove(fold=True)
    x = torch.randn(4, 1, 10, 10, generator=torch.Generator().manual_seed(2))
    model.train()
    got = io_similarity_scores(model, [x[:3], x[3:]])
    assert model.training  # the mode it was in
    model.eval()
    want = reference_scores(model, x)
    assert got["layer2.0"] == pytest.approx(0.0, abs=1e-6)
    for n in BLOCKS:
        assert got[n] == pytest.approx(want[n], rel=1e-5, abs=1e-7)
    assert min(want[n] for n in BLOCKS if n != "layer2.0") > 1e-3


@pytest.mark.parametrize("total, ratio, k", [(6, 0.3, 2), (6, 0.25, 2), (7, 0.5, 4),
                                             (6, 0.05, 1), (6, 1.0, 6), (10, 0.34, 3),
                                             (10, 0.36, 4)])
def test_a_ratio_removes_the_rounded_share_of_blocks(total, ratio, k):
    assert count_to_remove(total, None, ratio) == k


def test_a_ratio_reaches_smallest_and_prune_layers():
    model = resnet()
    scores = dict(zip(BLOCKS, [0.6, 0.1, 0.5, 0.2, 0.9, 0.3], strict=True))
    _, report = prune_layers(model, ratio=0.3, scores=scores)  # 1.8 blocks: 2
    assert report.removed == ["layer1.1", "layer2.1"]
    scales = LayerScales(model)
    with torch.no_grad():
        scales.weight.copy_(torch.tensor(list(scores.values())))
    assert scales.smallest(ratio=0.3) == ["layer1.1", "layer2.1"]
    scales.remove(fold=False)


def test_count_to_remove_bounds_and_messages():
    assert [count_to_remove(6, k, None) for k in (0, 3, 6)] == [0, 3, 6]
    assert count_to_remove(1, None, 0.01) == 1 and count_to_remove(3, None, 1.0) == 3
    for args, message in [
            ((6, None, None), "give exactly one of num_layers and ratio, got num_layers=None, "
                              "ratio=None"),
            ((6, 2, 0.5), "give exactly one of num_layers and ratio, got num_layers=2, "
                          "ratio=0.5"),
            ((6, 7, None), "num_layers=7 exceeds the 6 candidate blocks")]:
        with pytest.raises(ValueError) as e:
            count_to_remove(*args)
        assert str(e.value) == message
    for args, name in [((6, -1, None), "num_layers"), ((6, None, 0.0), "ratio"),
                       ((6, None, 1.5), "ratio"), ((6, None, float("nan")), "ratio")]:
        with pytest.raises(ValueError) as e:
            count_to_remove(*args)
        assert str(e.value).startswith(name)
    with pytest.raises(TypeError, match="num_layers"):
        count_to_remove(6, 2.0, None)


def test_io_similarity_options_and_errors():
    model = resnet()
    x = torch.randn(3, 1, 10, 10, generator=torch.Generator().manual_seed(3))
    want = reference_scores(model, x)
    got = io_similarity_scores(model, [[x[:2], None], x[2:]], include=["layer1.0", "layer3.1"])
    assert got == pytest.approx({n: want[n] for n in ("layer1.0", "layer3.1")}, rel=1e-5)
    assert list(io_similarity_scores(model, [x], exclude=r"layer[12]\..*")) == ["layer3.0",
                                                                               "layer3.1"]
    with pytest.raises(ValueError) as e:
        io_similarity_scores(model, [])
    assert str(e.value) == "batches yielded no example"
    assert not model.training
    assert all(not m._forward_hooks for m in model.modules())  # hooks removed
