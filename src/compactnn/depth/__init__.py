"""Compact by depth: learnable block scales, the two TRSP penalties, and
removing whole blocks (``prune_layers``) [TRSP].

See ``docs/depth_features.md`` for the method and the choices made where the
paper leaves them open.
"""

from compactnn.depth.blocks import RemovedBlock, block_kind, removal_path, select_blocks
from compactnn.depth.hf import (
    block_influence,
    consecutive_angular_distance,
    decoder_layers,
    layer_io_statistics,
    remove_decoder_layers,
)
from compactnn.depth.prune import (
    METADATA_KEY,
    LayerPruneReport,
    io_similarity_scores,
    prune_layers,
    removed_from_metadata,
)
from compactnn.depth.scales import LayerScales, attached_scales

__all__ = [
    "METADATA_KEY",
    "LayerPruneReport",
    "LayerScales",
    "RemovedBlock",
    "attached_scales",
    "block_influence",
    "block_kind",
    "consecutive_angular_distance",
    "decoder_layers",
    "io_similarity_scores",
    "layer_io_statistics",
    "prune_layers",
    "removal_path",
    "remove_decoder_layers",
    "removed_from_metadata",
    "select_blocks",
]
