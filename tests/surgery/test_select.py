"""Layer selection by name patterns, and the first/last-layer exclusion helper."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from compactnn import LowRankConv2d, count_macs, factorize
from compactnn.models import MLP, RESNET_DENSE_EXCLUDE, MLPConfig, ResNet, ResNetConfig
from compactnn.surgery import dense_first_last_exclude, select_layers


def n_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def nested() -> nn.Module:
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(),
                         nn.Sequential(nn.Linear(8, 8), nn.LayerNorm(8), nn.Linear(8, 2)))


def test_select_by_regex_names_and_exclude():
    m = nested()
    assert select_layers(m) == ["0", "2.0", "2.2"]
    assert select_layers(m, include=r"2\..*") == ["2.0", "2.2"]
    assert select_layers(m, include=["0"]) == ["0", "2.0"]  # suffix match on ".0"
    assert select_layers(m, exclude=["2.2"]) == ["0", "2.0"]
    assert select_layers(m, include=r"2\..*", exclude=r"2\.0") == ["2.2"]


@pytest.mark.parametrize(("kwargs", "exc", "needle"), [
    ({"include": ["nope"]}, ValueError, "'nope'"),
    ({"exclude": "x.*"}, ValueError, "'x.*'"),
    ({"include": ["2.1"]}, TypeError, "LayerNorm"),
    ({"include": [1]}, TypeError, "include must be"),
    ({"exclude": b"0"}, TypeError, "exclude must be"),
    ({"include": "("}, ValueError, "not a valid regex"),
])
def test_bad_patterns_are_named(kwargs, exc, needle):
    with pytest.raises(exc) as info:
        select_layers(nested(), **kwargs)
    assert needle in str(info.value)


def test_empty_selection_warns():
    with pytest.warns(UserWarning, match="include/exclude leave no"):
        assert select_layers(nested(), exclude=r".*") == []
    with pytest.warns(UserWarning, match="has no nn.Linear"):
        assert select_layers(nn.Sequential(nn.ReLU())) == []
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert select_layers(nn.Sequential(nn.ReLU()), warn=False) == []


def test_select_refuses_a_non_module():
    with pytest.raises(TypeError, match="model must be a Module"):
        select_layers("model")


def test_dense_first_last_exclude():
    assert dense_first_last_exclude(ResNet()) == ["stem", "fc"] == list(RESNET_DENSE_EXCLUDE)
    assert dense_first_last_exclude(MLP(MLPConfig(in_features=8, hidden=(4, 4)))) == [
        "layers.0", "head"]
    assert dense_first_last_exclude(nn.Sequential(nn.Linear(2, 2))) == ["0"]
    with pytest.raises(ValueError):
        dense_first_last_exclude(nn.Sequential(nn.ReLU()))


@pytest.mark.parametrize("shortcut", ["A", "B"])
def test_factorize_keeps_stem_and_fc_dense(shortcut):
    torch.manual_seed(0)
    m = ResNet(ResNetConfig(shortcut=shortcut)).eval()
    x = torch.randn(1, 1, 28, 28)
    f, rep = factorize(m, param_ratio=0.1, exclude=dense_first_last_exclude(m),
                       example_inputs=x)
    assert type(f.stem) is nn.Conv2d and type(f.fc) is nn.Linear
    assert torch.equal(f.stem.weight, m.stem.weight)
    assert all(isinstance(blk.conv1, LowRankConv2d) and isinstance(blk.conv2, LowRankConv2d)
               for stage in (f.layer1, f.layer2, f.layer3) for blk in stage)
    assert 0.098 <= rep.param_ratio <= 0.1
    assert n_params(f) == rep.params_after
    assert f.eval()(x).shape == (1, 10)
    # the report's MACs are what the two models really compute
    assert (count_macs(m, x), count_macs(f, x)) == (rep.macs_before, rep.macs_after)
    assert rep.macs_after < 0.2 * rep.macs_before
    f2, _ = factorize(m, param_ratio=0.1, exclude=list(RESNET_DENSE_EXCLUDE))
    assert type(f2.stem) is nn.Conv2d and type(f2.fc) is nn.Linear
