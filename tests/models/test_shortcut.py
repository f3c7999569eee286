import math

import pytest
import torch

from compactnn.models.shortcut import ShortcutConvNet, population_grad, population_loss

DT = torch.float64


def _teacher(p=5, k=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(p, generator=g, dtype=DT)
    return w / w.norm(), torch.randn(k, generator=g, dtype=DT)


@pytest.mark.parametrize("shortcut", [True, False])
def test_grad_matches_autograd(shortcut):
    ws, as_ = _teacher()
    g = torch.Generator().manual_seed(1)
    w = torch.randn(3, 5, generator=g, dtype=DT, requires_grad=True)
    a = torch.randn(3, 4, generator=g, dtype=DT, requires_grad=True)
    population_loss(w, a, ws, as_, shortcut).sum().backward()
    gw, ga = population_grad(w.detach(), a.detach(), ws, as_, shortcut)
    torch.testing.assert_close(gw, w.grad, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(ga, a.grad, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("shortcut", [True, False])
def test_loss_matches_monte_carlo(shortcut):
    """The closed form is the mean of the sampled squared error (5 standard errors)."""
    ws, as_ = _teacher()
    g = torch.Generator().manual_seed(2)
    w, a = torch.randn(5, generator=g, dtype=DT), torch.randn(4, generator=g, dtype=DT)
    net = ShortcutConvNet(4, 5, shortcut).double()
    teacher = ShortcutConvNet(4, 5, shortcut).double()
    with torch.no_grad():
        net.w.copy_(w), net.a.copy_(a), teacher.w.copy_(ws), teacher.a.copy_(as_)
    z = torch.randn(400_000, 4, 5, generator=g, dtype=DT)
    with torch.no_grad():
        err = (net(z) - teacher(z)).pow(2) / 2
    se = float(err.std()) / math.sqrt(len(err))
    assert abs(float(err.mean()) - float(population_loss(w, a, ws, as_, shortcut))) < 5 * se


def test_zero_at_teacher_and_positive_elsewhere():
    ws, as_ = _teacher()
    for s in (True, False):
        assert abs(float(population_loss(ws, as_, ws, as_, s))) < 1e-12
        gw, ga = population_grad(ws, as_, ws, as_, s)
        assert float(gw.abs().max()) < 1e-12 and float(ga.abs().max()) < 1e-12
        assert float(population_loss(ws * 0.5, as_, ws, as_, s)) > 1e-3


def test_plain_net_scale_symmetry():
    """Without the shortcut (c w, a / c) is the same function; with it, it is not."""
    ws, as_ = _teacher()
    w, a = torch.randn(5, dtype=DT), torch.randn(4, dtype=DT)
    l1 = population_loss(w, a, ws, as_, False)
    torch.testing.assert_close(population_loss(3 * w, a / 3, ws, as_, False), l1)
    assert not torch.allclose(population_loss(3 * w, a / 3, ws, as_, True),
                              population_loss(w, a, ws, as_, True))


def test_grad_at_zero_filter_is_the_shortcut_signal():
    """At w = 0 the ReLU passes no gradient; the shortcut's is -(k + 1.a*/2) w*."""
    ws, as_ = _teacher()
    a = torch.randn(4, dtype=DT)
    gw, _ = population_grad(torch.zeros(5, dtype=DT), a, ws, as_, True)
    torch.testing.assert_close(gw, -(4 + as_.sum() / 2) * ws)
    gw0, _ = population_grad(torch.zeros(5, dtype=DT), a, ws, as_, False)
    assert float(gw0.abs().max()) == 0.0


def test_forward_closed_form():
    net = ShortcutConvNet(2, 3, shortcut=True).double()
    with torch.no_grad():
        net.w.copy_(torch.tensor([1.0, -1.0, 0.0])), net.a.copy_(torch.tensor([2.0, 3.0]))
    z = torch.tensor([[[1.0, 0.0, 5.0], [0.0, 2.0, 1.0]]], dtype=DT)  # responses 1, -2
    with torch.no_grad():
        assert float(net(z)) == 2 * 1 + 3 * 0 + (1 - 2)
        net.shortcut = False
        assert float(net(z)) == 2.0


def test_bad_arguments():
    ws, as_ = _teacher()
    with pytest.raises(ValueError, match="shapes do not match"):
        population_loss(torch.zeros(4, dtype=DT), as_, ws, as_, True)
    with pytest.raises(TypeError, match="shortcut"):
        population_loss(ws, as_, ws, as_, 1)
    with pytest.raises(ValueError, match="non-finite"):
        population_grad(ws * math.nan, as_, ws, as_, True)
    with pytest.raises(ValueError, match="patches"):
        ShortcutConvNet(0, 3)
    with pytest.raises(ValueError, match="shape"):
        ShortcutConvNet(2, 3)(torch.zeros(1, 3, 3))
