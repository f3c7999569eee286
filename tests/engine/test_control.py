"""Seeding, the stop flag and the run clock."""

import os
import signal

import torch

from compactnn.engine import RunClock, StopFlag, seed_everything


def test_run_clock_counts_time_from_before_the_interruption():
    fresh, resumed = RunClock(None), RunClock({"seconds": 12.5, "epoch": 3})
    assert 0.0 <= fresh() < 5.0
    assert 12.5 <= resumed() < 17.5


def test_stop_flag_catches_sigterm_and_restores_the_handler():
    before = signal.getsignal(signal.SIGTERM)
    with StopFlag() as flag:
        assert not flag.raised
        os.kill(os.getpid(), signal.SIGTERM)
        assert flag.raised and flag.signum == signal.SIGTERM
    assert signal.getsignal(signal.SIGTERM) is before


def test_disabled_stop_flag_leaves_signals_alone():
    before = signal.getsignal(signal.SIGINT)
    with StopFlag(enabled=False):
        assert signal.getsignal(signal.SIGINT) is before


def test_seed_everything_repeats_draws():
    seed_everything(5)
    a = torch.rand(4)
    seed_everything(5)
    assert torch.equal(a, torch.rand(4))
