"""The factorize report lists every candidate layer with its fate, and a bare name
that matches at several depths warns (the torchvision resnet18 trap: exclude=["conv1"]
also excludes every layerX.Y.conv1)."""

import warnings

import pytest
import torch
from torch import nn

from compactnn import factorize


class Block(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, 3, padding=1)
        self.conv2 = nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x):
        return x + self.conv2(torch.relu(self.conv1(x)))


class Net(nn.Module):
    """resnet18's naming: a stem conv1, blocks with their own conv1, a head fc."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1)
        self.layer1 = nn.Sequential(Block(16), Block(16))
        self.up = nn.ConvTranspose2d(16, 16, 2)
        self.attn = nn.MultiheadAttention(16, 2)
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        h = self.layer1(self.conv1(x))
        return self.fc(h.mean((2, 3)))


def test_a_bare_name_matching_several_depths_warns_and_every_fate_is_reported():
    with pytest.warns(UserWarning, match=r"exclude pattern 'conv1' matched modules at 2 "
                                         r"depths \(conv1, layer1\.0\.conv1"):
        _, report = factorize(Net(), rank=4, exclude=["conv1"])
    fate = {r.name: (r.rank, r.note) for r in report.layers}
    for name in ("conv1", "layer1.0.conv1", "layer1.1.conv1"):
        assert fate[name] == (None, "excluded by pattern 'conv1'")
    assert fate["layer1.0.conv2"][0] == 4 and fate["fc"][0] == 4
    assert fate["up"] == (None, "unsupported type ConvTranspose2d: kept dense")
    assert fate["attn.out_proj"][1].startswith("inside nn.MultiheadAttention")
    # one row per layer, in module order, and the markdown holds every fate
    names = [r.name for r in report.layers]
    assert names == ["conv1", "layer1.0.conv1", "layer1.0.conv2", "layer1.1.conv1",
                     "layer1.1.conv2", "up", "attn.out_proj", "fc"]
    assert "excluded by pattern 'conv1'" in report.to_markdown()


def test_a_dotted_name_or_a_regex_does_not_warn():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _, report = factorize(Net(), rank=4, exclude=["layer1.0.conv1"])
        factorize(Net(), rank=4, exclude=r"conv1")
    fate = {r.name: r.rank for r in report.layers}
    assert fate["layer1.0.conv1"] is None and fate["conv1"] == 4
