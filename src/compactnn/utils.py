"""Small utilities: describing the machine a measurement ran on, timing."""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable

import torch

__all__ = ["machine_info", "interleaved_timings"]


def machine_info() -> str:
    """CPU model, core count, torch version and threads, Python version (and the
    GPU when CUDA is available), for stating where a measurement was taken."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    s = (f"{cpu}, {os.cpu_count()} logical cores, torch {torch.__version__} "
         f"({torch.get_num_threads()} threads), Python {platform.python_version()}")
    if torch.cuda.is_available():
        s += f", GPU {torch.cuda.get_device_name()}"
    return s


def interleaved_timings(fns: dict[str, Callable[[], object]], repeats: int = 20,
                        warmup: int = 3, inner: int = 1,
                        reduce: Callable[[list[float]], float] = statistics.median
                        ) -> dict[str, float]:
    """Seconds per call of each function, measured round-robin (one call of each in
    turn, ``repeats`` rounds) so that machine noise hits all alike, reduced over the
    rounds by ``reduce`` (the median; ``min`` on a loaded machine, where the least
    disturbed round is the informative one). ``inner`` calls are timed together and
    averaged."""
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            sync()
            t0 = time.perf_counter()
            for _ in range(inner):
                fn()
            sync()
            times[name].append((time.perf_counter() - t0) / inner)
    return {k: reduce(v) for k, v in times.items()}
