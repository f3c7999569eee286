"""Run by tests under torchrun: multi-task training, then save this rank's final weights."""

import sys

import safetensors.torch as st

from compactnn.config import build_config, parse_overrides
from compactnn.tasks.mtl import MTLConfig, train_mtl

if __name__ == "__main__":
    out_file, overrides = sys.argv[1], sys.argv[2:]
    result = train_mtl(build_config(MTLConfig, parse_overrides(overrides)))
    import torch.distributed as dist

    rank = dist.get_rank() if dist.is_initialized() else 0
    st.save_file({k: v.contiguous() for k, v in result.model.state_dict().items()},
                 f"{out_file}.rank{rank}")
