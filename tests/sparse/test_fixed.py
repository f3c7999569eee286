import pytest
import torch
from torch import nn

from compactnn.models.qnet import STRUCTURES, StructuredQNet
from compactnn.sparse import (
    FixedSparseLinear,
    MaskedLinear,
    conv_connections,
    equal_dense_width,
    fixed_masks,
    local_mask,
    random_mask,
)


def test_random_mask_exact_count_and_seeded():
    g = torch.Generator().manual_seed(0)
    m = random_mask(7, 11, 30, g)
    assert m.shape == (7, 11) and m.dtype == torch.bool and int(m.sum()) == 30
    assert torch.equal(m, random_mask(7, 11, 30, torch.Generator().manual_seed(0)))
    assert int(random_mask(3, 4, 12).sum()) == 12 and int(random_mask(3, 4, 0).sum()) == 0


def test_local_mask_is_the_patch_of_each_unit():
    m = local_mask((2, 4, 5), kernel=3, units=2)
    ho, wo = 2, 3
    assert m.shape == (2 * ho * wo, 2 * 4 * 5)
    assert torch.equal(m.sum(1), torch.full((2 * ho * wo,), 2 * 9))
    # unit (f=1, i=1, j=2) sees rows 1..3 and columns 2..4 of both channels, nothing else
    row = m[1 * ho * wo + 1 * wo + 2].reshape(2, 4, 5)
    expect = torch.zeros(2, 4, 5, dtype=torch.bool)
    expect[:, 1:4, 2:5] = True
    assert torch.equal(row, expect)


def test_local_mask_equals_conv_unrolled_support():
    """A conv's Jacobian w.r.t. its input is nonzero exactly on the local mask."""
    conv = nn.Conv2d(2, 3, 3)
    with torch.no_grad():
        conv.weight.fill_(1.0)
    jac = torch.autograd.functional.jacobian(lambda x: conv(x.reshape(1, 2, 5, 4)).flatten(),
                                             torch.zeros(40))
    assert torch.equal(jac != 0, local_mask((2, 5, 4), 3, 3))
    assert conv_connections(conv, (2, 5, 4)) == int(local_mask((2, 5, 4), 3, 3).sum())
    padded = nn.Conv2d(1, 1, 3, padding=1)  # corners read 4 pixels, edges 6, inside 9
    assert conv_connections(padded, (1, 3, 3)) == 4 * 4 + 4 * 6 + 9


def test_masked_linear_forward_gradient_and_storage():
    mask = random_mask(5, 6, 12, torch.Generator().manual_seed(1))
    layer = MaskedLinear(mask)
    assert bool((layer.weight[~mask] == 0).all())  # zero in storage from the start
    with torch.no_grad():
        layer.weight.fill_(1.0)  # even if someone writes off-mask weights...
    x = torch.randn(3, 6)
    torch.testing.assert_close(layer(x), x @ (mask.float()).T + layer.bias)  # ...forward masks
    layer(x).pow(2).sum().backward()
    assert bool((layer.weight.grad[~mask] == 0).all())
    assert bool((layer.weight.grad[mask] != 0).any())


def test_masked_linear_stays_sparse_under_optimizers():
    mask = random_mask(4, 4, 5, torch.Generator().manual_seed(2))
    layer = MaskedLinear(mask)
    for opt in (torch.optim.Adam(layer.parameters(), weight_decay=0.1),
                torch.optim.RMSprop(layer.parameters(), centered=True, momentum=0.9)):
        for _ in range(3):
            opt.zero_grad()
            layer(torch.randn(8, 4)).sum().backward()
            opt.step()
    assert bool((layer.weight[~mask] == 0).all())


@pytest.mark.parametrize("layer_cls", [MaskedLinear, FixedSparseLinear])
def test_init_uses_each_units_connections_as_fan_in(layer_cls):
    mask = torch.zeros(2, 100, dtype=torch.bool)
    mask[0, :4] = True
    mask[1, :] = True
    torch.manual_seed(0)
    w = layer_cls(mask).weight.detach()
    # row 0 has fan-in 4 (bound 1/2), row 1 fan-in 100 (bound 1/10); with in_features as
    # the fan-in both would be bounded by 1/10
    assert 0.1 < float(w[0].abs().max()) <= 0.5 and float(w[1].abs().max()) <= 0.1
    assert bool((w[0, 4:] == 0).all())
    torch.manual_seed(1)
    a = layer_cls(mask).weight.detach()
    torch.manual_seed(1)
    assert torch.equal(a, layer_cls(mask).weight.detach())  # seeded


def test_fixed_masks_count_parameters():
    model = nn.Sequential(MaskedLinear(random_mask(3, 4, 5)), nn.ReLU(), nn.Linear(3, 2))
    masks = fixed_masks(model)
    assert list(masks) == ["0.weight"]
    assert masks.num_params(model) == 5 + 3 + 3 * 2 + 2


@pytest.mark.parametrize("learn", [True, False])
def test_structured_qnet_equal_connections(learn):
    nets = {s: StructuredQNet((4, 10, 10), 6, s, learn_hidden=learn,
                              generator=torch.Generator().manual_seed(0)) for s in STRUCTURES}
    n = 16 * 8 * 8 * 4 * 9
    for s in ("random", "local", "conv"):
        assert nets[s].hidden_connections() == n and nets[s].width == 1024
    assert nets["dense"].width == equal_dense_width(n, 400) == n // 400
    assert nets["conv"].hidden_weights() == 16 * 4 * 9
    assert nets["local"].hidden_weights() == nets["random"].hidden_weights() == n
    for s, net in nets.items():
        assert net(torch.zeros(2, 4, 10, 10)).shape == (2, 6)
        trainable = {name for name, p in net.named_parameters() if p.requires_grad}
        weight = "hidden.values" if s in ("random", "local") else "hidden.weight"
        assert trainable == ({weight, "hidden.bias", "head.weight", "head.bias"}
                             if learn else {"head.weight", "head.bias"}), s
        # the parameter count is the hidden layer's distinct weights plus biases
        total = sum(p.numel() for p in net.parameters())
        hidden_bias = 16 if s == "conv" else net.width  # a conv has one bias per filter
        assert total == net.hidden_weights() + hidden_bias + net.width * 6 + 6, s


def test_bad_arguments():
    with pytest.raises(TypeError, match="bool"):
        MaskedLinear(torch.ones(2, 2))
    with pytest.raises(ValueError, match="nonzeros"):
        random_mask(2, 2, 5)
    with pytest.raises(ValueError, match="kernel"):
        local_mask((1, 3, 3), 4)
    with pytest.raises(ValueError, match="in_shape"):
        local_mask((3, 3), 2)
    with pytest.raises(ValueError, match="structure"):
        StructuredQNet((1, 5, 5), 2, "banded")
    with pytest.raises(ValueError, match="in_shape"):
        StructuredQNet((5, 5), 2, "dense")
    with pytest.raises(ValueError, match="kernel"):
        StructuredQNet((1, 5, 5), 2, "conv", kernel=6)


def test_masked_linear_sees_every_change_of_its_mask_and_dtype():
    """The forward's cached float mask follows in-place edits, loaded state, copies and
    dtype or device moves: the output is always x (W * M)^T + b with the current M."""
    import copy

    torch.manual_seed(0)
    mask = torch.rand(6, 5) < 0.5
    layer = MaskedLinear(mask)
    x = torch.randn(3, 5)

    def want(m: MaskedLinear, inp: torch.Tensor) -> torch.Tensor:
        return inp @ (m.weight * m.mask.to(m.weight.dtype)).T + m.bias

    assert torch.equal(layer(x), want(layer, x))
    with torch.no_grad():
        layer.weight.fill_(1.0)  # storage off the mask no longer zero: the mask still rules
    layer.mask[0] = ~layer.mask[0]  # an in-place edit of the mask
    assert torch.equal(layer(x), want(layer, x))
    other = MaskedLinear(torch.rand(6, 5) < 0.5)
    layer.load_state_dict(other.state_dict())
    assert torch.equal(layer.mask, other.mask) and torch.equal(layer(x), other(x))
    twin = copy.deepcopy(layer)
    twin.mask.logical_not_()
    assert torch.equal(twin(x), want(twin, x)) and torch.equal(layer(x), want(layer, x))
    layer.double()
    assert layer(x.double()).dtype == torch.float64
    assert torch.equal(layer(x.double()), want(layer, x.double()))
