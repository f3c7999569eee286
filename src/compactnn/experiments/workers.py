"""Worker processes for the experiments' ``jobs``: spawned (no state forked from the
parent) and never outliving the process that started them.

A pool's workers wait on a queue that only their parent feeds; if the parent is killed
(SIGKILL, or SIGTERM before it could shut the pool down) nothing ever tells them to
stop. So each worker, first thing, asks the kernel to SIGKILL it when its parent dies
(``prctl(PR_SET_PDEATHSIG)``, Linux) and, on every system, starts a watchdog thread
that exits the worker once its parent process is gone (its parent id changes when it
is re-parented).

:func:`forward_sigterm` makes SIGTERM in the parent behave as Ctrl-C does in a terminal:
the workers get the signal too (a training worker saves its checkpoint and stops), and
the main thread gets :class:`~compactnn.engine.control.RunInterrupted`, so that
``compactnn reproduce`` writes the report of what finished and exits 143.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from typing import Any

__all__ = ["WATCH_INTERVAL_S", "die_with_parent", "forward_sigterm", "worker_pool"]

WATCH_INTERVAL_S = 1.0
_PR_SET_PDEATHSIG = 1  # from <sys/prctl.h>


def worker_pool(workers: int, initializer: Callable[..., Any] | None = None,
                initargs: tuple[Any, ...] = ()) -> ProcessPoolExecutor:
    """``workers`` spawned processes that die with this one; ``initializer(*initargs)``
    runs in each after it is tied to its parent."""
    import multiprocessing as mp

    if not isinstance(workers, int) or isinstance(workers, bool) or workers < 1:
        raise ValueError(f"workers must be an int >= 1, got {workers!r}")
    return ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn"),
                               initializer=_start_worker,
                               initargs=(os.getpid(), initializer, tuple(initargs)))


def _start_worker(parent: int, initializer: Callable[..., Any] | None,
                  initargs: tuple[Any, ...]) -> None:
    die_with_parent(parent)
    if initializer is not None:
        initializer(*initargs)


def die_with_parent(parent: int) -> None:
    """Make this process end when process ``parent`` (its parent) ends."""
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
        except (OSError, AttributeError):  # no usable libc: the watchdog still works
            pass
    if os.getppid() != parent:  # the parent died before the kernel was told
        os._exit(1)
    threading.Thread(target=_watch, args=(parent,), name="parent-watchdog",
                     daemon=True).start()


def _watch(parent: int) -> None:
    while True:
        time.sleep(WATCH_INTERVAL_S)
        if os.getppid() != parent:
            os._exit(1)


@contextmanager
def forward_sigterm() -> Iterator[None]:
    """Within the block (main thread only), SIGTERM is sent on to this process's
    worker processes and raised as ``RunInterrupted(SIGTERM)`` once (a second SIGTERM
    while unwinding is only forwarded, so the report still gets written)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    import multiprocessing as mp

    from compactnn.engine.control import RunInterrupted

    raised = []

    def handle(signum: int, _frame: Any) -> None:
        for child in mp.active_children():
            child.terminate()
        if not raised:
            raised.append(signum)
            raise RunInterrupted(signum)

    old = signal.signal(signal.SIGTERM, handle)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)
