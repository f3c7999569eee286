"""Progress over calibrated layers: cost-weighted estimates from the layers
already timed, shown only on a terminal by default."""

import io

import pytest

from compactnn.layer_progress import LayerProgress, calibration_cost


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_cost_is_gram_plus_cholesky_plus_svd():
    assert calibration_cost(4, 2, 10) == 10 * 16 + 64 / 3 + 2 * 4 * 2
    assert calibration_cost(4608, 512, 128) > 20 * calibration_cost(576, 64, 4096)
    with pytest.raises(ValueError, match="features"):
        calibration_cost(0, 2, 10)


def test_estimates_scale_the_measured_seconds_by_cost():
    clock = Clock()
    with LayerProgress([("a", 1.0), ("b", 3.0), ("c", 6.0)], enabled=False,
                       clock=clock) as p:
        assert p.estimate("b") is None and p.remaining() is None
        p.start("a")
        clock.now = 2.0
        p.done("a")
        assert p.estimate("b") == pytest.approx(6.0)      # 2 s per unit of cost
        assert p.remaining() == pytest.approx(18.0)
        p.start("b")
        clock.now = 5.0                                   # b took 3 s: 5 s for 4 units
        p.done("b")
        assert p.estimate("c") == pytest.approx(7.5)
        with pytest.raises(ValueError, match="without start"):
            p.done("c")


def test_shown_on_a_terminal_only_by_default():
    quiet = io.StringIO()
    with LayerProgress([("a", 1.0)], file=quiet) as p:
        p.start("a")
        p.done("a")
    assert quiet.getvalue() == ""
    tty, clock = Terminal(), Clock()
    with LayerProgress([("layer1.conv", 1.0), ("fc", 4.0)], file=tty, clock=clock) as p:
        p.start("layer1.conv")
        clock.now = 0.5
        p.done("layer1.conv")
        p.start("fc")
    out = tty.getvalue()
    assert "calibrate" in out and "fc ~2 s, ~2 s left" in out


def test_bad_costs_are_refused():
    with pytest.raises(ValueError, match="positive"):
        LayerProgress([("a", 0.0)], enabled=False)
    with pytest.raises(ValueError, match="distinct"):
        LayerProgress([("a", 1.0), ("a", 2.0)], enabled=False)
