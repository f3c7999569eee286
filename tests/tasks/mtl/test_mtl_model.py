"""The experts of ``compactnn mtl``'s model: the LeNet-style CNN expert of the DSelect-k
paper family against a functional reference, its size, and its use in the model."""

import pytest
import torch
import torch.nn.functional as F

from compactnn.data.multitask import TaskSpec
from compactnn.tasks.mtl import LeNetExpert, MTLModel
from compactnn.tasks.mtl.config import ExpertConfig, GateConfig, TowerConfig

PAPER = {"channels": [10, 20], "hidden": [50], "out": 50}


def reference(expert: LeNetExpert, x: torch.Tensor) -> torch.Tensor:
    """conv 5x5 -> max-pool 2 -> ReLU twice, then dense ReLU dense, from the raw weights."""
    convs = [m for m in expert.modules() if isinstance(m, torch.nn.Conv2d)]
    dense = [m for m in expert.modules() if isinstance(m, torch.nn.Linear)]
    h = x
    for c in convs:
        h = F.relu(F.max_pool2d(F.conv2d(h, c.weight, c.bias), 2))
    h = h.flatten(1)
    for i, d in enumerate(dense):
        h = h @ d.weight.t() + d.bias
        if i < len(dense) - 1:
            h = F.relu(h)
    return h


def test_paper_expert_has_the_papers_layer_sizes():
    e = LeNetExpert(1, (36, 36), PAPER["channels"], PAPER["hidden"], PAPER["out"])
    sizes = [tuple(p.shape) for p in e.parameters()]
    # 36 -conv5-> 32 -pool-> 16 -conv5-> 12 -pool-> 6: 20 * 6 * 6 = 720 features
    assert sizes == [(10, 1, 5, 5), (10,), (20, 10, 5, 5), (20,), (50, 720), (50,),
                     (50, 50), (50,)]


def test_expert_equals_the_functional_reference():
    torch.manual_seed(0)
    e = LeNetExpert(2, (20, 24), [3, 4], [7], 5).double()
    x = torch.randn(6, 2, 20, 24, dtype=torch.float64, requires_grad=True)
    y = e(x)
    assert y.shape == (6, 5)
    torch.testing.assert_close(y, reference(e, x))
    g1 = torch.autograd.grad(y.square().sum(), x)[0]
    g2 = torch.autograd.grad(reference(e, x).square().sum(), x)[0]
    torch.testing.assert_close(g1, g2)


def test_images_too_small_for_the_stages_are_refused():
    with pytest.raises(ValueError, match="do not fit images of size"):
        LeNetExpert(1, (11, 11), [4, 4], [], 3)


def model(arch: str, execution: str = "dense", shape=(1, 36, 36), cats=()) -> MTLModel:
    tasks = [TaskSpec("a", "multiclass", 10), TaskSpec("b", "multiclass", 10)]
    return MTLModel(shape, tasks, cats, ExpertConfig(num=4, arch=arch, **PAPER),
                    GateConfig(name="topk", per_example=True, k=2, noisy=False),
                    TowerConfig(hidden=[50, 50]), execution=execution)


def test_model_with_lenet_experts_runs_sparse_equal_to_dense():
    torch.manual_seed(1)
    dense = model("lenet").double()
    sparse = model("lenet", "sparse").double()
    sparse.load_state_dict(dense.state_dict())
    x = torch.randn(8, 1, 36, 36, dtype=torch.float64)
    (yd, _), (ys, _) = dense(x), sparse(x)
    assert [tuple(y.shape) for y in yd] == [(8, 10), (8, 10)]
    for a, b in zip(yd, ys, strict=True):
        torch.testing.assert_close(a, b)


def test_lenet_experts_need_images():
    with pytest.raises(ValueError, match="experts.arch=lenet needs image inputs"):
        model("lenet", shape=(40,))
