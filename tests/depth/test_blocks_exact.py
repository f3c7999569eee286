"""Which layers keep their input's shape, checked exhaustively against running them on
two sizes (a grid of kernels, strides, paddings, dilations and output paddings, string
paddings, 2-D layers), and select_blocks' order and error texts."""

from __future__ import annotations

import itertools
import re

import pytest
import torch
from torch import nn

from compactnn.depth.blocks import select_blocks, shape_change


def _keeps(m: nn.Module, x_of) -> bool | None:
    try:
        return all(m(x_of(n)).shape == x_of(n).shape for n in (11, 17))
    except RuntimeError:
        return None  # a configuration PyTorch itself cannot run


def _layers():
    for k, s, d in itertools.product((1, 2, 3, 4), (1, 2), (1, 2, 3)):
        for p in range(0, 5):
            yield nn.Conv1d(2, 2, k, stride=s, padding=p, dilation=d)
            if p <= d * (k - 1):
                for op in range(max(s, d)):
                    yield nn.ConvTranspose1d(2, 2, k, stride=s, padding=p, dilation=d,
                                             output_padding=op)
            if 2 * p <= k:
                yield nn.MaxPool1d(k, stride=s, padding=p, dilation=d)
                if d == 1:
                    yield nn.AvgPool1d(k, stride=s, padding=p)
        for pad in ("same", "valid"):
            if pad == "valid" or s == 1:
                yield nn.Conv1d(2, 2, k, stride=s, padding=pad, dilation=d)


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel")
def test_shape_change_is_none_exactly_for_layers_that_keep_the_size() -> None:
    checked = 0
    for m in _layers():
        keeps = _keeps(m, lambda n: torch.randn(1, 2, n))
        if keeps is None:
            continue
        checked += 1
        assert (shape_change(m) is None) == keeps, m
    assert checked > 300


@pytest.mark.parametrize("m", [
    nn.Conv2d(2, 2, (1, 3), padding=(0, 1)), nn.Conv2d(2, 2, (3, 1), padding=(1, 1)),
    nn.Conv2d(2, 2, 3, padding="same", dilation=(1, 2)), nn.Conv2d(2, 2, 1, padding="valid"),
    nn.Conv2d(2, 2, 3, padding="valid"), nn.MaxPool2d(3, stride=1, padding=1),
    nn.AvgPool2d(3, stride=1, padding=1), nn.AvgPool2d((1, 3), stride=1, padding=(0, 1)),
    nn.ConvTranspose2d(2, 2, 2, stride=1, padding=2, dilation=3, output_padding=1),
])
def test_two_dimensional_layers(m: nn.Module) -> None:
    keeps = _keeps(m, lambda n: torch.randn(1, 2, n, n + 3))
    assert keeps is not None and (shape_change(m) is None) == keeps


def test_sequences_with_pools_and_unknown_layers() -> None:
    assert shape_change(nn.Sequential(nn.MaxPool1d(3, 1, 1), nn.Conv1d(3, 3, 3, padding=1))) \
        is None
    assert shape_change(nn.Sequential(nn.AvgPool1d(3, 1, 1), nn.Conv1d(3, 5, 1))) \
        == "it maps width 3 to 5"  # a pool takes any width: the conv's 3 is the input's
    # an attention layer is not elementwise: the sequence cannot be judged statically
    assert shape_change(nn.Sequential(nn.Linear(4, 8), nn.MultiheadAttention(8, 2))) is None
    assert shape_change(nn.Sequential(nn.Linear(4, 8), nn.ReLU())) == "it maps width 4 to 8"


class _Named(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.zeta = nn.Linear(2, 2)
        self.alpha = nn.Linear(2, 2)
        self.body = nn.Sequential(*[nn.Linear(2, 2) for _ in range(11)])


def test_blocks_come_in_registration_order() -> None:
    m = _Named()
    assert select_blocks(m, ["alpha", "zeta"]) == ["zeta", "alpha"]
    assert select_blocks(m, r"body\.\d+") == [f"body.{i}" for i in range(11)]


def test_selection_errors_say_what_to_do() -> None:
    m = _Named()
    with pytest.raises(ValueError, match="^" + re.escape(
            "model has no ResNet BasicBlock nor HF decoder layers; pass include= patterns "
            "naming the blocks to scale or prune") + "$"):
        select_blocks(m)
    with pytest.raises(ValueError, match=r"^include/exclude left no block to choose$"):
        select_blocks(m, ["zeta"], exclude=["zeta"])
    with pytest.raises(ValueError, match="^" + re.escape(
            "chosen blocks 'body' and 'body.0' are nested; choose one level (e.g. a regex "
            r"that matches whole names such as 'layer\d\.\d+')") + "$"):
        select_blocks(m, ["body", "body.0"])
    with pytest.raises(TypeError, match=r"^exclude must be a regex string or a list of module "
                       r"names, got 3$"):
        select_blocks(m, ["zeta"], exclude=3)
