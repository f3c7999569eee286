"""Compress a causal language model by rank in one call, with any of the published
methods or compactnn's own, and fine-tune the factors afterwards.

Budgets follow the LLM compression papers: ``removed`` is the fraction of the linear
layers' parameters removed (embeddings and a tied output head are left alone and not
counted), every compressed layer keeping the same fraction of its own parameters
(rank ``floor(q m n / (m + n))``). When every linear layer is compressed,
``q = 1 - removed``; when some are kept dense (``keep_attention_dense``, or
``include``/``exclude``), the others take the whole budget (``budget_over="linear"``,
the default) or only their own share of it (``"selected"``).
"""

from __future__ import annotations

import math
import re
import warnings
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from compactnn._checks import check_bool, check_choice, check_float, check_int, check_module
from compactnn._modules import training_mode
from compactnn.lowrank import LowRankLayer
from compactnn.surgery import factorize
from compactnn.surgery.report import FactorizeReport

__all__ = ["METHODS", "Method", "attention_layers", "compress_lm", "finetune_factors"]


@dataclass(frozen=True)
class Method:
    """A compression method: the initializer ``factorize`` uses, its options, and
    whether it reads calibration data."""

    init: str
    options: tuple[tuple[str, Any], ...] = ()
    data_aware: bool = True
    about: str = ""


#: The methods by name. ``svd`` is weight-only; the others fit each layer to the
#: calibration tokens that reach it.
METHODS: dict[str, Method] = {
    "svd": Method("spectral", data_aware=False, about="plain truncated SVD of each weight"),
    "asvd": Method("asvd", (("alpha", 0.5),),
                   about="ASVD: SVD of W diag(mean|x|^0.5), alpha 0.5"),
    "svd_llm": Method("whitened", about="SVD-LLM: truncation of W L, L the Cholesky factor "
                                        "of the token Gram matrix"),
    "svd_llm_refit": Method("whitened", (("refit", "u"),),
                            about="SVD-LLM whitening, then U refitted by least squares to "
                                  "the dense model's outputs"),

    "lstsq": Method("lstsq", about="least-squares factors of the layer's output (compactnn)"),
    "nonlinear": Method("nonlinear", (("gated_steps", 25),),
                        about="function matching (compactnn): each layer's output, and the "
                              "SwiGLU block's output through its gate (25 Adam steps)"),
}


def attention_layers(model: nn.Module) -> list[str]:
    """Names of the linear layers inside the model's attention modules (those whose
    class name contains ``Attention``: ``LlamaAttention``, ``GPT2Attention``,
    ``BertAttention``, ``T5Attention``, ...): the query, key, value and output
    projections."""
    from compactnn.lowrank.dense import is_factorizable

    check_module("model", model)
    found: list[str] = []
    for name, mod in model.named_modules():
        if "Attention" in type(mod).__name__ and not isinstance(mod, nn.MultiheadAttention):
            found += [f"{name}.{sub}" if name else sub for sub, m in mod.named_modules()
                      if sub and is_factorizable(m)]
    return list(dict.fromkeys(found))


def compress_lm(model: nn.Module, method: str, removed: float, calibration: Tensor | None = None,
                *, sequential: bool = True, include: Any = None, exclude: Any = None,
                keep_attention_dense: bool = False, budget_over: str = "linear",
                progress: bool = False, **options: Any) -> tuple[nn.Module, FactorizeReport]:
    """A copy of ``model`` with ``removed`` of its selected linear layers' parameters
    removed by ``method`` (a name of :data:`METHODS`), and the factorize report.

    Args:
        model: a Hugging Face causal LM (or any model :func:`compactnn.factorize` takes).
        removed: the fraction of parameters removed, in (0, 1).
        calibration: ``(n, seq_len)`` token ids for the data-aware methods (ignored, with
            an error, by ``svd``).
        sequential: calibrate each layer on the already-compressed model's activations
            (default) or on the dense model's.
        include, exclude: name patterns of the layers to compress (default: every linear
            layer; a tied output head stays dense).
        keep_attention_dense: leave the attention projections (:func:`attention_layers`)
            dense; the other layers then take the budget. Small projections (the
            grouped-query key/value ones) are often not faster when factorized at a
            mild budget, so this can make the compressed model faster at a cost in
            quality (docs/transformers.md).
        budget_over: ``"linear"``: ``removed`` is a fraction of all linear layers,
            those kept dense included; ``"selected"``: of the compressed layers only.
        options: passed to the initializer, over the method's own.
    """
    check_module("model", model)
    check_choice("method", method, tuple(METHODS))
    check_float("removed", removed, 0.0, 1.0, min_inclusive=False, max_inclusive=False)
    check_bool("sequential", sequential)
    check_bool("keep_attention_dense", keep_attention_dense)
    check_choice("budget_over", budget_over, ("linear", "selected"))
    if keep_attention_dense:
        from compactnn.surgery.select import layer_fates

        layer_fates(model, include, exclude)  # the user's patterns checked as given
        attention = attention_layers(model)
        if not attention:
            raise ValueError("keep_attention_dense=True, but the model has no attention "
                             "module (no module class named *Attention*) with linear layers")
        if isinstance(exclude, str):  # a regex: keep it one, full-matched like the names
            exclude = "|".join([f"(?:{exclude})", *map(re.escape, attention)])
        else:
            exclude = [*(exclude or []), *attention]
    spec = METHODS[method]
    if spec.data_aware:
        if not isinstance(calibration, Tensor) or calibration.dim() != 2 or \
                calibration.dtype != torch.long or calibration.numel() == 0:
            got = (f"{tuple(calibration.shape)} {calibration.dtype}"
                   if isinstance(calibration, Tensor) else type(calibration).__name__)
            raise ValueError(f"method={method!r} needs calibration token ids of shape "
                             f"(n, seq_len) and dtype int64, got {got}")
        _check_token_range("calibration", calibration, model)
        batches: Any = list(calibration.split(4))
    elif calibration is not None:
        raise ValueError(f"method={method!r} uses no calibration data; pass calibration=None")
    else:
        batches = None
    kwargs = {**dict(spec.options), **options}
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="budget met only")
        return factorize(model, param_ratio=1.0 - removed, budget_over=budget_over,
                         allocation="layerwise", init=spec.init, calibration=batches,
                         sequential=sequential, include=include, exclude=exclude,
                         progress=progress, **kwargs)


_ID_DTYPES = (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8)


def _check_token_range(name: str, ids: Tensor, model: nn.Module) -> None:
    """Token ids outside the model's vocabulary fail deep inside the embedding
    lookup; name them here."""
    try:
        emb = model.get_input_embeddings()
    except (AttributeError, NotImplementedError):  # not a Hugging Face model: no vocabulary known
        emb = None
    vocab = getattr(emb, "num_embeddings", None)
    if not isinstance(vocab, int) or ids.numel() == 0:
        return
    lo, hi = int(ids.min()), int(ids.max())
    if lo < 0 or hi >= vocab:
        raise ValueError(f"{name} holds token ids in [{lo}, {hi}], outside the model's "
                         f"vocabulary [0, {vocab - 1}]")


def finetune_factors(model: nn.Module, ids: Tensor, *, steps: int, seq_len: int = 256,
                     batch_size: int = 4, lr: float = 1e-4, seed: int = 0) -> list[float]:
    """Train only the low-rank factors of ``model`` (every other parameter frozen, no
    adapters) by AdamW on next-token loss over random windows of ``ids``; returns the
    loss of each step. Every module's train/eval mode and every ``requires_grad`` flag
    is restored afterwards. A non-finite loss is a ``FloatingPointError``; on any
    error (an interrupt included) the factors are put back as they were (a copy of
    them is held meanwhile)."""
    check_module("model", model)
    check_int("steps", steps, 1)
    check_int("seq_len", seq_len, 2)
    check_int("batch_size", batch_size, 1)
    check_float("lr", lr, 0.0, math.inf, min_inclusive=False)
    check_int("seed", seed)
    if not isinstance(ids, Tensor) or ids.dim() != 1 or ids.numel() <= seq_len or \
            ids.dtype not in _ID_DTYPES:
        got = (f"{tuple(ids.shape)} {ids.dtype}" if isinstance(ids, Tensor)
               else type(ids).__name__)
        raise ValueError(f"ids must be a 1-D integer token tensor longer than "
                         f"seq_len={seq_len}, got {got}")
    _check_token_range("ids", ids, model)
    factors = list({id(p): p for m in model.modules() if isinstance(m, LowRankLayer)
                    for p in (m.U, m.V)}.values())  # a tied factor pair once
    if not factors:
        raise ValueError(f"{type(model).__name__} has no low-rank layer to fine-tune")
    flags = {p: p.requires_grad for p in model.parameters()}
    ids_f = {id(p) for p in factors}
    kept = [p.detach().clone() for p in factors]  # put back if the call fails
    for p in model.parameters():
        p.requires_grad_(id(p) in ids_f)
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(factors, lr=lr, weight_decay=0.0)
    losses: list[float] = []
    try:
        with training_mode(model, True):
            for step in range(steps):
                starts = torch.randint(0, ids.numel() - seq_len, (batch_size,), generator=gen)
                x = torch.stack([ids[s:s + seq_len + 1] for s in starts.tolist()])
                out = model(x[:, :-1])
                logits = out.logits if hasattr(out, "logits") else out
                loss = nn.functional.cross_entropy(
                    logits.reshape(-1, logits.shape[-1]).float(), x[:, 1:].reshape(-1))
                if not torch.isfinite(loss):
                    raise FloatingPointError(f"the loss is {float(loss.detach())} at step {step} "
                                             f"(lr={lr}); the factors are left as they were")
                opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(factors, 1.0)
                opt.step()
                losses.append(float(loss.detach()))
            if not all(bool(torch.isfinite(p).all()) for p in factors):
                raise FloatingPointError(f"the factors are not finite after {steps} steps "
                                         f"(lr={lr}); they are left as they were")
    except BaseException:
        with torch.no_grad():
            for p, k in zip(factors, kept, strict=True):
                p.copy_(k)
        raise
    finally:
        for p, flag in flags.items():
            p.requires_grad_(flag)
    return losses
