"""Remove whole blocks from a network: ``prune_layers`` and its report.

Which blocks go is decided by a score per block (the smallest go first: TRSP's
learned scales, an input/output similarity score, anything) or by explicit
names (a recorded report, a random draw). A removed block is replaced by its
removal path (:mod:`compactnn.depth.blocks`): a ResNet BasicBlock by
``relu2(shortcut(x))``, a plain block by the identity.

A pruned model's state dict lacks the removed blocks' branch parameters, so a
fresh model must be pruned the same way before the weights are loaded::

    pruned, report = prune_layers(model, names=chosen)
    save_file(pruned.state_dict(), path, metadata=report.to_metadata())
    ...
    fresh, _ = prune_layers(ResNet(cfg), names=removed_from_metadata(meta), inplace=True)
    fresh.load_state_dict(load_file(path))
"""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field

import torch
from torch import Tensor, nn

from compactnn._checks import check_bool, check_module
from compactnn._modules import replace_module, unwrap
from compactnn.depth.blocks import (
    Patterns,
    RemovedBlock,
    block_kind,
    removal_path,
    removed_block,
    select_blocks,
    shape_change,
)
from compactnn.depth.hf import decoder_layers, remove_decoder_layers
from compactnn.depth.scales import LayerScales, attached_scales, count_to_remove

__all__ = ["LayerPruneReport", "prune_layers", "io_similarity_scores", "removed_from_metadata",
           "METADATA_KEY"]

METADATA_KEY = "compactnn.depth.removed_blocks"


@dataclass
class LayerPruneReport:
    """What :func:`prune_layers` removed.

    ``removed`` in the order chosen (smallest score first); ``kept`` the other
    candidates; ``scores`` the score of every candidate (empty when chosen by
    name); ``kinds`` ``"branch"`` / ``"plain"`` per removed block; parameters
    counted over the whole model.
    """

    removed: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)
    scores: dict[str, float] = field(default_factory=dict)
    kinds: dict[str, str] = field(default_factory=dict)
    params_before: int = 0
    params_after: int = 0

    @property
    def param_ratio(self) -> float:
        return self.params_after / self.params_before if self.params_before else 1.0

    def to_dict(self) -> dict:
        return asdict(self)

    def to_metadata(self) -> dict[str, str]:
        """``{METADATA_KEY: json list of removed names}``: safetensors metadata (str ->
        str) from which :func:`removed_from_metadata` reads the structure back."""
        return {METADATA_KEY: json.dumps(self.removed)}

    def __str__(self) -> str:
        lines = [f"removed {len(self.removed)} of {len(self.removed) + len(self.kept)} blocks; "
                 f"params {self.params_before:,} -> {self.params_after:,} "
                 f"(x{self.param_ratio:.3f})"]
        for n in self.removed:
            s = f" score={self.scores[n]:.4g}" if n in self.scores else ""
            lines.append(f"  - {n} ({self.kinds.get(n, '?')}){s}")
        return "\n".join(lines)


def removed_from_metadata(metadata: Mapping[str, str]) -> list[str]:
    """The removed block names recorded by :meth:`LayerPruneReport.to_metadata`
    (``[]`` when the file records none)."""
    raw = metadata.get(METADATA_KEY)
    if raw is None:
        return []
    try:
        names = json.loads(raw)
    except json.JSONDecodeError as e:
        raise ValueError(f"metadata {METADATA_KEY!r} is not JSON ({e})") from None
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise ValueError(f"metadata {METADATA_KEY!r} must be a JSON list of names, got {raw!r}")
    return names


def _params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def prune_layers(model: nn.Module, num_layers: int | None = None, *, ratio: float | None = None,
                 scores: Mapping[str, float] | LayerScales | None = None,
                 names: Sequence[str] | None = None, include: Patterns = None,
                 exclude: Patterns = None, inplace: bool = False
                 ) -> tuple[nn.Module, LayerPruneReport]:
    """Remove blocks from ``model``; returns ``(pruned model, report)``.

    Either ``names`` lists the blocks to remove, or ``scores`` (``{name: score}``,
    or a detached :class:`LayerScales`, whose ``|scale|`` is the score) ranks the
    candidates and the ``num_layers`` (or the fraction ``ratio``) with the
    smallest scores go. Candidates are the scored blocks, narrowed by
    ``include`` / ``exclude`` when given.

    ``inplace=False`` (default) prunes a deep copy and leaves ``model`` as it
    was; on any error nothing is changed. A model still carrying attached
    :class:`LayerScales` is refused (fold them with ``remove()`` first, so the
    pruned model is a plain module that saves and copies cleanly).
    """
    check_module("model", model)
    check_bool("inplace", inplace)
    inner = unwrap(model)
    if attached_scales(inner):
        raise ValueError("model carries attached LayerScales; call scales.remove(fold=True) "
                         "before prune_layers")
    modules = dict(inner.named_modules())
    if names is not None:
        if scores is not None or num_layers is not None or ratio is not None:
            raise ValueError("names= chooses the blocks itself; do not also pass scores, "
                             "num_layers or ratio")
        if isinstance(names, str) or not all(isinstance(n, str) for n in names):
            raise TypeError(f"names must be a list of module names, got {names!r}")
        chosen = list(names)
        if len(set(chosen)) != len(chosen):
            raise ValueError(f"names lists a block twice: {chosen}")
        unknown = [n for n in chosen if n not in modules or not n]
        if unknown:
            raise ValueError(f"names {unknown} are not modules of the model")
        candidates = chosen if include is None else select_blocks(inner, include, exclude)
        outside = [n for n in chosen if n not in candidates]
        if outside:
            raise ValueError(f"names {outside} are outside the include/exclude selection")
        score_map: dict[str, float] = {}
    else:
        if scores is None:
            raise ValueError("give names= (the blocks to remove) or scores= (a score per "
                             "block; the smallest are removed)")
        score_map = _score_map(scores)
        unknown = [n for n in score_map if n not in modules or not n]
        if unknown:
            raise ValueError(f"scores name blocks {unknown} that are not modules of the model")
        candidates = list(score_map)
        if include is not None or exclude is not None:
            chosen_set = set(select_blocks(inner, include, exclude))
            candidates = [n for n in candidates if n in chosen_set]
            if not candidates:
                raise ValueError("no scored block is inside the include/exclude selection")
        k = count_to_remove(len(candidates), num_layers, ratio)
        order = sorted(range(len(candidates)), key=lambda i: (score_map[candidates[i]], i))
        chosen = [candidates[i] for i in order[:k]]
    for a in chosen:
        if isinstance(modules[a], RemovedBlock):
            raise ValueError(f"block {a!r} was already removed")
        for b in chosen:
            if a != b and b.startswith(a + "."):
                raise ValueError(f"blocks {a!r} and {b!r} are nested; remove one level only")
        reason = None if block_kind(modules[a]) == "branch" else shape_change(modules[a])
        if reason:
            raise ValueError(f"block {a!r} cannot be removed: {reason}, and a removed plain "
                             "block is the identity (it must keep its input's shape)")

    hf_indices = _decoder_layer_indices(inner, chosen)
    target = inner if inplace else copy.deepcopy(inner)
    report = LayerPruneReport(params_before=_params(target),
                              scores={n: score_map[n] for n in candidates} if score_map else {})
    if hf_indices is not None:
        # HF decoder layers leave their list (see compactnn.depth.hf); the kept layers
        # are renumbered, report.kept keeps their names before pruning
        remove_decoder_layers(target, hf_indices)
        report.kinds.update(dict.fromkeys(chosen, "decoder layer"))
    for name in chosen if hf_indices is None else ():
        block = target.get_submodule(name)
        report.kinds[name] = block_kind(block)
        replace_module(target, block, removed_block(block))
    report.removed = chosen
    report.kept = [n for n in candidates if n not in chosen]
    report.params_after = _params(target)
    if inplace and target is not model:
        return model, report
    return target, report


def _decoder_layer_indices(model: nn.Module, chosen: Sequence[str]) -> list[int] | None:
    """The list positions of ``chosen`` when all are decoder layers of an HF model."""
    found = decoder_layers(model)
    if found is None or not chosen:
        return None
    prefix = found[0] + "."
    names = [f"{prefix}{i}" for i in range(len(found[1]))]
    if not all(n in names for n in chosen):
        return None
    if len(chosen) == len(names):
        raise ValueError(f"cannot remove all {len(names)} decoder layers")
    return [names.index(n) for n in chosen]


def _score_map(scores: Mapping[str, float] | LayerScales) -> dict[str, float]:
    if isinstance(scores, LayerScales):
        if scores.attached:
            raise ValueError("these LayerScales are still attached; call remove(fold=True) "
                             "first")
        return {n: abs(v) for n, v in scores.values().items()}
    if not isinstance(scores, Mapping):
        raise TypeError(f"scores must be a mapping name -> float or a LayerScales, got "
                        f"{type(scores).__name__}")
    out = {}
    for n, v in scores.items():
        if not isinstance(n, str):
            raise TypeError(f"scores keys must be module names, got {n!r}")
        if isinstance(v, bool) or not isinstance(v, int | float):
            raise TypeError(f"scores[{n!r}] must be a number, got {v!r}")
        if not math.isfinite(v):
            raise ValueError(f"scores[{n!r}] must be finite, got {v}")
        out[n] = float(v)
    if not out:
        raise ValueError("scores is empty")
    return out


@torch.no_grad()
def io_similarity_scores(model: nn.Module, batches: Iterable[Tensor | tuple],
                         include: Patterns = None, exclude: Patterns = None) -> dict[str, float]:
    """``1 - cos(y_b, p_b(x_b))`` per block, averaged over examples: how far each
    block's output is from what it computes once removed (``p_b`` its removal
    path; for a plain block, its input). Small scores mark blocks that change
    little, the usual similarity criterion for layer removal. ``batches`` yields
    input tensors (or tuples whose first item is the input); the model runs in
    eval mode and is left in the mode it was in."""
    inner = unwrap(model)
    names = select_blocks(inner, include, exclude)
    sums = dict.fromkeys(names, 0.0)
    count = 0
    handles = []

    def hook_for(name: str):
        def hook(module, args, out):
            x = args[0]
            a = out.flatten(1)
            b = removal_path(module, x).flatten(1)
            sums[name] += float((1 - torch.nn.functional.cosine_similarity(a, b, dim=1,
                                                                            eps=1e-12)).sum())
        return hook

    for n in names:
        handles.append(inner.get_submodule(n).register_forward_hook(hook_for(n)))
    was_training = inner.training
    inner.eval()
    try:
        for batch in batches:
            x = batch[0] if isinstance(batch, tuple | list) else batch
            inner(x)
            count += len(x)
    finally:
        for h in handles:
            h.remove()
        inner.train(was_training)
    if count == 0:
        raise ValueError("batches yielded no example")
    return {n: s / count for n, s in sums.items()}
