import pytest
import torch

from compactnn.models.two_layer import TwoLayerNets


def test_forward_is_mean_field_sum_per_member():
    net = TwoLayerNets(3, 4, members=2, init_scale=1.0, generator=torch.Generator().manual_seed(0))
    x = torch.randn(5, 3)
    out = net(x)
    for s in range(2):
        ref = sum(net.a[s, j] * torch.relu(x @ net.w[s, j]) for j in range(4)) / 4
        torch.testing.assert_close(out[s], ref)
    torch.testing.assert_close(net(x.expand(2, 5, 3)), out)  # shared and per-member input


def test_complexity_and_alignment_closed_forms():
    net = TwoLayerNets(2, 2, members=1)
    with torch.no_grad():
        net.w.copy_(torch.tensor([[[3.0, 4.0], [0.0, 2.0]]]))
        net.a.copy_(torch.tensor([[-2.0, 1.0]]))
    assert float(net.complexity()) == (2 * 5 + 1 * 2) / 2
    u = torch.tensor([1.0, 0.0])
    # |a||w.u| = 2*3 + 1*0 = 6 over sum |a||w| = 12
    assert float(net.alignment(u)) == 0.5
    assert float(net.alignment(torch.tensor([0.0, 5.0]))) == pytest.approx((2 * 4 + 2) / 12)
    with torch.no_grad():
        net.w.copy_(torch.tensor([[[1.0, 0.0], [-2.0, 0.0]]]))
    assert float(net.alignment(u)) == 1.0


def test_init_scale_sets_second_layer_and_seeding():
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    a = TwoLayerNets(4, 8, 2, init_scale=0.0, generator=g1)
    b = TwoLayerNets(4, 8, 2, init_scale=0.0, generator=g2)
    assert float(a.a.detach().abs().max()) == 0.0 and float(a.complexity().max()) == 0.0
    torch.testing.assert_close(a.w, b.w)


def test_bad_arguments():
    with pytest.raises(ValueError, match="width"):
        TwoLayerNets(3, 0)
    with pytest.raises(ValueError, match="init_scale"):
        TwoLayerNets(3, 2, init_scale=-1.0)
    net = TwoLayerNets(3, 2, members=2)
    with pytest.raises(ValueError, match="shape"):
        net(torch.zeros(4, 2))
    with pytest.raises(ValueError, match="shape"):
        net(torch.zeros(3, 4, 3))
    with pytest.raises(ValueError, match="nonzero"):
        net.alignment(torch.zeros(3))
