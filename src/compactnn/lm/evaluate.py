"""Perplexity of a causal language model on a token stream."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from compactnn._checks import check_bool, check_int, check_module, check_tensor
from compactnn._modules import training_mode

__all__ = ["perplexity", "perplexity_windows"]


def perplexity_windows(n_tokens: int, seq_len: int, stride: int) -> list[tuple[int, int, int]]:
    """The windows :func:`perplexity` runs, as ``(begin, end, first_scored)``: the model
    sees ``ids[begin:end]`` and is scored on predicting tokens ``first_scored .. end-1``.

    Windows start every ``stride`` tokens and no token is scored twice. With
    ``stride == seq_len`` they do not overlap and the first token of each window is
    context only (not scored); with a smaller stride every token but the first of the
    stream is scored, each with at least ``seq_len - stride`` tokens of context (except
    in the first window).
    """
    n_tokens = check_int("n_tokens", n_tokens, minimum=2)
    seq_len = check_int("seq_len", seq_len, minimum=2)
    stride = check_int("stride", stride, minimum=1, maximum=seq_len)
    out, scored_to, begin = [], 1, 0
    while scored_to < n_tokens:
        end = min(begin + seq_len, n_tokens)
        first = max(scored_to, begin + 1)
        if first < end:
            out.append((begin, end, first))
            scored_to = end
        begin += stride
    return out


def _logits(out) -> Tensor:
    if isinstance(out, Tensor):
        return out
    logits = getattr(out, "logits", None)
    if logits is None and isinstance(out, tuple | list) and out:
        logits = out[0]
    if not isinstance(logits, Tensor):
        raise TypeError("model must return logits: a tensor, an output with .logits, or a "
                        f"tuple whose first item is one; got {type(out).__name__}")
    return logits


def _input_vocab(model: nn.Module) -> int | None:
    get = getattr(model, "get_input_embeddings", None)
    emb = get() if callable(get) else None
    return emb.num_embeddings if isinstance(emb, nn.Embedding) else None


def perplexity(model: nn.Module, ids: Tensor, seq_len: int = 256, stride: int | None = None,
               batch_size: int = 8, max_tokens: int | None = None,
               progress: bool = False) -> float:
    """``exp`` of the mean next-token negative log-likelihood of ``ids`` under ``model``.

    Args:
        model: a causal LM called as ``model(input_ids)`` (``(B, T)`` int64) returning
            logits ``(B, T, V)`` (a Hugging Face ``*ForCausalLM`` or a plain module).
        ids: the 1-D token stream.
        seq_len: the window length (the context the model sees).
        stride: tokens between window starts (default ``seq_len``: non-overlapping
            windows); see :func:`perplexity_windows`.
        batch_size: windows per forward pass.
        max_tokens: use only the first ``max_tokens`` tokens of ``ids``.
        progress: a tqdm bar over the batches.

    The model runs in eval mode under ``torch.inference_mode`` (its training flag is
    restored afterwards); the sum of token losses is accumulated in float64. A model
    whose logits overflow gives ``inf`` or ``nan``, returned as is.
    """
    check_module("model", model)
    ids = check_tensor("ids", ids, ndim=1)
    if ids.is_floating_point() or ids.is_complex() or ids.dtype == torch.bool:
        raise TypeError(f"ids must be an integer tensor, got dtype {ids.dtype}")
    seq_len = check_int("seq_len", seq_len, minimum=2)
    stride = seq_len if stride is None else check_int("stride", stride, minimum=1,
                                                      maximum=seq_len)
    batch_size = check_int("batch_size", batch_size, minimum=1)
    if max_tokens is not None:
        max_tokens = check_int("max_tokens", max_tokens, minimum=2)
        ids = ids[:max_tokens]
    check_bool("progress", progress)
    if ids.numel() < 2:
        raise ValueError(f"ids must hold at least 2 tokens, got {ids.numel()}")
    if bool((ids < 0).any()):
        raise ValueError("ids must be non-negative token ids")
    vocab = _input_vocab(model)
    if vocab is not None and int(ids.max()) >= vocab:
        raise ValueError(f"ids holds token id {int(ids.max())}, outside the model's "
                         f"vocabulary of {vocab}")
    param = next(iter(model.parameters()), None)
    device = param.device if param is not None else torch.device("cpu")
    ids = ids.long().to(device)
    windows = perplexity_windows(ids.numel(), seq_len, stride)
    # batches of consecutive windows of one length (only the last window can be shorter)
    batches: list[list[tuple[int, int, int]]] = []
    for w in windows:
        if batches and len(batches[-1]) < batch_size and \
                batches[-1][0][1] - batches[-1][0][0] == w[1] - w[0]:
            batches[-1].append(w)
        else:
            batches.append([w])
    bar = batches
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(batches, desc="perplexity", unit="batch")
    total, count = 0.0, 0
    with training_mode(model, False), torch.inference_mode():
        for batch in bar:
            x = torch.stack([ids[b:e] for b, e, _ in batch])
            logits = _logits(model(x))
            if logits.shape[:2] != x.shape or logits.ndim != 3:
                raise ValueError(f"model returned logits of shape {tuple(logits.shape)} "
                                 f"for input of shape {tuple(x.shape)}; expected "
                                 f"({x.shape[0]}, {x.shape[1]}, vocab)")
            if int(x.max()) >= logits.shape[-1]:
                raise ValueError(f"ids holds token id {int(x.max())}, outside the "
                                 f"model's vocabulary of {logits.shape[-1]}")
            # (rows, vocab) layout: softmax along contiguous memory, not a strided dim
            nll = nn.functional.cross_entropy(
                logits[:, :-1].reshape(-1, logits.shape[-1]).float(),
                x[:, 1:].reshape(-1), reduction="none").reshape(x.shape[0], -1)
            for row, (b, _, first) in enumerate(batch):
                total += float(nll[row, first - b - 1:].double().sum())
                count += x.shape[1] - (first - b)
    mean = total / count
    try:
        return math.exp(mean)
    except OverflowError:
        return math.inf
