"""A BatchNorm between a layer and its activation: detection, its affine map, and
the nonlinear init solving ``act(BN(U V x))`` against ``act(BN(W x))``."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from compactnn import LowRankConv2d, LowRankLinear
from compactnn.init import nonlinear_, norm_affine
from compactnn.surgery import compress_sequential, detect_activations, detect_norms


def _trained_bn(c: int, affine: bool = True, seed: int = 0, dim: int = 2) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    bn = (nn.BatchNorm2d if dim == 2 else nn.BatchNorm1d)(c, affine=affine)
    bn.running_mean.copy_(torch.randn(c, generator=g))
    bn.running_var.copy_(torch.rand(c, generator=g) + 0.2)
    if affine:
        bn.weight.data.copy_(torch.randn(c, generator=g))  # negative scales too
        bn.bias.data.copy_(torch.randn(c, generator=g))
    return bn.eval()


@pytest.mark.parametrize("affine", [True, False])
def test_norm_affine_is_the_eval_batchnorm(affine):
    bn = _trained_bn(6, affine).double()
    z = torch.randn(4, 6, 3, 3, dtype=torch.float64)
    a, d = norm_affine(bn, 6)
    torch.testing.assert_close(bn(z), a.view(1, -1, 1, 1) * z + d.view(1, -1, 1, 1))


def test_norm_affine_rejects_bad_norms():
    with pytest.raises(ValueError, match="running statistics"):
        norm_affine(nn.BatchNorm2d(4, track_running_stats=False), 4)
    with pytest.raises(ValueError, match="3 channels"):
        norm_affine(_trained_bn(3), 4)
    with pytest.raises(ValueError, match="running statistics, got ReLU"):
        norm_affine(nn.ReLU(), 4)
    with pytest.raises(TypeError, match="BatchNorm module or a"):
        norm_affine("bn1", 4)
    with pytest.raises(ValueError, match="not finite"):
        norm_affine((torch.tensor([1.0, float("nan")]), torch.zeros(2)), 2)


class Block(nn.Module):
    """conv -> BN -> relu, conv -> BN -> (+ shortcut) -> relu, then a head."""

    def __init__(self, c: int = 8):
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn1 = _trained_bn(c, seed=1)
        self.conv2 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn2 = _trained_bn(c, seed=2)
        self.conv3 = nn.Conv2d(c, c, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(c, track_running_stats=False)
        self.fc = nn.Linear(c, 4)

    def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x)))
        y = F.relu(self.bn2(self.conv2(y)) + x)
        y = F.relu(self.bn3(self.conv3(y)))
        return self.fc(y.mean((2, 3)))


def test_detection_sees_through_one_batchnorm():
    model = Block().eval()
    names = ["conv1", "conv2", "conv3", "fc"]
    assert detect_activations(model, names) == {"conv1": "relu", "conv2": "identity",
                                                "conv3": "identity", "fc": "identity"}
    norms = detect_norms(model, names)
    assert norms == {"conv1": model.bn1, "conv2": model.bn2}  # bn3 has no running stats


def test_untraceable_model_detects_no_norms():
    class Branchy(Block):
        def forward(self, x):
            if x.sum() > 0:  # data-dependent control flow: fx cannot trace it
                x = x * 1.0
            return super().forward(x)

    assert detect_norms(Branchy().eval(), ["conv1"]) == {}


def test_uniform_positive_norm_changes_nothing():
    # relu(s z) = s relu(z): a uniform positive scale leaves the problem unchanged.
    torch.manual_seed(0)
    dense = nn.Linear(20, 12)
    x = torch.randn(512, 20)
    plain = nonlinear_(LowRankLinear(20, 12, 3), dense.weight, dense.bias, inputs=x)
    scaled = nonlinear_(LowRankLinear(20, 12, 3), dense.weight, dense.bias, inputs=x,
                        post_norm=(torch.full((12,), 2.5), torch.zeros(12)))
    torch.testing.assert_close(scaled.dense_weight(), plain.dense_weight(), rtol=1e-3,
                               atol=1e-4)
    torch.testing.assert_close(scaled.bias, plain.bias, rtol=1e-3, atol=1e-4)


def test_full_rank_with_norm_is_exact():
    torch.manual_seed(0)
    dense = nn.Conv2d(3, 5, 3, bias=False)
    bn = _trained_bn(5)
    x = torch.randn(16, 3, 8, 8)
    layer = nonlinear_(LowRankConv2d(3, 5, 3, rank=5, bias=False), dense.weight, inputs=x,
                       post_norm=bn)
    torch.testing.assert_close(layer(x), dense(x), rtol=1e-4, atol=1e-4)


def _objective(layer, dense, bn, x):
    with torch.no_grad():
        return float((F.relu(bn(layer(x))) - F.relu(bn(dense(x)))).square().mean())


@pytest.mark.parametrize("mode", ["data", "gaussian"])
def test_fitting_through_the_norm_lowers_the_true_objective(mode):
    torch.manual_seed(0)
    dense = nn.Linear(32, 16, bias=False)
    bn = _trained_bn(16, seed=3, dim=1)
    x = torch.randn(2048, 32)
    inputs = x if mode == "data" else None
    with_norm = nonlinear_(LowRankLinear(32, 16, 4, bias=False), dense.weight,
                           inputs=inputs, post_norm=bn)
    without = nonlinear_(LowRankLinear(32, 16, 4, bias=False), dense.weight, inputs=inputs)
    assert _objective(with_norm, dense, bn, x) < 0.9 * _objective(without, dense, bn, x)


def test_sequential_compression_folds_the_norms():
    torch.manual_seed(0)
    model = Block().eval()
    x = torch.randn(64, 8, 6, 6)
    ref = model(x).detach()
    errs = {}
    for fold in (True, False):
        m = Block().eval()
        m.load_state_dict(model.state_dict())
        seen = {}

        def build(dense, inputs, activation, post_norm=None, _seen=seen):
            _seen[id(dense)] = post_norm
            return LowRankConv2d.from_dense(dense, 3, init="nonlinear", inputs=inputs,
                                            activation=activation, post_norm=post_norm)

        compress_sequential(m, [("conv1", build), ("conv2", build)], x, fold_norms=fold)
        with torch.no_grad():
            errs[fold] = float((m(x) - ref).square().mean())
        assert len(seen) == 2 and all((n is not None) == fold for n in seen.values())
    assert errs[True] < errs[False]
