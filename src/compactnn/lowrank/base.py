"""What every low-rank layer shares: rank resolution and the matrix view of the
factors.

A low-rank layer represents a dense weight by a product of two thin factors.
Whatever the layer's own parameter shapes (a Linear's ``U`` and ``V``, a
convolution's two kernels), each layer exposes the same *matrix view*: a batch
of ``G`` independent products ``U_g @ V_g`` with ``U_g`` (m x r/G) and ``V_g``
(r/G x n), where ``G`` is the number of convolution groups (1 for Linear).
Initializers, regularizers, model surgery and checkpoints work on that view
(and on :meth:`LowRankLayer.input_rows` / :meth:`LowRankLayer.config`) only, so
they treat every layer type alike [FNL, Sec. 2-3].
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from compactnn._checks import check_finite, check_tensor
from compactnn.lowrank.registry import get_initializer

__all__ = ["LowRankLayer", "resolve_rank", "break_even_rank"]


def resolve_rank(rank: int | float, full_rank: int, *, multiple_of: int = 1) -> int:
    """Turn a user's ``rank`` into an integer rank.

    ``rank`` is an int in ``[1, full_rank]`` or a float in ``(0, 1]`` meaning that
    fraction of ``full_rank`` (rounded, at least 1). With ``multiple_of > 1``
    (grouped convolutions) the rank must be, or is rounded to, a multiple of it.
    """
    if isinstance(rank, bool) or not isinstance(rank, numbers.Real):
        raise TypeError(f"rank must be an int or a float in (0, 1], got {rank!r}")
    if isinstance(rank, numbers.Integral):
        rank = int(rank)  # numpy and other integer types
    else:
        rank = float(rank)
    if isinstance(rank, float):
        if not (0.0 < rank <= 1.0) or math.isnan(rank):
            raise ValueError(f"rank as a float must lie in (0, 1], got rank={rank!r}")
        units = full_rank // multiple_of
        return multiple_of * min(units, max(1, round(rank * units)))
    if rank < 1:
        raise ValueError(f"rank must be >= 1, got rank={rank}")
    if rank > full_rank:
        raise ValueError(f"rank={rank} exceeds the full rank {full_rank} of this layer")
    if rank % multiple_of:
        raise ValueError(f"rank={rank} must be a multiple of groups={multiple_of}")
    return int(rank)


def break_even_rank(rows: int, cols: int) -> float:
    """Rank below which ``U (rows x r) @ V (r x cols)`` has fewer entries than the
    dense ``rows x cols`` matrix: ``rows * cols / (rows + cols)``."""
    return rows * cols / (rows + cols)


class LowRankLayer(nn.Module):
    """Base class of the factorized layers.

    Subclasses hold two parameters, ``U`` (the output-side factor) and ``V``
    (the input-side factor), and implement the matrix view below.
    """

    rank: int
    groups: int = 1

    # -- matrix view -----------------------------------------------------
    @property
    def matrix_shape(self) -> tuple[int, int, int]:
        """``(G, m, n)``: the shape of the dense weight seen as G matrices."""
        raise NotImplementedError

    @property
    def full_rank(self) -> int:
        g, m, n = self.matrix_shape
        return g * min(m, n)

    def factor_matrices(self) -> tuple[Tensor, Tensor]:
        """``(U, V)`` as ``(G, m, r/G)`` and ``(G, r/G, n)`` tensors, differentiable
        functions of the parameters."""
        raise NotImplementedError

    def set_factor_matrices(self, u: Tensor, v: Tensor) -> None:
        """Copy matrix-view factors (shapes as :meth:`factor_matrices`) into the
        parameters."""
        raise NotImplementedError

    def weight_to_matrix(self, weight: Tensor) -> Tensor:
        """Dense weight in its module's layout -> ``(G, m, n)``."""
        raise NotImplementedError

    def matrix_to_weight(self, matrix: Tensor) -> Tensor:
        """``(G, m, n)`` -> dense weight in its module's layout."""
        raise NotImplementedError

    @property
    def dense_weight_shape(self) -> tuple[int, ...]:
        """Shape of the equivalent dense module's ``weight``."""
        raise NotImplementedError

    def check_dense_weight(self, weight: Any, name: str = "weight") -> Tensor:
        """``weight`` must be a finite floating tensor of exactly
        :attr:`dense_weight_shape` (a transposed or flattened weight has the right
        number of entries but means a different layer)."""
        return check_tensor(name, weight, shape=self.dense_weight_shape, floating=True)

    # -- calibration rows ------------------------------------------------
    @property
    def rows_are_outputs(self) -> bool:
        """Whether row ``i`` of the matrix view computes output unit ``i`` (false for
        a convolution factorized over ``(out*kh) x (in*kw)``)."""
        return True

    def input_rows_problem(self) -> str | None:
        """Why this layer's inputs cannot be read as rows of its matrix view, or
        None when :meth:`input_rows` works."""
        return None

    def check_input_rows(self) -> None:
        """Raise ``ValueError`` when :meth:`input_rows` cannot work for this layer."""
        problem = self.input_rows_problem()
        if problem is not None:
            raise ValueError(f"data-aware initialization cannot use {type(self).__name__} "
                             f"with {problem}")

    def input_rows(self, x: Tensor) -> Tensor:
        """The rows ``(k, n)`` that the matrix view ``U V`` multiplies when the layer
        runs on ``x``: ``forward(x)`` equals ``rows @ (U V)^T`` (plus bias),
        rearranged. ``ValueError`` when ``x`` does not fit the layer."""
        raise NotImplementedError

    def rows_per_sample(self, x: Tensor) -> int:
        """How many rows :meth:`input_rows` makes of one entry along ``x``'s first
        dimension (to split a tensor into batches of about a given row count)."""
        raise NotImplementedError

    # -- construction ----------------------------------------------------
    def config(self) -> dict[str, Any]:
        """The constructor arguments (without ``device``/``dtype``) that rebuild
        this layer's structure: ``type(layer).from_config(layer.config())``."""
        raise NotImplementedError

    @classmethod
    def from_config(cls, config: Mapping[str, Any], *, device: torch.device | str | None = None,
                    dtype: torch.dtype | None = None) -> LowRankLayer:
        """A freshly initialized layer built from :meth:`config`'s output."""
        if not isinstance(config, Mapping):
            raise TypeError(f"config must be a mapping, got {type(config).__name__}")
        return cls(**config, device=device, dtype=dtype)

    def dense_fan_in(self) -> int:
        """Fan-in of the equivalent dense layer (for default initialization)."""
        raise NotImplementedError

    #: The dense module type this layer replaces (``nn.Linear``, ``nn.Conv2d``).
    dense_type: type[nn.Module]

    def dense_kwargs(self) -> dict[str, Any]:
        """Constructor arguments of the equivalent dense module."""
        raise NotImplementedError

    @classmethod
    def dense_structure(cls, module: nn.Module) -> dict[str, Any]:
        """This class's constructor arguments (without rank and layer options)
        that mirror the dense ``module``."""
        raise NotImplementedError

    def to_dense(self) -> nn.Module:
        """The equivalent dense module, weight ``U @ V`` rebuilt once."""
        dense = self.dense_type(**self.dense_kwargs(), device=self.U.device, dtype=self.U.dtype)
        with torch.no_grad():
            dense.weight.copy_(self.dense_weight())
            if self.bias is not None:
                dense.bias.copy_(self.bias)
        return dense.train(self.training)

    @classmethod
    def from_dense(
        cls,
        module: nn.Module,
        rank: int | float,
        init: str | Callable[..., Any] = "spectral",
        **init_kwargs: Any,
    ) -> LowRankLayer:
        """Low-rank copy of a dense ``module`` with every constructor argument kept,
        bias copied and factors set by ``init`` (a registered name such as
        ``"spectral"`` or ``"default"``, or a callable
        ``fn(layer, weight=..., bias=..., **init_kwargs)``)."""
        return cls._from_dense(module, rank, init, init_kwargs)

    @classmethod
    def _from_dense(cls, module: nn.Module, rank: int | float,
                    init: str | Callable[..., Any], init_kwargs: dict[str, Any],
                    **options: Any) -> LowRankLayer:
        if not isinstance(module, cls.dense_type):
            raise TypeError(f"{cls.__name__}.from_dense expects nn.{cls.dense_type.__name__}, "
                            f"got {type(module).__name__}")
        w = module.weight
        layer = cls(**cls.dense_structure(module), rank=rank, **options, device=w.device,
                    dtype=w.dtype)
        layer._init_from(module, init, init_kwargs)
        return layer.train(module.training)  # a drop-in copy keeps the module's mode

    # -- shared behaviour ------------------------------------------------
    def dense_weight(self) -> Tensor:
        """The dense weight this layer computes with, ``U @ V`` in the dense
        module's layout (for inspection and merging; forward never builds it)."""
        u, v = self.factor_matrices()
        return self.matrix_to_weight(u @ v)

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Default initialization: factors by :meth:`reset_factors`, the bias drawn
        as PyTorch draws a dense layer's (uniform in ``+-1/sqrt(fan_in)``)."""
        self.reset_factors()
        if getattr(self, "bias", None) is not None:
            bound = 1.0 / math.sqrt(self.dense_fan_in())
            nn.init.uniform_(self.bias, -bound, bound)

    @torch.no_grad()
    def reset_factors(self) -> None:
        """Draw ``U`` and ``V`` independently from zero-mean normals scaled so that
        each entry of ``U @ V`` has the variance of the dense layer's default
        init (PyTorch's Kaiming-uniform with ``a=sqrt(5)``: ``1 / (3 fan_in)``),
        with balanced factors (``m Var U = n Var V``). A variance-matched random
        baseline, not [FNL]'s (which draws each factor by Kaiming-normal: the
        registered ``"kaiming_factors"`` initializer)."""
        g, m, n = self.matrix_shape
        r_g = self.rank // g
        target = 1.0 / (3.0 * self.dense_fan_in())
        std_u = (target * n / (r_g * m)) ** 0.25
        std_v = (target * m / (r_g * n)) ** 0.25
        u = torch.randn(g, m, r_g, device=self.U.device, dtype=self.U.dtype) * std_u
        v = torch.randn(g, r_g, n, device=self.V.device, dtype=self.V.dtype) * std_v
        self.set_factor_matrices(u, v)

    def dense_init_weight(self) -> Tensor:
        """A fresh draw of the equivalent dense layer's default weight init
        (PyTorch's Kaiming-uniform with ``a=sqrt(5)``)."""
        w = torch.empty(self.dense_weight_shape, device=self.U.device, dtype=self.U.dtype)
        nn.init.kaiming_uniform_(w, a=math.sqrt(5))
        return w

    def _init_from(
        self,
        module: nn.Module,
        init: str | Callable[..., Any],
        init_kwargs: dict[str, Any],
    ) -> None:
        """Copy the bias of ``module`` and apply the named initializer to ``module``'s
        weight (the common tail of every ``from_dense``)."""
        self.check_dense_weight(module.weight)
        if module.bias is not None:
            check_finite("bias", module.bias)
            with torch.no_grad():
                self.bias.copy_(module.bias)
        fn = get_initializer(init) if isinstance(init, str) else init
        fn(self, weight=module.weight.detach(), bias=_detach(module.bias), **init_kwargs)


def _detach(t: Tensor | None) -> Tensor | None:
    return None if t is None else t.detach()
