import math

import pytest

from compactnn.experiments.stats import wilson_interval


def test_wilson_solves_its_quadratic():
    """Both bounds q satisfy (x/n - q)^2 = z^2 q (1 - q) / n."""
    z = 1.959963984540054
    for x, n in [(3, 10), (50, 200), (1, 7)]:
        for q in wilson_interval(x, n):
            assert math.isclose((x / n - q) ** 2, z * z * q * (1 - q) / n, rel_tol=1e-9)


def test_wilson_edges_and_symmetry():
    lo, hi = wilson_interval(0, 200)
    assert lo == 0.0 and math.isclose(hi, 1.959963984540054 ** 2 / (200 + 1.959963984540054 ** 2))
    assert wilson_interval(200, 200)[1] == 1.0
    a, b = wilson_interval(30, 100)
    c, d = wilson_interval(70, 100)
    assert math.isclose(a, 1 - d) and math.isclose(b, 1 - c)


def test_wilson_bad_arguments():
    with pytest.raises(ValueError, match="successes"):
        wilson_interval(5, 4)
    with pytest.raises(ValueError, match="trials"):
        wilson_interval(0, 0)
    with pytest.raises(TypeError, match="successes"):
        wilson_interval(1.5, 4)
