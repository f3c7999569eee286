"""prune_layers' report text and its refusal of attached scales, exactly."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from compactnn.depth import LayerScales, prune_layers
from compactnn.depth.hf import decoder_layers
from compactnn.depth.prune import LayerPruneReport
from compactnn.models import ResNet, ResNetConfig


def test_report_lists_each_removed_block_with_its_kind_and_score() -> None:
    report = LayerPruneReport(removed=["a", "b", "c"], kept=["d"],
                              scores={"a": 0.012345, "c": 2.0}, kinds={"a": "plain", "b": "branch"},
                              params_before=12000, params_after=9000)
    assert str(report) == ("removed 3 of 4 blocks; params 12,000 -> 9,000 (x0.750)\n"
                           "  - a (plain) score=0.01235\n"
                           "  - b (branch)\n"
                           "  - c (?) score=2")


def test_attached_scales_are_refused_with_the_fix() -> None:
    torch.manual_seed(0)
    model = ResNet(ResNetConfig(depth=8, widths=(4, 4, 4)))
    clean = copy.deepcopy(model)
    scales = LayerScales(model)  # still attached to model, scoring the clean copy
    with pytest.raises(ValueError, match=r"^these LayerScales are still attached; call "
                       r"remove\(fold=True\) first$"):
        prune_layers(clean, 1, scores=scales)


def test_decoder_layers_may_be_called_blocks() -> None:
    from types import SimpleNamespace

    model = nn.Module()
    model.config = SimpleNamespace(num_hidden_layers=2)
    model.blocks = nn.ModuleList([nn.Linear(2, 2), nn.Linear(2, 2)])
    assert decoder_layers(model) == ("blocks", model.blocks)


def test_score_maps_are_checked_by_name() -> None:
    torch.manual_seed(0)
    model = ResNet(ResNetConfig(depth=8, widths=(4, 4, 4)))
    with pytest.raises(TypeError, match=r"^scores keys must be module names, got 1$"):
        prune_layers(model, 1, scores={1: 0.5})
    with pytest.raises(TypeError, match=r"^scores\['layer1\.0'\] must be a number, got 'x'$"):
        prune_layers(model, 1, scores={"layer1.0": "x"})
    with pytest.raises(TypeError, match=r"^scores\['layer1\.0'\] must be a number, got True$"):
        prune_layers(model, 1, scores={"layer1.0": True})
    with pytest.raises(ValueError, match=r"^scores is empty$"):
        prune_layers(model, 1, scores={})


def test_prune_layers_argument_errors() -> None:
    torch.manual_seed(0)
    model = ResNet(ResNetConfig(depth=8, widths=(4, 4, 4)))
    with pytest.raises(TypeError, match=r"^inplace must be a bool, got 1 \(int\)$"):
        prune_layers(model, 1, inplace=1)
    for extra in ({"ratio": 0.5}, {"num_layers": 1}, {"scores": {"layer1.0": 1.0}}):
        with pytest.raises(ValueError, match=r"^names= chooses the blocks itself; do not also "
                           r"pass scores, num_layers or ratio$"):
            prune_layers(model, names=["layer1.0"], **extra)
    with pytest.raises(ValueError, match=r"^names \['layer1\.0'\] are outside the "
                       r"include/exclude selection$"):
        prune_layers(model, names=["layer1.0"], include=["layer2.0"], exclude=["layer1.0"])
    # include and exclude both apply to names=
    _, report = prune_layers(model, names=["layer2.0"], include=["layer2.0", "layer3.0"],
                             exclude=["layer3.0"])
    assert report.removed == ["layer2.0"] and report.kept == []
    LayerScales(model)
    with pytest.raises(ValueError, match=r"^model carries attached LayerScales; call "
                       r"scales\.remove\(fold=True\) before prune_layers$"):
        prune_layers(model, 1)


def test_prune_layers_needs_names_or_scores() -> None:
    model = ResNet(ResNetConfig(depth=8, widths=(4, 4, 4)))
    with pytest.raises(ValueError, match=r"^give names= \(the blocks to remove\) or scores= "
                       r"\(a score per block; the smallest are removed\)$"):
        prune_layers(model, 1)


def test_scores_are_restricted_to_the_include_exclude_selection() -> None:
    torch.manual_seed(0)
    model = ResNet(ResNetConfig(depth=8, widths=(4, 4, 4)))
    scores = {"layer1.0": 0.1, "layer2.0": 0.2, "layer3.0": 0.3}
    _, report = prune_layers(model, 1, scores=scores, exclude=["layer1.0"])
    assert report.removed == ["layer2.0"] and report.kept == ["layer3.0"]
    assert report.scores == {"layer2.0": 0.2, "layer3.0": 0.3}
    _, report = prune_layers(model, 1, scores=scores, include=["layer3.0"])
    assert report.removed == ["layer3.0"] and report.kept == []
    with pytest.raises(ValueError, match=r"^no scored block is inside the include/exclude "
                       r"selection$"):
        prune_layers(model, 1, scores={"layer1.0": 0.1}, include=["layer3.0"])
