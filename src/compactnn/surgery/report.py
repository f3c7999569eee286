"""What ``factorize`` did, layer by layer, with model totals."""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["FactorizeReport", "LayerReport"]


@dataclass
class LayerReport:
    """One row of the report: a candidate layer before and after surgery. A layer
    whose weight is tied to an earlier row's counts no parameters of its own."""

    name: str
    kind: str
    shape: str
    full_rank: int
    rank: int | None  # None: kept dense
    params_before: int
    params_after: int
    macs_before: int | None
    macs_after: int | None
    note: str = ""
    selected: bool = True  # False: a layer the selection (or a tie) left out, see note


def _ratio(after: int, before: int) -> float:
    # a model without parameters (or MACs) is unchanged by surgery: ratio 1
    return after / before if before else 1.0


@dataclass
class FactorizeReport:
    """What ``factorize`` did, layer by layer, with model totals.

    ``params_*`` count every distinct parameter of the model once (a tied weight
    once); ``macs_*`` count the multiply-adds of all ``Linear``/``Conv2d`` layers
    for one forward pass of ``example_inputs`` (one input row when none was
    given; None when unknown).
    """

    layers: list[LayerReport] = field(default_factory=list)
    params_before: int = 0
    params_after: int = 0
    macs_before: int | None = None
    macs_after: int | None = None
    #: seconds of block-wise calibration: running blocks (``calibration_s``) and
    #: fitting factors (``decomposition_s``); empty for other paths
    timings: dict[str, float] = field(default_factory=dict)
    #: parameters of every linear layer, selected or not (``factorize.linear_params``)
    linear_params_before: int = 0
    linear_params_after: int = 0

    HEADER = ["layer", "type", "shape", "rank", "params", "params after", "MACs",
              "MACs after", "note"]

    @property
    def param_ratio(self) -> float:
        return _ratio(self.params_after, self.params_before)

    @property
    def selected_param_ratio(self) -> float:
        """Parameters after / before over the selected layers only (the convention of
        the LLM compression papers, which count the linear layers, not embeddings)."""
        rows = [lr for lr in self.layers if lr.selected]
        return _ratio(sum(lr.params_after for lr in rows), sum(lr.params_before for lr in rows))

    @property
    def linear_param_ratio(self) -> float:
        """Parameters after / before over all linear layers, the selected ones and those
        left dense (a head tied to the embedding not counted)."""
        return _ratio(self.linear_params_after, self.linear_params_before)

    @property
    def flop_ratio(self) -> float | None:
        if self.macs_before is None or self.macs_after is None:
            return None
        return _ratio(self.macs_after, self.macs_before)

    def rows(self) -> list[list[str]]:
        def fmt(v: int | None) -> str:
            return "-" if v is None else f"{v:,}"

        out = []
        for lr in self.layers:
            rank = "dense" if lr.rank is None else f"{lr.rank}/{lr.full_rank}"
            out.append([lr.name, lr.kind, lr.shape, rank, fmt(lr.params_before),
                        fmt(lr.params_after), fmt(lr.macs_before), fmt(lr.macs_after), lr.note])
        ratio = f"{self.flop_ratio:.3f}" if self.flop_ratio is not None else "-"
        out.append(["total", "", "", "", fmt(self.params_before), fmt(self.params_after),
                    fmt(self.macs_before), fmt(self.macs_after),
                    f"params x{self.param_ratio:.3f} (selected layers "
                    f"x{self.selected_param_ratio:.3f}, linear layers "
                    f"x{self.linear_param_ratio:.3f}), MACs x{ratio}"])
        return out

    def __str__(self) -> str:
        rows = [self.HEADER, *self.rows()]
        widths = [max(len(r[i]) for r in rows) for i in range(len(self.HEADER))]
        lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
                 for r in rows]
        lines.insert(1, "  ".join("-" * w for w in widths))
        return "\n".join(lines)

    def to_markdown(self) -> str:
        rows = [self.HEADER, ["---"] * len(self.HEADER), *self.rows()]
        return "\n".join("| " + " | ".join(r) + " |" for r in rows)
