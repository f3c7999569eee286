"""Prefill and generation throughput of causal LMs, measured side by side.

Several models passed together are timed round-robin (one timed call of each in turn,
``repeats`` rounds; the median round is reported), so machine noise hits all alike:
compare models only within one call. Decoding is greedy with the key/value cache
(``use_cache=True``), and never stops early at an end-of-text token, so every run
produces exactly the requested number of tokens.
"""

from __future__ import annotations

import inspect
import statistics
import time
from collections.abc import Mapping

import torch
from torch import Tensor, nn

from compactnn._checks import check_int, check_module, check_tensor
from compactnn.utils import interleaved_timings

__all__ = ["generation_speed", "greedy_generate", "prefill_speed"]


def _models(models) -> tuple[dict[str, nn.Module], bool]:
    if isinstance(models, nn.Module):
        return {"model": models}, True
    if not isinstance(models, Mapping) or not models:
        raise TypeError("model must be an nn.Module or a non-empty mapping of names to "
                        f"nn.Modules, got {type(models).__name__}")
    for k, m in models.items():
        if not isinstance(k, str):
            raise TypeError(f"model names must be str, got {k!r}")
        check_module(f"model[{k!r}]", m)
    return dict(models), False


def _batch(prompt_ids: Tensor, batch_size: int) -> Tensor:
    prompt_ids = check_tensor("prompt_ids", prompt_ids, ndim=1)
    if prompt_ids.is_floating_point() or prompt_ids.dtype == torch.bool:
        raise TypeError(f"prompt_ids must be an integer tensor, got dtype {prompt_ids.dtype}")
    if prompt_ids.numel() < 1 or bool((prompt_ids < 0).any()):
        raise ValueError("prompt_ids must hold at least one non-negative token id")
    return prompt_ids.long().reshape(1, -1).repeat(batch_size, 1)


def _device(model: nn.Module) -> torch.device:
    p = next(iter(model.parameters()), None)
    return p.device if p is not None else torch.device("cpu")


def _cache_of(out):
    # transformers >= 5.2x names the key/value cache `cache`; earlier `past_key_values`
    cache = getattr(out, "cache", None)
    return cache if cache is not None else out.past_key_values


def _cache_arg(model: nn.Module) -> str:
    params = inspect.signature(model.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def _prefill(model: nn.Module, x: Tensor):
    out = model(input_ids=x, use_cache=True)
    return _cache_of(out), out.logits[:, -1].argmax(-1, keepdim=True)


def _decode(model: nn.Module, past, token: Tensor, steps: int) -> list[Tensor]:
    tokens, arg = [], _cache_arg(model)
    for _ in range(steps):
        out = model(input_ids=token, use_cache=True, **{arg: past})
        past = _cache_of(out)
        token = out.logits[:, -1].argmax(-1, keepdim=True)
        tokens.append(token)
    return tokens


def greedy_generate(model: nn.Module, prompt_ids: Tensor, new_tokens: int,
                    batch_size: int = 1) -> Tensor:
    """``(batch_size, len(prompt) + new_tokens)``: the prompt, repeated ``batch_size``
    times, followed by ``new_tokens`` greedy tokens (one forward pass over the prompt,
    then ``new_tokens - 1`` cached single-token steps). No early stop at EOS."""
    check_module("model", model)
    new_tokens = check_int("new_tokens", new_tokens, minimum=1)
    batch_size = check_int("batch_size", batch_size, minimum=1)
    x = _batch(prompt_ids, batch_size).to(_device(model))
    with torch.inference_mode():
        past, first = _prefill(model, x)
        rest = _decode(model, past, first, new_tokens - 1)
    return torch.cat([x, first, *rest], dim=1)


class _Threads:
    def __init__(self, n: int):
        self.n = n

    def __enter__(self):
        self.before = torch.get_num_threads()
        torch.set_num_threads(self.n)

    def __exit__(self, *exc):
        torch.set_num_threads(self.before)


def prefill_speed(model, prompt_ids: Tensor, batch_size: int = 1, threads: int = 1,
                  repeats: int = 5, warmup: int = 1):
    """Prompt tokens per second of one forward pass over ``batch_size`` copies of
    ``prompt_ids`` (with ``use_cache=True``, as in generation): ``batch_size *
    len(prompt_ids) / seconds``, the median over ``repeats`` rounds.

    ``model`` is one module (a float is returned) or a mapping of names to modules,
    timed interleaved (a dict of floats is returned). ``threads`` sets
    ``torch.set_num_threads`` during the measurement only.
    """
    models, single = _models(model)
    batch_size = check_int("batch_size", batch_size, minimum=1)
    threads = check_int("threads", threads, minimum=1)
    repeats = check_int("repeats", repeats, minimum=1)
    warmup = check_int("warmup", warmup, minimum=0)
    x = _batch(prompt_ids, batch_size)
    xs = {k: x.to(_device(m)) for k, m in models.items()}
    states = {k: m.training for k, m in models.items()}
    try:
        for m in models.values():
            m.eval()
        with _Threads(threads), torch.inference_mode():
            secs = interleaved_timings(
                {k: (lambda m=m, x=xs[k]: _prefill(m, x)) for k, m in models.items()},
                repeats=repeats, warmup=warmup)
    finally:
        for k, m in models.items():
            m.train(states[k])
    speeds = {k: x.numel() / s for k, s in secs.items()}
    return speeds["model"] if single else speeds


def generation_speed(model, prompt_ids: Tensor, new_tokens: int, batch_size: int = 1,
                     threads: int = 1, repeats: int = 5, warmup: int = 1):
    """Generated tokens per second of greedy cached decoding: after an untimed forward
    pass over the prompt (which yields the first new token), ``new_tokens`` single-token
    steps are timed; the speed is ``batch_size * new_tokens / seconds``, the median over
    ``repeats`` rounds. Each round starts from a fresh prefill, so every model decodes
    at the same context lengths ``len(prompt) + 1 .. len(prompt) + new_tokens``.

    ``model``: one module (a float is returned) or a mapping of names to modules, timed
    interleaved (a dict of floats). ``threads`` applies during the measurement only.
    """
    models, single = _models(model)
    new_tokens = check_int("new_tokens", new_tokens, minimum=1)
    batch_size = check_int("batch_size", batch_size, minimum=1)
    threads = check_int("threads", threads, minimum=1)
    repeats = check_int("repeats", repeats, minimum=1)
    warmup = check_int("warmup", warmup, minimum=0)
    x = _batch(prompt_ids, batch_size)
    xs = {k: x.to(_device(m)) for k, m in models.items()}
    states = {k: m.training for k, m in models.items()}
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    times: dict[str, list[float]] = {k: [] for k in models}
    try:
        for m in models.values():
            m.eval()
        with _Threads(threads), torch.inference_mode():
            for r in range(warmup + repeats):
                for k, m in models.items():
                    past, token = _prefill(m, xs[k])
                    sync()
                    t0 = time.perf_counter()
                    _decode(m, past, token, new_tokens)
                    sync()
                    if r >= warmup:
                        times[k].append(time.perf_counter() - t0)
    finally:
        for k, m in models.items():
            m.train(states[k])
    speeds = {k: batch_size * new_tokens / statistics.median(v) for k, v in times.items()}
    return speeds["model"] if single else speeds
