"""Learnable per-block scales and the two TRSP penalties [TRSP].

TRSP (Two-Stage Regularization-Based Structured Pruning) multiplies what each
block adds by a learnable weight ``a_b`` (initialized at 1) and trains with

* stage 1: ``loss + lam1 * sum_b |a_b|`` (an L1 penalty that drives the
  weights of dispensable blocks toward 0), then, for the blocks with the
  smallest ``|a_b|``,
* stage 2: ``loss + lam1 * sum_b |a_b| + lam2 * sum_{b chosen} mean((y_b - p_b(x_b))^2)``
  where ``x_b``, ``y_b`` are the block's input and output and ``p_b`` its
  removal path (:func:`compactnn.depth.blocks.removal_path`): the chosen
  blocks are pushed to compute what they will compute once removed, so their
  knowledge moves into the kept blocks before they go.

How a scale enters a block (our reading of "multiply the output of each layer"
for residual networks, where scaling the whole output would also scale the
skip path and make a zero scale erase the signal rather than skip the block):

* ResNet BasicBlock: the residual branch is scaled,
  ``relu2(a * bn2(conv2(...)) + shortcut(x))``; ``a = 0`` is exactly the removed block.
* plain block ``f``: the output is interpolated toward the input,
  ``a * f(x) + (1 - a) * x``; ``a = 1`` is ``f``, ``a = 0`` the identity.

Scales act through forward hooks, so the model's parameter names do not
change; :meth:`LayerScales.remove` takes the hooks off and, with ``fold=True``,
multiplies each BasicBlock's ``bn2`` affine parameters by its scale (exact in
train and eval mode), after which the model computes the same function with no
extra parameter.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import Tensor, nn

from compactnn._checks import check_bool, check_float, check_int, check_module
from compactnn._modules import unwrap
from compactnn.depth.blocks import (
    Patterns,
    block_kind,
    removal_path,
    select_blocks,
    shape_change,
)

__all__ = ["LayerScales", "attached_scales"]


class LayerScales(nn.Module):
    """Attach one learnable scale (initialized at 1) to each chosen block of ``model``.

    Args:
        model: the network (DDP / compiled wrappers are looked through).
        include, exclude: block names: a regex matched against whole module
            names, or a list of names (as ``factorize``). ``include=None``
            chooses every ResNet BasicBlock.

    The scales are this module's only parameter, ``weight`` (one entry per block,
    in the order of :attr:`names`): give ``scales.parameters()`` to the
    optimizer beside the model's. With all scales at 1 the model computes
    exactly what it computed before.

    Example::

        scales = LayerScales(model)                      # every BasicBlock
        opt = torch.optim.AdamW([*model.parameters(), *scales.parameters()])
        loss = F.cross_entropy(model(x), y) + scales.l1_penalty(1e-3)     # stage 1
        chosen = scales.smallest(num_layers=3)
        scales.track(chosen)
        loss = (F.cross_entropy(model(x), y) + scales.l1_penalty(1e-3)
                + scales.difference_penalty(1.0))                          # stage 2
        scales.remove(fold=True)
        model, report = prune_layers(model, names=chosen)
    """

    def __init__(self, model: nn.Module, include: Patterns = None,
                 exclude: Patterns = None) -> None:
        super().__init__()
        check_module("model", model)
        inner = unwrap(model)
        names = select_blocks(inner, include, exclude)
        taken = attached_scales(inner)
        clash = [n for n in names if any(n in s.names for s in taken)]
        if clash:
            raise ValueError(f"blocks {clash} already carry LayerScales; call remove() on "
                             "those first")
        ref = next(inner.parameters(), None)
        kw = {} if ref is None else {"device": ref.device, "dtype": ref.dtype}
        self.names: list[str] = names
        self.weight = nn.Parameter(torch.ones(len(names), **kw))
        self._model = [inner]  # a list: not registered as a submodule (no parameter sharing)
        self._kinds = {n: block_kind(inner.get_submodule(n)) for n in names}
        for n in names:
            reason = None if self._kinds[n] == "branch" else shape_change(inner.get_submodule(n))
            if reason:
                raise ValueError(f"block {n!r} cannot be scaled toward the identity: {reason} "
                                 "(a plain block must keep its input's shape)")
        self._handles: list = []
        self._tracked: list[str] = []
        self._captured: dict[str, tuple[Tensor, Tensor]] = {}
        for i, name in enumerate(names):
            block = inner.get_submodule(name)
            if self._kinds[name] == "branch":
                self._handles.append(block.bn2.register_forward_hook(
                    self._branch_hook(i, block.bn2)))
            else:
                self._handles.append(block.register_forward_hook(self._plain_hook(i, name, block)))
            self._handles.append(block.register_forward_hook(self._capture_hook(name, block)))

    # -- hooks ------------------------------------------------------------------------
    @staticmethod
    def _same(module: nn.Module, target: nn.Module) -> None:
        # copy.deepcopy of a model copies its hooks, which still point here
        if module is not target:
            raise RuntimeError("this model is a copy made while LayerScales were attached; "
                               "its hooks still use the original's scales. Copy models only "
                               "after scales.remove(), then attach new LayerScales")

    def _branch_hook(self, i: int, target: nn.Module):
        def hook(module, args, out):
            self._same(module, target)
            return out * self.weight[i]
        hook.layer_scales = self  # lets attached_scales() find us
        return hook

    def _plain_hook(self, i: int, name: str, target: nn.Module):
        def hook(module, args, out):
            self._same(module, target)
            x = args[0]
            if not isinstance(out, Tensor) or out.shape != x.shape:
                got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
                raise ValueError(f"block {name!r} maps shape {tuple(x.shape)} to {got}; a "
                                 "plain block must keep its input's shape to be scaled "
                                 "toward the identity")
            w = self.weight[i]
            return w * out + (1 - w) * x  # exactly f(x) at w=1, x at w=0
        hook.layer_scales = self
        return hook

    def _capture_hook(self, name: str, target: nn.Module):
        def hook(module, args, out):
            self._same(module, target)
            if name in self._tracked:
                self._captured[name] = (args[0], out)
        hook.layer_scales = self
        return hook

    @property
    def attached(self) -> bool:
        return bool(self._handles)

    def _check_attached(self) -> None:
        if not self.attached:
            raise RuntimeError("these LayerScales were removed from their model")

    # -- values and selection -------------------------------------------------------
    def values(self) -> dict[str, float]:
        """``{block name: current scale}``."""
        return dict(zip(self.names, self.weight.detach().cpu().tolist(), strict=True))

    def kinds(self) -> dict[str, str]:
        """``{block name: "branch" | "plain"}`` (see the module docstring)."""
        return dict(self._kinds)

    def smallest(self, num_layers: int | None = None, *, ratio: float | None = None
                 ) -> list[str]:
        """Names of the ``num_layers`` blocks (or the fraction ``ratio`` of them,
        rounded, at least one) with the smallest ``|scale|``, smallest first; ties
        go to the earlier block. Non-finite scales are refused, as by
        :func:`~compactnn.depth.prune_layers` (a NaN sorts nowhere in particular)."""
        k = count_to_remove(len(self.names), num_layers, ratio)
        mags = self.weight.detach().abs().cpu().tolist()
        bad = {n: v for n, v in zip(self.names, mags, strict=True) if not math.isfinite(v)}
        if bad:
            raise ValueError(f"scales hold non-finite values {bad}; no block can be ranked")
        order = sorted(range(len(self.names)), key=lambda i: (mags[i], i))
        return [self.names[i] for i in order[:k]]

    # -- penalties --------------------------------------------------------------------
    def l1_penalty(self, coef: float) -> Tensor:
        """Stage 1: ``coef * sum_b |a_b|`` (a differentiable scalar)."""
        coef = check_float("coef", coef, minimum=0.0)
        self._check_attached()
        return coef * self.weight.abs().sum()

    def track(self, names: Iterable[str] | None) -> None:
        """Record the input and output of these blocks on every forward pass (for
        :meth:`difference_penalty`); ``None`` or ``[]`` stops recording."""
        self._check_attached()
        names = [] if names is None else list(names)
        unknown = [n for n in names if n not in self.names]
        if unknown:
            raise ValueError(f"cannot track {unknown}: not among the scaled blocks {self.names}")
        self._tracked = names
        self._captured = {}

    @property
    def tracked(self) -> list[str]:
        return list(self._tracked)

    def difference_penalty(self, coef: float) -> Tensor:
        """Stage 2: ``coef * sum_{b tracked} mean((y_b - p_b(x_b))^2)`` over the
        inputs ``x_b`` and outputs ``y_b`` of the tracked blocks in the latest
        forward pass (``p_b`` is the block's removal path)."""
        coef = check_float("coef", coef, minimum=0.0)
        self._check_attached()
        if not self._tracked:
            raise RuntimeError("no block is tracked: call track(names) before the forward pass")
        missing = [n for n in self._tracked if n not in self._captured]
        if missing:
            raise RuntimeError(f"no forward pass has gone through the tracked blocks {missing} "
                               "since track() was called")
        model = self._model[0]
        total = self.weight.new_zeros(())
        for name in self._tracked:
            x, y = self._captured[name]
            total = total + (y - removal_path(model.get_submodule(name), x)).pow(2).mean()
        return coef * total

    # -- detaching --------------------------------------------------------------------
    @torch.no_grad()
    def remove(self, fold: bool = True) -> None:
        """Take the hooks off the model. With ``fold=True`` the model keeps computing
        the scaled function: each BasicBlock's scale is multiplied into its ``bn2``
        weight and bias. Plain blocks cannot be folded; if any has a scale other
        than 1, ``fold=True`` raises ``ValueError`` and nothing changes."""
        check_bool("fold", fold)
        self._check_attached()
        w = self.weight.detach()
        if not bool(torch.isfinite(w).all()):
            raise ValueError("scales hold non-finite values; nothing was changed")
        model = self._model[0]
        if fold:
            stuck = [n for i, n in enumerate(self.names)
                     if self._kinds[n] == "plain" and not math.isclose(float(w[i]), 1.0)]
            if stuck:
                raise ValueError(f"plain blocks {stuck} have scales other than 1 and cannot "
                                 "be folded into their parameters; remove(fold=False) drops "
                                 "the scales, or keep the LayerScales attached")
        for h in self._handles:
            h.remove()
        self._handles = []
        self._captured = {}
        self._tracked = []
        if fold:
            for i, name in enumerate(self.names):
                if self._kinds[name] == "branch":
                    bn = model.get_submodule(name).bn2
                    bn.weight.mul_(w[i].to(bn.weight.dtype))
                    bn.bias.mul_(w[i].to(bn.bias.dtype))

    def extra_repr(self) -> str:
        return f"blocks={len(self.names)}, attached={self.attached}"


def attached_scales(model: nn.Module) -> list[LayerScales]:
    """The :class:`LayerScales` whose hooks are on ``model`` (each once)."""
    found: list[LayerScales] = []
    for m in unwrap(model).modules():
        for hook in m._forward_hooks.values():
            owner = getattr(hook, "layer_scales", None)
            if owner is not None and owner not in found:
                found.append(owner)
    return found


def count_to_remove(total: int, num_layers: int | None, ratio: float | None) -> int:
    """Resolve exactly one of ``num_layers`` (an int in ``[0, total]``) or ``ratio``
    (a float in ``(0, 1]``: ``round(ratio * total)``, at least 1)."""
    if (num_layers is None) == (ratio is None):
        raise ValueError(f"give exactly one of num_layers and ratio, got num_layers="
                         f"{num_layers!r}, ratio={ratio!r}")
    if num_layers is not None:
        k = check_int("num_layers", num_layers, minimum=0)
        if k > total:
            raise ValueError(f"num_layers={k} exceeds the {total} candidate blocks")
        return k
    r = check_float("ratio", ratio, minimum=0.0, maximum=1.0, min_inclusive=False)
    return max(1, min(total, round(r * total)))
