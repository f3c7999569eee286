"""Function matching through a gated feed-forward network (SwiGLU: LLaMA, Mistral,
Qwen), as a step of block-wise compression.

After the gate and up projections of a block have been factorized (they read one
tensor, so they form one group), their factors are refitted jointly so that the
block's output ``W_down (act(W_gate x) * W_up x)`` is matched on the calibration
tokens (:func:`compactnn.init.gated_ffn.fit_gated_ffn`), before the down
projection is compressed on the inputs the new gate and up produce.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

from torch import nn

from compactnn.lowrank import LowRankLinear, linear_view

__all__ = ["find_gated_mlp", "gated_ffn_refit"]

# Names of a gated MLP's parts and its activation attribute, as Hugging Face's
# LLaMA-family models spell them.
_PARTS = ("gate_proj", "up_proj", "down_proj")


def find_gated_mlp(block: nn.Module, names: list[str]) -> tuple[nn.Module, str] | None:
    """The gated MLP module of ``block`` whose gate and up projections are exactly the
    layers ``names`` (qualified names ending in ``gate_proj`` and ``up_proj``), with
    the activation's name; None otherwise."""
    tails = sorted(n.rsplit(".", 1)[-1] for n in names)
    if tails != ["gate_proj", "up_proj"]:
        return None
    for mod in block.modules():
        if all(hasattr(mod, p) for p in _PARTS) and hasattr(mod, "act_fn"):
            if isinstance(mod.gate_proj, LowRankLinear) and isinstance(mod.up_proj, LowRankLinear):
                act = type(mod.act_fn).__name__.lower()
                if act in ("silu", "siluactivation"):
                    return mod, "silu"
                if act.startswith("gelu"):
                    return mod, "gelu"
    return None


def gated_ffn_refit(init: str, options: dict[str, Any]
                    ) -> Callable[[nn.Module, list[tuple[str, nn.Module, nn.Module]], Any],
                                  None] | None:
    """The ``after_group`` step of :func:`compactnn.surgery.blockwise.compress_blockwise`
    for ``init="nonlinear"`` (None for the other methods, which fit layers one by
    one). ``options`` (the initializer's keywords) may hold ``gated_steps``,
    ``gated_lr`` and ``gated_batch_size`` (passed to ``fit_gated_ffn`` as ``steps``,
    ``lr``, ``batch_size``), which are taken out of it; another method ignores them
    with a ``UserWarning``, as ``factorize`` ignores calibration an init cannot use."""
    given = [k for k in ("gated_steps", "gated_lr", "gated_batch_size") if k in options]
    fit_options = {k[len("gated_"):]: options.pop(k) for k in given}
    if init != "nonlinear":
        if given:
            warnings.warn(f"{', '.join(given)} ignored: they apply to init='nonlinear' "
                          f"only, got init={init!r}", UserWarning, stacklevel=4)
        return None

    def refit(block: nn.Module, swapped: list[tuple[str, nn.Module, nn.Module]],
              inputs: Any) -> None:
        found = find_gated_mlp(block, [name for name, _, _ in swapped])
        if found is None:
            return
        mlp, act = found
        from compactnn.init.gated_ffn import fit_gated_ffn

        dense = {name.rsplit(".", 1)[-1]: linear_view(d) for name, d, _ in swapped}
        fit_gated_ffn(mlp.gate_proj, mlp.up_proj, inputs.rows,
                      w_gate=dense["gate_proj"].weight.detach(),
                      w_up=dense["up_proj"].weight.detach(),
                      w_down=linear_view(mlp.down_proj).weight.detach(), activation=act,
                      **fit_options)

    return refit
