"""Banks of MLPs with stacked weights: ``N`` experts (or task towers) in one module.

An :class:`MLPBank` holds ``N`` MLPs ``in -> hidden... -> out`` with the same widths, each
layer as one weight tensor ``(N, a, b)`` (``y = x W + b``) and one bias ``(N, 1, b)``, and
runs them with batched matrix products:

* ``bank(x)`` with ``x`` of shape ``(batch, in)`` runs every member on the same rows (the
  first layer is one matrix product for all members) and returns ``(N, batch, out)``;
  ``x`` of shape ``(N, batch, in)`` gives each member its own rows (task towers, or the
  fixed-size row buffers of capacity execution).
* :meth:`MLPBank.forward_rows` runs each member on only its own slice of a row-sorted
  input (sparse execution): the work is proportional to the routed rows.
* ``bank[e]`` and iterating give :class:`BankMember` s: member ``e`` as a module that
  computes with the bank's own parameters (training it trains the bank);
  :meth:`MLPBank.member` gives an independent ``nn.Sequential`` copy.

Member ``e`` equals ``nn.Sequential(Linear, activation, [Dropout,] ..., Linear)`` holding
slice ``e`` of the weights (transposed), in value and gradient, and each member is
initialized as ``nn.Linear`` would initialize it. The activation must be elementwise and
without parameters (one instance serves all members). Members may have different output
widths (task towers with different numbers of outputs): the last layer is as wide as the
widest and member ``e`` uses its first ``out_features[e]`` columns.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from compactnn._checks import check_float, check_int, check_tensor

__all__ = ["BankMember", "MLPBank", "mlp_experts", "mlp_towers"]

_MEMBER_KEY = re.compile(r"^(\d+)\.(\d+)\.(weight|bias)$")


class MLPBank(nn.Module):
    """``num_members`` MLPs with stacked weights (see the module doc).

    Args:
        num_members: ``N >= 1``.
        in_features: input width.
        hidden_features: one width or a sequence of hidden widths (possibly empty).
        out_features: the output width, or one output width per member.
        activation: a factory of an elementwise, parameter-free activation module.
        dropout: dropout probability after each hidden activation, in ``[0, 1)``.
        bias: whether the layers have biases.
    """

    def __init__(self, num_members: int, in_features: int,
                 hidden_features: int | Sequence[int], out_features: int | Sequence[int], *,
                 activation: Callable[[], nn.Module] = nn.ReLU, dropout: float = 0.0,
                 bias: bool = True) -> None:
        super().__init__()
        self.num_members = check_int("num_members", num_members, minimum=1)
        hidden = ([hidden_features] if isinstance(hidden_features, int)
                  else list(hidden_features))
        if isinstance(out_features, int):
            outs = [out_features] * self.num_members
        else:
            outs = list(out_features)
            if len(outs) != self.num_members:
                raise ValueError(f"got {len(outs)} output widths for {self.num_members} members")
        check_int("in_features", in_features, minimum=1)
        for width in hidden:
            check_int("hidden_features", width, minimum=1)
        for width in outs:
            check_int("out_features", width, minimum=1)
        self.in_features = int(in_features)
        self.hidden_features = tuple(int(h) for h in hidden)
        self.out_features = tuple(int(o) for o in outs)
        self.dropout_p = check_float("dropout", dropout, minimum=0.0, maximum=1.0,
                                     max_inclusive=False)
        self.activation = activation()
        if not isinstance(self.activation, nn.Module):
            raise TypeError("activation must be a factory of nn.Module activations, "
                            f"got one returning {type(self.activation).__name__}")
        if any(True for _ in self.activation.parameters()):
            raise ValueError(f"activation {type(self.activation).__name__} has parameters; a "
                             "bank shares one activation, so use separate expert modules")
        self.dropout = nn.Dropout(self.dropout_p) if self.dropout_p > 0 else None
        widths = [self.in_features, *self.hidden_features, max(self.out_features)]
        n = self.num_members
        self.weights = nn.ParameterList(nn.Parameter(torch.empty(n, a, b))
                                        for a, b in zip(widths[:-1], widths[1:], strict=True))
        self.biases = (nn.ParameterList(nn.Parameter(torch.empty(n, 1, b)) for b in widths[1:])
                       if bias else None)
        self.reset_parameters()

    @property
    def num_layers(self) -> int:
        return len(self.weights)

    def __len__(self) -> int:
        return self.num_members

    def __getitem__(self, e: int) -> BankMember:
        return BankMember(self, e)

    def __iter__(self):
        return (BankMember(self, e) for e in range(self.num_members))

    def extra_repr(self) -> str:
        widths = "->".join(str(w) for w in (self.in_features, *self.hidden_features))
        outs = (self.out_features[0] if len(set(self.out_features)) == 1
                else list(self.out_features))
        return (f"num_members={self.num_members}, widths={widths}->{outs}, "
                f"dropout={self.dropout_p}, bias={self.biases is not None}")

    def reset_parameters(self) -> None:
        """Each member as ``nn.Linear`` initializes: ``U(+-1/sqrt(fan_in))``."""
        with torch.no_grad():
            for i, w in enumerate(self.weights):
                bound = 1.0 / math.sqrt(w.shape[1])
                w.uniform_(-bound, bound)
                if self.biases is not None:
                    self.biases[i].uniform_(-bound, bound)
                if i == self.num_layers - 1:
                    # Columns a narrower member does not use stay zero (and get no gradient).
                    for e, o in enumerate(self.out_features):
                        w[e, :, o:] = 0
                        if self.biases is not None:
                            self.biases[i][e, :, o:] = 0

    def _hidden(self, h: Tensor, i: int) -> Tensor:
        if i < self.num_layers - 1:
            h = self.activation(h)
            if self.dropout is not None:
                h = self.dropout(h)
        return h

    def forward(self, x: Tensor, members: Tensor | None = None) -> Tensor:
        """``x`` ``(batch, in)`` (shared) or ``(M, batch, in)`` (own rows per member) to
        ``(M, batch, out)``; ``members`` (indices) selects a subset of ``M`` members, all
        ``N`` by default."""
        check_tensor("x", x, ndim=(2, 3), finite=False)
        if x.shape[-1] != self.in_features:
            raise ValueError(f"expert input must have {self.in_features} features per row, "
                             f"got shape {tuple(x.shape)}")
        weights = list(self.weights)
        biases = list(self.biases) if self.biases is not None else None
        if members is not None:
            weights = [w.index_select(0, members) for w in weights]
            biases = None if biases is None else [b.index_select(0, members) for b in biases]
        m = weights[0].shape[0]
        if x.dim() == 3 and x.shape[0] != m:
            raise ValueError(f"per-member input has {x.shape[0]} members, the bank runs {m}")
        h = x
        for i, w in enumerate(weights):
            if h.dim() == 2:  # shared rows: one (batch, in) x (in, M*b) product for all members
                a, b = w.shape[1], w.shape[2]
                h = (h @ w.permute(1, 0, 2).reshape(a, m * b)).view(-1, m, b).transpose(0, 1)
                if biases is not None:
                    h = h + biases[i]
            elif biases is not None:
                h = torch.baddbmm(biases[i], h, w)
            else:
                h = torch.bmm(h, w)
            h = self._hidden(h, i)
        return h

    def forward_rows(self, x: Tensor, counts: Sequence[int]) -> Tensor:
        """Member ``e`` on rows ``sum(counts[:e]) .. sum(counts[:e+1]) - 1`` of ``x``
        ``(rows, in)``; returns ``(rows, out)`` in the same order."""
        if len(counts) != self.num_members or sum(counts) != x.shape[0]:
            raise ValueError(f"counts must give {self.num_members} slices covering the "
                             f"{x.shape[0]} rows, got {list(counts)}")
        # One unbind per layer: its backward stacks the members' gradients into one
        # tensor, where indexing w[e] per member would allocate a full-size zero gradient
        # for every member.
        weights = [w.unbind(0) for w in self.weights]
        biases = None if self.biases is None else [b.unbind(0) for b in self.biases]
        pieces = []
        start = 0
        for e, count in enumerate(counts):
            if not count:
                continue
            h = x[start : start + count]
            start += count
            for i in range(self.num_layers):
                h = (torch.addmm(biases[i][e], h, weights[i][e]) if biases is not None
                     else h @ weights[i][e])
                h = self._hidden(h, i)
            pieces.append(h)
        return torch.cat(pieces) if len(pieces) > 1 else pieces[0]

    def split(self, y: Tensor) -> list[Tensor]:
        """``(N, batch, out)`` outputs as one ``(batch, out_features[e])`` tensor per member."""
        return [y[e, :, :o] for e, o in enumerate(self.out_features)]

    # -- conversion to and from separate modules

    def member(self, e: int) -> nn.Sequential:
        """Member ``e`` as a separate ``nn.Sequential`` holding a *copy* of its weights."""
        e = check_int("e", e, minimum=0, maximum=self.num_members - 1)
        layers: list[nn.Module] = []
        widths = [self.in_features, *self.hidden_features, self.out_features[e]]
        for i in range(self.num_layers):
            layers.append(nn.Linear(widths[i], widths[i + 1], bias=self.biases is not None))
            if i < self.num_layers - 1:
                layers.append(type(self.activation)())
                if self.dropout is not None:
                    layers.append(nn.Dropout(self.dropout_p))
        seq = nn.Sequential(*layers).to(self.weights[0].device, self.weights[0].dtype)
        seq.load_state_dict(self.split_state(self.state_dict())[e])
        return seq.train(self.training)

    def linear_positions(self) -> list[int]:
        """Indices of the ``nn.Linear`` layers in :meth:`member`'s ``nn.Sequential``."""
        step = 2 if self.dropout is None else 3
        return [i * step for i in range(self.num_layers)]

    def split_state(self, state: dict[str, Tensor]) -> list[dict[str, Tensor]]:
        """A bank state as ``N`` member states (keys ``"<position>.weight"``/``".bias"``)."""
        positions = self.linear_positions()
        out: list[dict[str, Tensor]] = [{} for _ in range(self.num_members)]
        for e, o in enumerate(self.out_features):
            for i, pos in enumerate(positions):
                w = state[f"weights.{i}"][e]
                last = i == self.num_layers - 1
                out[e][f"{pos}.weight"] = (w[:, :o] if last else w).t().contiguous()
                if self.biases is not None:
                    b = state[f"biases.{i}"][e, 0]
                    out[e][f"{pos}.bias"] = (b[:o] if last else b).clone()
        return out

    def stack_states(self, states: Sequence[dict[str, Tensor]]) -> dict[str, Tensor]:
        """``N`` member states (``nn.Sequential`` of ``nn.Linear`` keys, in any positions)
        as one bank state; shapes must match this bank's."""
        if len(states) != self.num_members:
            raise ValueError(f"got {len(states)} member states for {self.num_members} members")
        result: dict[str, Tensor] = {}
        for i, w in enumerate(self.weights):
            result[f"weights.{i}"] = torch.zeros_like(w)
            if self.biases is not None:
                result[f"biases.{i}"] = torch.zeros_like(self.biases[i])
        for e, state in enumerate(states):
            positions = sorted({int(k.split(".")[0]) for k in state if k.endswith("weight")})
            if len(positions) != self.num_layers:
                raise ValueError(f"member {e} has {len(positions)} linear layers, the bank has "
                                 f"{self.num_layers}")
            for i, pos in enumerate(positions):
                w = state[f"{pos}.weight"].t()
                want = result[f"weights.{i}"].shape[1:]
                o = self.out_features[e] if i == self.num_layers - 1 else want[1]
                if tuple(w.shape) != (want[0], o):
                    raise ValueError(
                        f"member {e} layer {i} maps {w.shape[0]} -> {w.shape[1]} features, the "
                        f"bank expects {want[0]} -> {o}: the expert shapes do not match")
                result[f"weights.{i}"][e, :, :o] = w
                if self.biases is not None:
                    if f"{pos}.bias" not in state:
                        raise ValueError(f"member {e} layer {i} has no bias; the bank has biases")
                    result[f"biases.{i}"][e, 0, :o] = state[f"{pos}.bias"]
        return result

    @classmethod
    def from_modules(cls, modules: Sequence[nn.Module], *,
                     activation: Callable[[], nn.Module] = nn.ReLU) -> MLPBank:
        """A bank holding copies of the weights of ``nn.Sequential`` MLPs of equal shapes."""
        modules = list(modules)
        if not modules:
            raise ValueError("need at least one module to build a bank")
        linears = [[m for m in mod.modules() if isinstance(m, nn.Linear)] for mod in modules]
        first = linears[0]
        if not first:
            raise ValueError("module 0 has no nn.Linear layers")
        dropout = next((m.p for m in modules[0].modules() if isinstance(m, nn.Dropout)), 0.0)
        bank = cls(len(modules), first[0].in_features, [m.out_features for m in first[:-1]],
                   [lin[-1].out_features if lin else 0 for lin in linears],
                   activation=activation, dropout=dropout, bias=first[0].bias is not None)
        bank = bank.to(first[0].weight.device, first[0].weight.dtype)
        bank.load_state_dict(bank.stack_states([m.state_dict() for m in modules]))
        return bank

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # A state saved from N separate MLPs (keys "<prefix><e>.<position>.weight") is stacked.
        per_member: dict[int, dict[str, Tensor]] = {}
        for key in [k for k in state_dict if k.startswith(prefix)]:
            match = _MEMBER_KEY.match(key[len(prefix):])
            if match:
                e, rest = int(match.group(1)), f"{match.group(2)}.{match.group(3)}"
                per_member.setdefault(e, {})[rest] = state_dict.pop(key)
        if per_member:
            if sorted(per_member) != list(range(self.num_members)):
                raise ValueError(f"state holds separate modules {sorted(per_member)} under "
                                 f"{prefix!r}, but this bank has {self.num_members} members")
            stacked = self.stack_states([per_member[e] for e in range(self.num_members)])
            state_dict.update({prefix + k: v for k, v in stacked.items()})
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


class BankMember(nn.Module):
    """Member ``e`` of an :class:`MLPBank` as a module of its own that computes with the
    bank's parameters: what ``bank[e]`` and iterating over a bank give. Training through
    a member trains the bank (its parameters are the bank's, registered under ``bank``),
    so code written for a list of expert modules works on a bank unchanged. For an
    independent copy use :meth:`MLPBank.member`."""

    def __init__(self, bank: MLPBank, e: int) -> None:
        super().__init__()
        if not isinstance(bank, MLPBank):
            raise TypeError(f"bank must be an MLPBank, got {type(bank).__name__}")
        self.index = check_int("e", e, minimum=-bank.num_members,
                               maximum=bank.num_members - 1) % bank.num_members
        self.bank = bank

    @property
    def out_features(self) -> int:
        return self.bank.out_features[self.index]

    def extra_repr(self) -> str:
        return f"member {self.index} of {self.bank.num_members}"

    def forward(self, x: Tensor) -> Tensor:
        """``(..., in)`` to ``(..., out_features)``, as the member's ``nn.Sequential``."""
        check_tensor("x", x, finite=False)
        lead = x.shape[:-1]
        idx = torch.tensor([self.index], device=x.device)
        y = self.bank(x.reshape(-1, x.shape[-1]), members=idx)[0, :, :self.out_features]
        return y.reshape(*lead, self.out_features)


def mlp_experts(num_experts: int, in_features: int, hidden_features: int | Sequence[int],
                out_features: int, *, activation: Callable[[], nn.Module] = nn.ReLU,
                dropout: float = 0.0, bias: bool = True) -> MLPBank:
    """``num_experts`` independent MLPs ``in -> hidden... -> out`` as one :class:`MLPBank`
    (each hidden layer is ``Linear, activation()[, Dropout]``; the last layer is linear)."""
    return MLPBank(check_int("num_experts", num_experts, minimum=1), in_features,
                   hidden_features, check_int("out_features", out_features, minimum=1),
                   activation=activation, dropout=dropout, bias=bias)


def mlp_towers(num_tasks: int, in_features: int, hidden_features: int | Sequence[int],
               out_features: int | Sequence[int], *,
               activation: Callable[[], nn.Module] = nn.ReLU, dropout: float = 0.0,
               bias: bool = True) -> MLPBank:
    """One MLP tower per task as one :class:`MLPBank` (outputs may differ per task)."""
    return MLPBank(check_int("num_tasks", num_tasks, minimum=1), in_features, hidden_features,
                   out_features, activation=activation, dropout=dropout, bias=bias)
