"""FixedSparseLinear: MaskedLinear's function with only the connected weights stored."""

import copy

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from compactnn.sparse import FixedSparseLinear, MaskedLinear, random_mask


def _pair(out: int, inp: int, nnz: int, seed: int) -> tuple[MaskedLinear, FixedSparseLinear]:
    torch.manual_seed(seed)
    masked = MaskedLinear(random_mask(out, inp, nnz, torch.Generator().manual_seed(seed)))
    return masked, FixedSparseLinear.from_masked(masked)


@settings(max_examples=30, deadline=None)
@given(out=st.integers(1, 7), inp=st.integers(1, 9), frac=st.floats(0.0, 1.0),
       batch=st.integers(1, 4), seed=st.integers(0, 2**16))
def test_same_function_and_gradients_as_masked_linear(out, inp, frac, batch, seed):
    masked, sparse = _pair(out, inp, round(frac * out * inp), seed)
    assert sparse.nonzeros() == masked.nonzeros() == sparse.values.numel()
    torch.testing.assert_close(sparse.weight, masked.weight * masked.mask, rtol=0, atol=0)
    x = torch.randn(batch, inp, dtype=torch.float64).float()
    y_m, y_s = masked(x), sparse(x)
    torch.testing.assert_close(y_s, y_m)
    g = torch.randn_like(y_m)
    (y_m * g).sum().backward()
    (y_s * g).sum().backward()
    # d/d values is the masked weight's gradient at the connections, in row-major order
    torch.testing.assert_close(sparse.values.grad, masked.weight.grad[masked.mask])
    torch.testing.assert_close(sparse.bias.grad, masked.bias.grad)
    back = sparse.to_masked()  # and back: the same mask, weights and bias, exactly
    assert torch.equal(back.mask, masked.mask) and torch.equal(back.bias, masked.bias)
    assert torch.equal(back.weight, masked.weight * masked.mask)


def test_training_trajectory_equals_masked_linear():
    """RMSprop (centered, as DQN uses it) and Adam take the same steps on the connected
    weights whichever storage holds them."""
    for make_opt in (lambda p: torch.optim.RMSprop(p, lr=1e-2, centered=True, eps=0.01),
                     lambda p: torch.optim.Adam(p, lr=1e-2)):
        masked, sparse = _pair(6, 5, 11, 3)
        opts = [make_opt(masked.parameters()), make_opt(sparse.parameters())]
        gen = torch.Generator().manual_seed(0)
        for _ in range(5):
            x = torch.randn(8, 5, generator=gen)
            for layer, opt in zip((masked, sparse), opts, strict=True):
                opt.zero_grad()
                layer(x).square().sum().backward()
                opt.step()
        torch.testing.assert_close(sparse.weight, masked.weight * masked.mask)
        assert bool((masked.weight[~masked.mask] == 0).all())


def test_parameters_are_the_connections():
    mask = random_mask(30, 40, 100, torch.Generator().manual_seed(0))
    layer = FixedSparseLinear(mask)
    assert sum(p.numel() for p in layer.parameters()) == 100 + 30
    assert sum(p.numel() for p in FixedSparseLinear(mask, bias=False).parameters()) == 100
    assert "nonzeros=100" in repr(layer)


def test_loaded_mask_and_copies_take_effect():
    torch.manual_seed(0)
    layer = FixedSparseLinear(random_mask(5, 6, 9, torch.Generator().manual_seed(0)))
    other = FixedSparseLinear(random_mask(5, 6, 9, torch.Generator().manual_seed(1)))
    x = torch.randn(3, 6)
    layer(x)  # caches the first mask's index
    layer.load_state_dict(other.state_dict())
    assert torch.equal(layer(x), other(x))
    twin = copy.deepcopy(layer)
    assert torch.equal(twin(x), other(x))
    twin.double()
    assert twin(x.double()).dtype == torch.float64
    torch.testing.assert_close(twin(x.double()).float(), other(x))


def test_bad_arguments_and_inconsistent_state():
    with pytest.raises(TypeError, match="bool"):
        FixedSparseLinear(torch.ones(2, 2))
    with pytest.raises(ValueError, match="empty"):
        FixedSparseLinear(torch.ones(0, 2, dtype=torch.bool))
    with pytest.raises(ValueError, match="mask"):
        FixedSparseLinear(torch.ones(2, dtype=torch.bool))
    with pytest.raises(TypeError, match="bias"):
        FixedSparseLinear(torch.ones(2, 2, dtype=torch.bool), bias=1)
    with pytest.raises(TypeError, match="layer"):
        FixedSparseLinear.from_masked(torch.nn.Linear(2, 2))
    layer = FixedSparseLinear(torch.ones(2, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="3 features"):
        layer(torch.randn(4, 2))
    layer.mask[0, 0] = False  # a mask edited out of step with the values is refused
    with pytest.raises(ValueError, match="5 connections but values has 6"):
        layer(torch.randn(4, 3))


def test_reused_weight_follows_every_change():
    """Without autograd (a frozen layer, a target network, torch.no_grad) the dense
    weight is reused; an in-place step on the values, a new mask, a dtype move, or an
    edit of the returned matrix must still be seen by the next call."""
    torch.manual_seed(0)
    layer = FixedSparseLinear(random_mask(5, 6, 9, torch.Generator().manual_seed(0)))
    x = torch.randn(3, 6)

    def want() -> torch.Tensor:
        w = torch.zeros(5, 6)
        w[layer.mask] = layer.values.detach()
        return x @ w.T + layer.bias.detach()

    with torch.no_grad():
        torch.testing.assert_close(layer(x), want())
        assert layer.weight is layer.weight  # reused
        layer.values.mul_(-2.0)  # an optimizer's in-place step
        torch.testing.assert_close(layer(x), want())
        layer.weight.fill_(7.0)  # an edit of the returned matrix is not kept
        torch.testing.assert_close(layer(x), want())
    layer.requires_grad_(False)  # frozen: reused with grad mode on too
    torch.testing.assert_close(layer(x), want())
    layer.load_state_dict(FixedSparseLinear(layer.mask.flip(0)).state_dict())
    torch.testing.assert_close(layer(x), want())
    layer.requires_grad_(True)
    y = layer(x)
    assert y.requires_grad  # with autograd on, the weight is built in the graph
    torch.testing.assert_close(y, want())


def test_compiles_and_matches_eager():
    """torch.compile (aot_eager: dynamo and autograd tracing, no C++ build) gives the
    eager outputs and gradients, with and without autograd."""
    torch._dynamo.reset()
    torch.manual_seed(0)
    layer = FixedSparseLinear(random_mask(8, 6, 20, torch.Generator().manual_seed(0)))
    compiled = torch.compile(layer, backend="aot_eager")
    x = torch.randn(4, 6)
    y, y_c = layer(x), compiled(x)
    torch.testing.assert_close(y_c, y)
    g = torch.autograd.grad(y.square().sum(), [layer.values, layer.bias])
    g_c = torch.autograd.grad(y_c.square().sum(), [layer.values, layer.bias])
    for a, b in zip(g, g_c, strict=True):
        torch.testing.assert_close(b, a)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), layer(x))
