"""Block-wise calibration of a stack of repeated blocks (the decoder or encoder
layers of a transformer): the way activation-aware LLM compression (ASVD,
SVD-LLM) runs, in time linear in the depth.

The hidden states entering the first block are captured once (with the keyword
arguments the model passes its blocks: attention mask, rotary position
embeddings, ...). Each block is then compressed on the hidden states that reach
it and run once more to produce the next block's inputs:

* ``sequential=True``: inside a block, the layers are compressed group by group
  in execution order (a group is the layers that read one tensor, e.g. the q, k
  and v projections), each group on the inputs produced by the already-compressed
  layers before it, and the next block sees the compressed block's outputs;
* ``sequential=False``: every layer is fitted to the dense model's activations
  (one run of each dense block).

The inputs of a group are captured once and shared by its layers (one tensor of
token rows per group; memory: rows x width x 4 bytes, the largest group of one
block at a time). The swap is all-or-nothing: on any error the model is left as
it was.
"""

from __future__ import annotations

import copy
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from compactnn._checks import check_bool, check_module
from compactnn._modules import replace_module, restore_modes, save_modes
from compactnn.surgery.detect import call_model
from compactnn.surgery.sequential import CalibrationData, StopForward

__all__ = ["BlockStack", "GroupInputs", "compress_blockwise", "find_blocks"]

# The keyword arguments through which a model hands a block its key/value cache:
# replaying a block must neither read nor grow a cache.
_CACHE_KWARGS = ("past_key_value", "past_key_values", "layer_past", "cache")


def _is_cache(name: str, value: Any) -> bool:
    return name in _CACHE_KWARGS or type(value).__name__.endswith("Cache")


@dataclass
class BlockStack:
    """A ``nn.ModuleList`` of repeated blocks: its qualified name and the list."""

    name: str
    blocks: nn.ModuleList

    def block_of(self, module_name: str) -> int | None:
        """Index of the block that holds ``module_name`` (None when outside)."""
        prefix = f"{self.name}." if self.name else ""
        if not module_name.startswith(prefix):
            return None
        head = module_name[len(prefix):].split(".", 1)[0]
        return int(head) if head.isdigit() and int(head) < len(self.blocks) else None


def find_blocks(model: nn.Module) -> BlockStack | None:
    """The longest ``nn.ModuleList`` of at least two blocks of one type (the layers of
    a transformer: ``model.layers`` of LLaMA, ``transformer.h`` of GPT-2,
    ``encoder.layer`` of BERT); None when the model has none."""
    check_module("model", model)
    best: BlockStack | None = None
    for name, mod in model.named_modules():
        if isinstance(mod, nn.ModuleList) and len(mod) >= 2 and \
                len({type(b) for b in mod}) == 1 and \
                any(len(list(b.children())) for b in mod):
            if best is None or len(mod) > len(best.blocks):
                best = BlockStack(name, mod)
    return best


@dataclass
class GroupInputs:
    """The token rows that reach one group of layers (the layers reading one tensor),
    shared by them: ``rows`` is ``(N, width)`` on the CPU, float32."""

    rows: Tensor

    def __iter__(self):  # what the initializers' ``inputs=`` iterate over
        return iter(self.rows.split(4096))  # the initializers subsample beyond 4096 rows


def _first_tensor(out: Any) -> Tensor:
    if isinstance(out, Tensor):
        return out
    if isinstance(out, tuple | list) and out and isinstance(out[0], Tensor):
        return out[0]
    raise TypeError(f"a block returned {type(out).__name__}, not a tensor or a tuple whose "
                    "first item is the hidden states")


def _capture_first_block(model: nn.Module, stack: BlockStack, data: CalibrationData
                         ) -> list[tuple[tuple[Any, ...], dict[str, Any]]]:
    """``(args, kwargs)`` of the first block's call, per calibration batch."""
    calls: list[tuple[tuple[Any, ...], dict[str, Any]]] = []

    def hook(_m: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        kw = {k: (None if _is_cache(k, v) else v) for k, v in kwargs.items()}
        if "use_cache" in kw:
            kw["use_cache"] = False
        calls.append((tuple(a.detach() if isinstance(a, Tensor) else a for a in args), kw))
        raise StopForward

    handle = stack.blocks[0].register_forward_pre_hook(hook, with_kwargs=True)
    try:
        for batch in data:
            try:
                with torch.no_grad():
                    call_model(model, batch)
            except StopForward:
                pass
    finally:
        handle.remove()
    if not calls:
        raise ValueError(f"the blocks {stack.name!r} never ran on the calibration data")
    return calls


def _hidden(call: tuple[tuple[Any, ...], dict[str, Any]]) -> Tensor:
    args, kwargs = call
    if args and isinstance(args[0], Tensor):
        return args[0]
    if isinstance(kwargs.get("hidden_states"), Tensor):
        return kwargs["hidden_states"]
    raise TypeError("could not find the hidden states among the first block's arguments")


def _run_block(block: nn.Module, call: tuple[tuple[Any, ...], dict[str, Any]],
               hidden: Tensor) -> Tensor:
    args, kwargs = call
    if args and isinstance(args[0], Tensor):
        return _first_tensor(block(hidden, *args[1:], **kwargs))
    return _first_tensor(block(*args, **{**kwargs, "hidden_states": hidden}))


def _run_collect(block: nn.Module, calls: list[tuple[tuple[Any, ...], dict[str, Any]]],
                 hidden: list[Tensor], modules: dict[str, nn.Module], want_outputs: bool
                 ) -> tuple[list[list[str]], dict[str, GroupInputs], list[Tensor]]:
    """Run ``block`` on every batch, capturing the inputs of ``modules``: the groups
    (names reading one tensor, in execution order), their shared rows, and the
    block's outputs when ``want_outputs``."""
    rows: dict[str, list[Tensor]] = {}
    leader: dict[str, str] = {}  # module -> the first module of its group
    groups: list[list[str]] = []
    seen: dict[tuple[int, int, tuple[int, ...]], str] = {}
    keep: list[Tensor] = []  # holds the first batch's inputs so that ids are not reused
    first = [True]

    def make_hook(name: str) -> Callable[..., None]:
        def hook(_m: nn.Module, args: tuple[Any, ...]) -> None:
            x = args[0]
            if first[0]:
                key = (id(x), x.data_ptr(), tuple(x.shape))
                keep.append(x)
                if key in seen:
                    lead = seen[key]
                    leader[name] = lead
                    next(g for g in groups if g[0] == lead).append(name)
                    return
                seen[key] = name
                leader[name] = name
                groups.append([name])
            if leader.get(name) == name:
                rows.setdefault(name, []).append(
                    x.detach().reshape(-1, x.shape[-1]).float().cpu())
        return hook

    handles = [m.register_forward_pre_hook(make_hook(n)) for n, m in modules.items()]
    outs: list[Tensor] = []
    try:
        with torch.no_grad():
            for call, h in zip(calls, hidden, strict=True):
                out = _run_block(block, call, h)
                first[0] = False
                keep.clear()
                if want_outputs:
                    outs.append(out.detach())
    finally:
        for h in handles:
            h.remove()
    missing = [n for n in modules if n not in leader]
    if missing:
        raise ValueError(f"layers {missing} never ran when their block ran on the calibration "
                         "data")
    shared = {g[0]: GroupInputs(torch.cat(rows[g[0]])) for g in groups}
    return groups, {n: shared[leader[n]] for n in modules}, outs


def compress_blockwise(
    model: nn.Module,
    stack: BlockStack,
    targets: list[tuple[str, Callable[..., nn.Module]]],
    calibration: Any,
    *,
    sequential: bool = True,
    dense_targets: bool = False,
    after_group: Callable[[nn.Module, list[tuple[str, nn.Module, nn.Module]], GroupInputs],
                          None] | None = None,
    progress: bool | None = False,
    timings: dict[str, float] | None = None,
) -> None:
    """Replace each target (all inside ``stack``'s blocks) by ``build(dense,
    inputs=GroupInputs, activation="identity")``, block by block.

    ``dense_targets`` (sequential mode): each build also gets ``target_inputs=``, the
    inputs the same layer receives in the *dense* model on the same tokens, row for
    row (a dense copy of each block runs beside it), so that a method can fit the
    compressed layer to the dense model's outputs rather than to its own inputs'
    (SVD-LLM's refit of ``U``).

    ``timings``, when given, receives the seconds spent running blocks to capture
    inputs and propagate hidden states (``"calibration_s"``) and in the builds and
    ``after_group`` steps (``"decomposition_s"``).

    ``after_group(block, [(name, dense, new), ...], inputs)``, when given, runs after a
    group of a block has been replaced (sequential mode), e.g. to refit a gated
    feed-forward network's gate and up projections jointly before its down projection
    is compressed.
    """
    check_module("model", model)
    if not isinstance(stack, BlockStack):
        raise TypeError(f"stack must be a BlockStack (from find_blocks), got "
                        f"{type(stack).__name__}")
    if not isinstance(targets, list | tuple) or not all(
            isinstance(t, tuple) and len(t) == 2 and isinstance(t[0], str) and callable(t[1])
            for t in targets):
        raise TypeError("targets must be a list of (module name, build) pairs, got "
                        f"{targets!r:.80}")
    check_bool("sequential", sequential)
    check_bool("dense_targets", dense_targets)
    if progress is None:
        progress = sys.stderr.isatty()
    check_bool("progress", progress)
    if after_group is not None and not callable(after_group):
        raise TypeError(f"after_group must be callable or None, got {type(after_group).__name__}")
    if timings is not None and not isinstance(timings, dict):
        raise TypeError(f"timings must be a dict or None, got {type(timings).__name__}")
    clock = {"calibration_s": 0.0, "decomposition_s": 0.0}
    modules = dict(model.named_modules())
    per_block: dict[int, list[tuple[str, Callable[..., nn.Module]]]] = {}
    for name, build in targets:
        b = stack.block_of(name)
        if b is None:
            raise ValueError(f"target {name!r} is not inside the blocks {stack.name!r}")
        per_block.setdefault(b, []).append((name, build))
    data = CalibrationData(calibration)
    data.check()
    modes = save_modes(model)
    model.eval()
    swapped: list[tuple[nn.Module, nn.Module]] = []
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(stack.blocks), desc="compress", unit="block")
    t0 = time.perf_counter()

    def lap(key: str) -> None:
        nonlocal t0
        now = time.perf_counter()
        clock[key] += now - t0
        t0 = now

    try:
        calls = _capture_first_block(model, stack, data)
        hidden = [_hidden(c) for c in calls]
        dense_hidden = list(hidden)
        last = max(per_block, default=-1)  # blocks after it need no hidden states
        for i, block in enumerate(stack.blocks):
            if i > last:
                break
            todo = dict(per_block.get(i, []))
            # the dense model's copy of the block (an untouched block is its own)
            twin = ((copy.deepcopy(block) if todo else block) if dense_targets and sequential
                    else None)
            if todo and not sequential:
                _, inputs, outs = _run_collect(block, calls, hidden,
                                               {n: modules[n] for n in todo}, True)
                lap("calibration_s")
                for name, build in todo.items():
                    swapped.append(_swap(model, modules[name], build, inputs[name], name))
                lap("decomposition_s")
                hidden = outs
            else:
                while todo:
                    groups, inputs, _ = _run_collect(block, calls, hidden,
                                                     {n: modules[n] for n in todo}, False)
                    group = groups[0]
                    targets_in: dict[str, GroupInputs] = {}
                    if twin is not None:
                        prefix = f"{stack.name}.{i}." if stack.name else f"{i}."
                        twins = {n: twin.get_submodule(n[len(prefix):]) for n in group}
                        _, targets_in, _ = _run_collect(twin, calls, dense_hidden, twins, False)
                    lap("calibration_s")
                    done = []
                    for name in group:
                        swapped.append(_swap(model, modules[name], todo.pop(name),
                                             inputs[name], name, targets_in.get(name)))
                        done.append((name, *swapped[-1]))
                    if after_group is not None:
                        after_group(block, done, inputs[group[0]])
                    lap("decomposition_s")
                with torch.no_grad():
                    hidden = _run_all(block, calls, hidden)
                    if twin is not None:
                        dense_hidden = _run_all(twin, calls, dense_hidden)
                lap("calibration_s")
            if bar is not None:
                bar.update()
        if timings is not None:
            timings.update(clock)
    except BaseException:
        for dense, new in reversed(swapped):
            replace_module(model, new, dense)
        raise
    finally:
        if bar is not None:
            bar.close()
        restore_modes(model, modes)


def _run_all(block: nn.Module, calls: list[tuple[tuple[Any, ...], dict[str, Any]]],
             hidden: list[Tensor]) -> list[Tensor]:
    return [_run_block(block, c, h) for c, h in zip(calls, hidden, strict=True)]


def _swap(model: nn.Module, dense: nn.Module, build: Callable[..., nn.Module],
          inputs: GroupInputs, name: str, target_inputs: GroupInputs | None = None
          ) -> tuple[nn.Module, nn.Module]:
    extra = {} if target_inputs is None else {"target_inputs": target_inputs}
    new = build(dense, inputs=inputs, activation="identity", **extra)
    if not isinstance(new, nn.Module):
        raise TypeError(f"build for {name!r} returned {type(new).__name__}, not an nn.Module")
    replace_module(model, dense, new)
    return dense, new
