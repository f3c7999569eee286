"""The interruption exception and exit codes exactly."""

from __future__ import annotations

import signal

from compactnn.engine import RunInterrupted, exit_code


def test_exit_codes_are_128_plus_the_signal() -> None:
    assert exit_code(signal.SIGINT) == 130 and exit_code(signal.SIGTERM) == 143
    assert exit_code(9) == 137


def test_run_interrupted_names_its_signal() -> None:
    e = RunInterrupted(signal.SIGTERM)
    assert str(e) == "stopped by SIGTERM" and e.signum == 15 and type(e.signum) is int
    assert str(RunInterrupted()) == "stopped by SIGINT" and RunInterrupted().signum == 2
    assert str(RunInterrupted(signal.SIGTERM, "saved at epoch 3")) == "saved at epoch 3"
    assert isinstance(e, KeyboardInterrupt)


def test_run_clock_adds_the_recorded_seconds_to_the_elapsed_ones(monkeypatch) -> None:
    import time

    from compactnn.engine import RunClock

    now = [100.0]
    monkeypatch.setattr(time, "perf_counter", lambda: now[0])
    fresh, resumed, bare = RunClock(None), RunClock({"seconds": 12.5}), RunClock({"epoch": 3})
    now[0] = 101.23456
    assert (fresh(), resumed(), bare()) == (1.235, 13.735, 1.235)


def test_stop_flag_state_and_handlers() -> None:
    import os

    from compactnn.engine import StopFlag

    flag = StopFlag()
    assert (flag.enabled, flag.raised, flag.signum) == (True, False, None)
    before = signal.getsignal(signal.SIGTERM)
    with flag:
        # checked before any signal is sent: a missing handler would end the test run
        assert signal.getsignal(signal.SIGINT) == flag._handle
        assert signal.getsignal(signal.SIGTERM) == flag._handle
        os.kill(os.getpid(), signal.SIGTERM)
        assert flag.raised is True and flag.signum == signal.SIGTERM
    assert signal.getsignal(signal.SIGTERM) is before


def test_seed_everything_seeds_python_numpy_and_torch() -> None:
    import random

    import numpy as np
    import torch

    from compactnn.engine import seed_everything

    def draws():
        return (random.random(), np.random.rand(), float(torch.rand(())))  # noqa: NPY002

    seed_everything(5)
    first = draws()
    seed_everything(5)
    assert draws() == first
    random.seed(5)
    np.random.seed(5)  # noqa: NPY002
    torch.manual_seed(5)
    assert draws() == first
