"""Tests of the CIFAR-style ResNet: shapes, parameter counts, names, init, and
factorization with the first and last layers kept dense."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from compactnn.models.resnet import (
    ResNet,
    ResNetConfig,
)


def n_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


@pytest.mark.parametrize("depth, shortcut", [(8, "A"), (8, "B"), (32, "A")])
def test_output_shapes(depth, shortcut):
    m = ResNet(ResNetConfig(depth=depth, shortcut=shortcut)).eval()
    with torch.no_grad():
        assert m(torch.randn(2, 1, 28, 28)).shape == (2, 10)
    m3 = ResNet(ResNetConfig(depth=8, in_channels=3, num_classes=100, shortcut=shortcut))
    with torch.no_grad():
        assert m3.eval()(torch.randn(1, 3, 32, 32)).shape == (1, 100)
    blocks = [k for k in dict(m.named_modules()) if k.count(".") == 1 and k.startswith("layer")]
    assert len(blocks) == 3 * (depth - 2) // 6


def test_stage_resolutions_on_28x28():
    m = ResNet().eval()
    seen = {}
    for name in ("stem", "layer1", "layer2", "layer3"):
        m.get_submodule(name).register_forward_hook(
            lambda mod, a, out, name=name: seen.__setitem__(name, tuple(out.shape[1:])))
    m(torch.randn(2, 1, 28, 28))
    assert seen == {"stem": (16, 28, 28), "layer1": (16, 28, 28), "layer2": (32, 14, 14),
                    "layer3": (64, 7, 7)}


def test_parameter_counts():
    # ResNet-20 is "0.27M" on CIFAR (He et al. 2016, Table 6)
    assert n_params(ResNet(ResNetConfig(in_channels=3))) == 269_722
    assert n_params(ResNet()) == 269_434  # 1 channel: 16*9*2 fewer stem weights
    assert n_params(ResNet(ResNetConfig(in_channels=3, shortcut="B"))) == 272_474
    assert n_params(ResNet(ResNetConfig(shortcut="B"))) == 272_186
    assert n_params(ResNet(ResNetConfig(depth=56, in_channels=3))) == pytest.approx(0.85e6,
                                                                                     rel=0.01)


def test_module_names_and_one_relu_per_use():
    m = ResNet()
    names = dict(m.named_modules())
    assert isinstance(names["stem"], nn.Conv2d) and isinstance(names["fc"], nn.Linear)
    convs = [n for n, mod in m.named_modules() if isinstance(mod, nn.Conv2d | nn.Linear)]
    assert convs[0] == "stem" and convs[-1] == "fc"
    assert "layer2.0.conv1" in names and "layer3.2.relu2" in names
    calls: dict[str, int] = {}
    relus = [(n, r) for n, r in m.named_modules() if isinstance(r, nn.ReLU)]
    assert len(relus) == 1 + 2 * 9
    for n, r in relus:
        r.register_forward_hook(lambda *a, n=n: calls.__setitem__(n, calls.get(n, 0) + 1))
    m(torch.randn(1, 1, 28, 28))
    assert calls == {n: 1 for n, _ in relus}
    assert all(mod.bias is None for mod in m.modules() if isinstance(mod, nn.Conv2d))
    proj = ResNet(ResNetConfig(shortcut="B"))
    assert isinstance(proj.get_submodule("layer2.0.shortcut.conv"), nn.Conv2d)
    assert proj.get_submodule("layer2.0.shortcut.conv").stride == (2, 2)


def test_deterministic_kaiming_init():
    torch.manual_seed(0)
    a = ResNet()
    torch.manual_seed(0)
    b = ResNet()
    torch.manual_seed(1)
    c = ResNet()
    for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(va, vb), k
    assert not torch.equal(a.layer1[0].conv1.weight, c.layer1[0].conv1.weight)
    w = ResNet(ResNetConfig(widths=(64, 128, 256))).layer3[1].conv2.weight
    assert float(w.detach().std()) == pytest.approx(math.sqrt(2 / (256 * 9)), rel=0.05)  # fan_out
    assert torch.equal(a.layer1[0].bn2.weight, torch.ones(16))
    z = ResNet(ResNetConfig(zero_init_residual=True))
    assert all(not blk.bn2.weight.detach().any() for blk in z.layer2)


@pytest.mark.parametrize("kwargs", [{"depth": 21}, {"depth": 2}, {"shortcut": "C"},
                                    {"widths": (16, 32)}, {"widths": (32, 16, 64)},
                                    {"in_channels": 0}, {"num_classes": 0}])
def test_bad_config(kwargs):
    with pytest.raises(ValueError):
        ResNet(ResNetConfig(**kwargs))


def test_trains_one_step():
    torch.manual_seed(0)
    m = ResNet(ResNetConfig(depth=8))
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    x, y = torch.randn(4, 1, 28, 28), torch.randint(0, 10, (4,))
    loss = nn.functional.cross_entropy(m(x), y)
    loss.backward()
    assert all(p.grad is not None for p in m.parameters())
    opt.step()
    with torch.no_grad():
        assert float(nn.functional.cross_entropy(m(x), y)) < float(loss.detach())
