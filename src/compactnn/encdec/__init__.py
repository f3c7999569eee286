"""Encoder-decoder layer fusion: each decoder layer reads a learned combination of all
encoder layers' outputs instead of the last one only (see docs/transformers.md)."""

from .fusion import FUSION_INITS, LayerFusion
from .hf import EncoderLayerFusion, fuse_encoder_layers
from .transformer import FusedTransformer

__all__ = ["FUSION_INITS", "EncoderLayerFusion", "FusedTransformer", "LayerFusion",
           "fuse_encoder_layers"]
