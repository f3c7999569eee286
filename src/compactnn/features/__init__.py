"""Compact by inputs: feature selection by input-neuron pruning and regrowth
with relative change scores [RelChaNet]. See ``docs/depth_features.md``."""

from compactnn.features.relchanet import RelChaNet

__all__ = ["RelChaNet"]
