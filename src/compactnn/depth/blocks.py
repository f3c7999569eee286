"""Which modules count as removable blocks, and what replaces a removed one.

Two kinds of block are understood:

* a ResNet :class:`~compactnn.models.resnet.BasicBlock` computes
  ``relu2(branch(x) + shortcut(x))``; its *branch* is what a scale multiplies
  and what removal drops, so a removed block computes ``relu2(shortcut(x))``.
  For an identity shortcut that is ``relu(x)``, which equals ``x`` inside a
  ResNet (every block's input is a ReLU output); for a downsampling shortcut
  (option A: subsample and zero-pad; option B: 1x1 conv + BatchNorm) the
  shortcut stays, so blocks that change shape are removable too and the
  network keeps its stage widths.
* any other module is treated as a *plain* block ``x -> f(x)`` whose output has
  the shape of its input (a transformer layer, a square Linear + activation,
  ...); removal replaces it with the identity.

Both kinds are described by the same pair: the block's *removal path* ``p(x)``
(``relu2(shortcut(x))`` or ``x``) and its output ``y``; ``y - p(x)`` is what
removal loses, which is what the second-stage penalty of TRSP drives to zero.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from torch import Tensor, nn
from torch.nn.modules.lazy import LazyModuleMixin

from compactnn.depth.hf import decoder_layers
from compactnn.models.resnet import BasicBlock

__all__ = ["RemovedBlock", "block_kind", "removal_path", "removed_block", "select_blocks",
           "shape_change"]

KINDS = ("branch", "plain")
Patterns = str | Sequence[str] | None


class RemovedBlock(nn.Module):
    """What a pruned block becomes: ``act(shortcut(x))``.

    ``shortcut`` keeps its original name, so a saved state dict of a pruned
    ResNet holds the option-B projection under ``<block>.shortcut.conv.weight``
    as before. ``act`` is the block's output activation (None for a plain block).
    """

    def __init__(self, shortcut: nn.Module | None = None, act: nn.Module | None = None) -> None:
        super().__init__()
        self.shortcut = shortcut if shortcut is not None else nn.Identity()
        self.act = act

    def forward(self, x: Tensor) -> Tensor:
        x = self.shortcut(x)
        return x if self.act is None else self.act(x)


def block_kind(module: nn.Module) -> str:
    """``"branch"`` for a ResNet BasicBlock (scale and drop its residual branch),
    ``"plain"`` for any other module (scale toward, and replace by, the identity)."""
    return "branch" if isinstance(module, BasicBlock) else "plain"


def removal_path(module: nn.Module, x: Tensor) -> Tensor:
    """What ``module`` computes on ``x`` once removed (see the module docstring)."""
    if isinstance(module, BasicBlock):
        return module.relu2(module.shortcut(x))
    return x


def removed_block(module: nn.Module) -> RemovedBlock:
    """The module that replaces ``module`` when it is pruned (sharing the shortcut's
    parameters, so nothing is copied)."""
    if isinstance(module, BasicBlock):
        shortcut = None if isinstance(module.shortcut, nn.Identity) else module.shortcut
        return RemovedBlock(shortcut, module.relu2)
    return RemovedBlock()


def _pairs(value, n: int) -> tuple:
    return tuple(value) if isinstance(value, tuple | list) else (value,) * n


def _keeps_size(m: nn.Module) -> bool:
    """Whether a convolution or pooling layer maps every spatial size to itself:
    stride 1 and ``2 padding = dilation (kernel - 1)`` (``+ output_padding`` for a
    transposed convolution) in every dimension."""
    transposed = isinstance(m, nn.modules.conv._ConvTransposeNd)
    n = len(m.kernel_size) if isinstance(m.kernel_size, tuple) else 1
    if isinstance(m, nn.modules.pooling._MaxPoolNd | nn.modules.pooling._AvgPoolNd):
        n = m.__class__.__name__[-2]
        n = int(n) if n.isdigit() else 1
    kernel = _pairs(m.kernel_size, n)
    stride = _pairs(m.stride if m.stride is not None else m.kernel_size, n)
    if any(int(s) != 1 for s in stride):
        return False
    if getattr(m, "padding", 0) == "same":
        return True
    padding = (0,) * n if m.padding == "valid" else _pairs(m.padding, n)
    dilation = _pairs(getattr(m, "dilation", 1), n)
    extra = _pairs(getattr(m, "output_padding", 0), n) if transposed else (0,) * n
    return all(2 * p == d * (k - 1) + e
               for p, d, k, e in zip(padding, dilation, kernel, extra, strict=True))


def _widths(module: nn.Module) -> tuple[int, int, bool] | None:
    """``(input width, output width, keeps the spatial size)`` of a module whose data
    flow is known (linear, convolution, width-keeping layers, and ``nn.Sequential`` of
    them), or None when it cannot be told without running it."""
    if isinstance(module, LazyModuleMixin) and module.has_uninitialized_params():
        return None  # its input width is only known after a first forward
    if isinstance(module, nn.Linear):
        return module.in_features, module.out_features, True
    if isinstance(module, nn.modules.conv._ConvNd):
        return module.in_channels, module.out_channels, _keeps_size(module)
    if isinstance(module, nn.modules.pooling._MaxPoolNd | nn.modules.pooling._AvgPoolNd):
        return -1, -1, _keeps_size(module)  # any width
    if isinstance(module, nn.Sequential):
        first = last = -1
        keeps = True
        for child in module:
            w = _widths(child)
            if w is None:
                return None
            if w[0] != -1 and first == -1 and last == -1:
                first = w[0]
            if w[1] != -1:
                last = w[1]
            keeps = keeps and w[2]
        return first, last, keeps
    elementwise = (nn.Identity, nn.modules.dropout._DropoutNd, nn.modules.batchnorm._NormBase,
                   nn.LayerNorm, nn.GroupNorm, nn.PReLU)
    activation = (type(module).__module__ == "torch.nn.modules.activation"
                  and not any(True for _ in module.parameters()))
    if isinstance(module, elementwise) or activation:
        return -1, -1, True  # any width, same shape
    return None


def shape_change(module: nn.Module) -> str | None:
    """Why the plain block ``module`` cannot be replaced by the identity (its output
    shape differs from its input's), when that can be told without running it; None
    when it keeps the shape or the shape cannot be known statically."""
    if isinstance(module, nn.Embedding | nn.EmbeddingBag):
        return "an embedding maps indices to vectors"
    widths = _widths(module)
    if widths is None:
        return None
    first, last, keeps = widths
    if first != -1 and last != -1 and first != last:
        return f"it maps width {first} to {last}"
    if not keeps:
        return "its stride, padding or pooling changes the spatial size"
    return None


def _matcher(patterns: Patterns, arg: str):
    """A regex string matches whole names; a list of names matches a module whose
    name equals an entry or ends with ``"." + entry`` (as ``factorize`` does)."""
    if isinstance(patterns, str):
        try:
            rx = re.compile(patterns)
        except re.error as e:
            raise ValueError(f"{arg}={patterns!r} is not a valid regular expression "
                             f"({e})") from None
        return [(patterns, lambda n: rx.fullmatch(n) is not None)]
    if isinstance(patterns, Sequence) and all(isinstance(p, str) for p in patterns):
        return [(p, lambda n, p=p: n == p or n.endswith("." + p)) for p in patterns]
    raise TypeError(f"{arg} must be a regex string or a list of module names, got {patterns!r}")


def select_blocks(model: nn.Module, include: Patterns = None,
                  exclude: Patterns = None) -> list[str]:
    """Names of the blocks of ``model`` chosen by ``include`` / ``exclude``, in
    registration order. ``include=None`` chooses every ResNet BasicBlock, or, in a
    Hugging Face decoder model, every decoder layer.

    Raises ``ValueError`` when a pattern matches no module, when nothing is
    chosen, or when one chosen block lies inside another (their scales and
    removals would interfere).
    """
    modules = {n: m for n, m in model.named_modules() if n}
    if include is None:
        chosen = [n for n, m in modules.items() if isinstance(m, BasicBlock)]
        hf = None if chosen else decoder_layers(model)
        if hf is not None:  # a Hugging Face decoder model: its decoder layers
            chosen = [f"{hf[0]}.{i}" for i in range(len(hf[1]))]
        if not chosen:
            raise ValueError("model has no ResNet BasicBlock nor HF decoder layers; pass "
                             "include= patterns naming the blocks to scale or prune")
    else:
        chosen = []
        for pat, match in _matcher(include, "include"):
            hits = [n for n in modules if match(n)]
            if not hits:
                raise ValueError(f"include pattern {pat!r} matched no module")
            chosen += [n for n in hits if n not in chosen]
    if exclude is not None:
        for pat, match in _matcher(exclude, "exclude"):
            if not any(match(n) for n in modules):
                raise ValueError(f"exclude pattern {pat!r} matched no module")
            chosen = [n for n in chosen if not match(n)]
    if not chosen:
        raise ValueError("include/exclude left no block to choose")
    for a in chosen:
        for b in chosen:
            if a != b and b.startswith(a + "."):
                raise ValueError(f"chosen blocks {a!r} and {b!r} are nested; choose one level "
                                 "(e.g. a regex that matches whole names such as "
                                 r"'layer\d\.\d+')")
    order = list(modules)
    return sorted(chosen, key=order.index)
