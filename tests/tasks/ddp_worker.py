"""Run by tests under torchrun: train, then save this rank's final weights."""

import sys

import safetensors.torch as st

from compactnn.config import build_config, parse_overrides
from compactnn.tasks.classify import TrainConfig, train

if __name__ == "__main__":
    out_file, overrides = sys.argv[1], sys.argv[2:]
    cfg = build_config(TrainConfig, parse_overrides(overrides))
    result = train(cfg)
    import torch.distributed as dist

    rank = dist.get_rank() if dist.is_initialized() else 0
    st.save_file({k: v.contiguous() for k, v in result.model.state_dict().items()},
                 f"{out_file}.rank{rank}")
