"""Layer pruning on Hugging Face decoder models (LLaMA, Mistral, Qwen, GPT-2 style).

A decoder layer ``x -> x + attn(...) + mlp(...)`` is a *plain* block for
:class:`~compactnn.depth.LayerScales`: its scale interpolates ``a * f(x) + (1 - a) * x
= x + a * (f(x) - x)``, which is exactly a learnable scale on the layer's residual
branch (everything the layer adds to the residual stream).

Removing a layer of an HF model is more than replacing it by the identity: the key/value
cache is indexed by each attention's ``layer_idx``, and the model loops over
``config.num_hidden_layers`` layers. :func:`remove_decoder_layers` therefore deletes the
layers from their ``nn.ModuleList``, renumbers ``layer_idx`` and shrinks the config
(``num_hidden_layers``, per-layer lists such as ``layer_types``), so the result is an
ordinary, smaller HF model: ``generate`` works, ``save_pretrained`` writes a checkpoint
that ``from_pretrained`` loads. :func:`~compactnn.depth.prune_layers` does this whenever
every removed block is a decoder layer of such a model.

The ranking baselines of layer pruning for LLMs:

* :func:`block_influence` (ShortGPT): ``1 - cos(x_l, y_l)`` per token, averaged, with
  ``x_l``, ``y_l`` the hidden states entering and leaving layer ``l``;
* :func:`consecutive_angular_distance`: for a run of ``n`` consecutive layers starting
  at ``l``, ``arccos(c) / pi`` with ``c`` the mean over tokens of ``cos(x_l, y_{l+n-1})``;
  the run with the smallest distance is removed as a whole.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import Tensor, nn

from compactnn._checks import check_int
from compactnn._modules import unwrap

__all__ = ["block_influence", "consecutive_angular_distance", "decoder_layers",
           "layer_io_statistics", "remove_decoder_layers"]


def decoder_layers(model: nn.Module) -> tuple[str, nn.ModuleList] | None:
    """``(name, layers)`` of an HF model's decoder layer list: the one ``nn.ModuleList``
    of ``config.num_hidden_layers`` modules called ``layers``, ``h`` or ``blocks``;
    None when ``model`` is not such a model."""
    inner = unwrap(model)
    n = getattr(getattr(inner, "config", None), "num_hidden_layers", None)
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        return None
    found = [(name, m) for name, m in inner.named_modules()
             if isinstance(m, nn.ModuleList) and len(m) == n
             and name.rsplit(".", 1)[-1] in ("layers", "h", "blocks")]
    return found[0] if len(found) == 1 else None


def remove_decoder_layers(model: nn.Module, indices: Iterable[int]) -> None:
    """Delete the decoder layers at ``indices`` of an HF model *in place*, renumber the
    remaining layers' ``layer_idx`` and shrink its config. Checks everything first: on
    an error the model is unchanged."""
    inner = unwrap(model)
    found = decoder_layers(inner)
    if found is None:
        raise ValueError(f"{type(inner).__name__} is not an HF decoder model with a list of "
                         "config.num_hidden_layers layers")
    name, layers = found
    n = len(layers)
    drop = sorted({check_int("index", i, minimum=0, maximum=n - 1) for i in indices})
    if len(drop) >= n:
        raise ValueError(f"cannot remove all {n} decoder layers")
    config = inner.config
    per_layer = {k: v for k, v in vars(config).items()
                 if isinstance(v, list | tuple) and len(v) == n and k != "architectures"}
    keep = [layer for i, layer in enumerate(layers) if i not in drop]
    parent = inner.get_submodule(name.rsplit(".", 1)[0]) if "." in name else inner
    setattr(parent, name.rsplit(".", 1)[-1], nn.ModuleList(keep))
    for new, layer in enumerate(keep):
        for m in layer.modules():
            if isinstance(getattr(m, "layer_idx", None), int):
                m.layer_idx = new
    config.num_hidden_layers = len(keep)
    for k, v in per_layer.items():
        setattr(config, k, type(v)(x for i, x in enumerate(v) if i not in drop))


def layer_io_statistics(model: nn.Module, batches: Iterable[Tensor]) -> tuple[Tensor, Tensor]:
    """Per-token cosine similarities between decoder-layer hidden states, averaged over
    the tokens of ``batches`` (``(B, T)`` input ids each), as ``(cos_io, cos_span)``:
    ``cos_io[l]`` between layer ``l``'s input and output, ``cos_span[l, m]`` between the
    input of layer ``l`` and the output of layer ``m >= l`` (NaN below the diagonal).
    The model runs in eval mode without gradients and is left in its mode."""
    inner = unwrap(model)
    found = decoder_layers(inner)
    if found is None:
        raise ValueError(f"{type(inner).__name__} is not an HF decoder model")
    layers = found[1]
    n = len(layers)
    inputs: list[Tensor | None] = [None] * n
    outputs: list[Tensor | None] = [None] * n
    handles = []

    def pre(i: int):
        def hook(module, args, kwargs):
            x = args[0] if args else kwargs["hidden_states"]
            inputs[i] = x.detach().float()
        return hook

    def post(i: int):
        def hook(module, args, out):
            y = out if isinstance(out, Tensor) else out[0]
            outputs[i] = y.detach().float()
        return hook

    for i, layer in enumerate(layers):
        handles.append(layer.register_forward_pre_hook(pre(i), with_kwargs=True))
        handles.append(layer.register_forward_hook(post(i)))
    sums = torch.zeros(n, n, dtype=torch.float64)
    tokens = 0
    was_training = inner.training
    inner.eval()
    try:
        with torch.no_grad():
            for ids in batches:
                inner(input_ids=ids)
                for a in range(n):
                    for b in range(a, n):
                        cos = torch.nn.functional.cosine_similarity(inputs[a], outputs[b],
                                                                    dim=-1, eps=1e-12)
                        sums[a, b] += float(cos.double().sum())
                tokens += ids.numel()
    finally:
        for h in handles:
            h.remove()
        inner.train(was_training)
    if tokens == 0:
        raise ValueError("batches held no tokens")
    span = sums / tokens
    span[torch.ones(n, n, dtype=torch.bool).tril(-1)] = math.nan
    return span.diagonal().clone(), span


def block_influence(model: nn.Module, batches: Iterable[Tensor]) -> dict[str, float]:
    """ShortGPT's Block Influence ``1 - mean cos(x_l, y_l)`` per decoder layer, by the
    layer's module name (the smallest are removed first)."""
    name, _ = decoder_layers(unwrap(model)) or ("", None)
    cos_io, _ = layer_io_statistics(model, batches)
    return {f"{name}.{i}": 1.0 - float(c) for i, c in enumerate(cos_io)}


def consecutive_angular_distance(model: nn.Module, batches: Iterable[Tensor],
                                 n: int) -> tuple[list[str], dict[int, float]]:
    """The run of ``n`` consecutive decoder layers whose input and output are closest in
    angle (``arccos(mean cos) / pi``), as module names, and the distance of every start."""
    name, layers = decoder_layers(unwrap(model)) or ("", None)
    if layers is None:
        raise ValueError("not an HF decoder model")
    n = check_int("n", n, minimum=1, maximum=len(layers) - 1)
    _, span = layer_io_statistics(model, batches)
    dist = {s: math.acos(max(-1.0, min(1.0, float(span[s, s + n - 1])))) / math.pi
            for s in range(len(layers) - n + 1)}
    start = min(dist, key=lambda s: (dist[s], s))
    return [f"{name}.{i}" for i in range(start, start + n)], dist
