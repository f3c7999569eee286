"""Progress over layers whose costs differ by orders of magnitude (calibrated
compression: a ResNet's first convolution fits in milliseconds, a 4608-wide one
in seconds), with an estimate per layer.

Each layer gets a relative cost from its shape (:func:`calibration_cost`); the
seconds per unit of cost measured on the layers already done predict the next
layer's time and the time left. Shown by default only when the stream is a
terminal, so logs and pipes stay clean.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Sequence
from typing import Any, TextIO

from compactnn._checks import check_int

__all__ = ["LayerProgress", "calibration_cost"]


def calibration_cost(features: int, outputs: int, rows: int) -> float:
    """Relative cost of fitting one layer of matrix view ``outputs x features`` on
    ``rows`` calibration rows: the Gram matrix (``rows n^2``), its Cholesky
    factorization (``n^3 / 3``) and the SVD of the whitened ``m x n`` weight
    (``m n min(m, n)``), the terms that dominate every calibrated init."""
    n = check_int("features", features, 1)
    m = check_int("outputs", outputs, 1)
    k = check_int("rows", rows, 0)
    return float(k) * n * n + n ** 3 / 3.0 + float(m) * n * min(m, n)


class LayerProgress:
    """A progress bar over named layers, advancing by each layer's cost.

    ``start(name)`` shows the layer with its estimated seconds (once a layer has
    been timed), ``done(name)`` advances by its cost; the bar's remaining time
    is then cost-weighted. ``enabled=None`` (the default) shows it only when
    ``file`` (stderr by default) is a terminal. ``clock`` is injectable for tests.
    """

    def __init__(self, costs: Sequence[tuple[str, float]], *, enabled: bool | None = None,
                 file: TextIO | None = None, desc: str = "calibrate",
                 clock: Callable[[], float] = time.perf_counter) -> None:
        self.costs = {name: float(cost) for name, cost in costs}
        if len(self.costs) != len(costs) or any(not c > 0 for c in self.costs.values()):
            raise ValueError("costs must be distinct names with positive costs")
        self.file = sys.stderr if file is None else file
        if enabled is None:
            isatty = getattr(self.file, "isatty", None)
            enabled = bool(isatty()) if callable(isatty) else False
        self.clock = clock
        self.spent = 0.0  # seconds on finished layers
        self.done_cost = 0.0
        self.started: tuple[str, float] | None = None
        self.bar: Any = None
        if enabled:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=sum(self.costs.values()), desc=desc, file=self.file,
                            bar_format="{desc}: {percentage:3.0f}%|{bar}| {postfix}")

    def estimate(self, name: str) -> float | None:
        """Predicted seconds for layer ``name``; None before any layer was timed."""
        if self.done_cost <= 0:
            return None
        return self.spent / self.done_cost * self.costs[name]

    def remaining(self) -> float | None:
        """Predicted seconds for the layers not yet done."""
        if self.done_cost <= 0:
            return None
        left = sum(self.costs.values()) - self.done_cost
        return self.spent / self.done_cost * left

    def start(self, name: str) -> None:
        self.started = (name, self.clock())
        if self.bar is not None:
            est, left = self.estimate(name), self.remaining()
            self.bar.set_postfix_str(
                f"{name}" + ("" if est is None else f" ~{est:.0f} s, ~{left:.0f} s left"))

    def done(self, name: str) -> None:
        if self.started is None or self.started[0] != name:
            raise ValueError(f"done({name!r}) without start({name!r})")
        self.spent += self.clock() - self.started[1]
        self.done_cost += self.costs[name]
        self.started = None
        if self.bar is not None:
            self.bar.update(self.costs[name])

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def __enter__(self) -> LayerProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
