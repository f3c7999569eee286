"""Frobenius decay [FNL]: value and gradients against the dense product and the
closed forms, under torch.compile; optimizer parameter groups."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from compactnn import LowRankConv2d, LowRankLinear, frobenius_decay, param_groups
from compactnn.regularize import frobenius_norm_sq, lowrank_layers

F64 = torch.float64


def make_layers() -> list[nn.Module]:
    torch.manual_seed(0)
    return [
        LowRankLinear(12, 9, rank=4, dtype=F64),
        LowRankConv2d(4, 6, (3, 2), rank=4, groups=2, scheme="channel", dtype=F64),
        LowRankConv2d(4, 6, (3, 2), rank=4, groups=2, scheme="spatial", dtype=F64),
        LowRankConv2d(3, 5, 3, rank=2, scheme="spatial", bias=False, dtype=F64),
    ]


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.conv = LowRankConv2d(3, 8, 3, rank=4, groups=1, padding=1, scheme="spatial")
        self.conv2 = LowRankConv2d(8, 8, 3, rank=4, groups=2, padding=1)
        self.norm = nn.BatchNorm2d(8)
        self.block = nn.Sequential(LowRankLinear(8, 16, rank=3), nn.ReLU(), nn.Linear(16, 4))

    def forward(self, x):
        x = self.norm(self.conv2(self.conv(x).relu()))
        return self.block(x.mean((2, 3)))


def dense_decay(model: nn.Module, coef: float) -> torch.Tensor:
    """coef/2 * sum ||U V||_F^2 with the product built densely."""
    total = 0
    for _, layer in lowrank_layers(model):
        total = total + layer.dense_weight().square().sum()
    return 0.5 * coef * total


# --------------------------------------------------------------------------- value


@pytest.mark.parametrize("index", range(4))
def test_value_equals_dense_product_norm(index):
    layer = make_layers()[index]
    coef = 0.3
    expected = 0.5 * coef * layer.dense_weight().detach().square().sum()
    torch.testing.assert_close(frobenius_decay(layer, coef).detach(), expected)
    torch.testing.assert_close(frobenius_norm_sq(layer).detach(),
                               layer.dense_weight().detach().square().sum())


def test_value_sums_over_layers_of_a_model():
    model = nn.Sequential(*make_layers())
    torch.testing.assert_close(frobenius_decay(model, 1e-2), dense_decay(model, 1e-2))
    # and scales linearly in the coefficient
    torch.testing.assert_close(frobenius_decay(model, 2e-2), 2 * frobenius_decay(model, 1e-2))


def test_value_differs_from_weight_decay_on_factors():
    layer = make_layers()[0]
    fd = frobenius_decay(layer, 1.0).item()
    wd = 0.5 * (layer.U.square().sum() + layer.V.square().sum()).item()
    assert abs(fd - wd) > 1e-3 * wd


# --------------------------------------------------------------------------- gradients


@pytest.mark.parametrize("index", range(4))
def test_gradients_match_autograd_of_dense_product(index):
    layer = make_layers()[index]
    coef = 0.7
    frobenius_decay(layer, coef).backward()
    gu, gv = layer.U.grad.clone(), layer.V.grad.clone()
    layer.zero_grad()
    (0.5 * coef * layer.dense_weight().square().sum()).backward()
    torch.testing.assert_close(gu, layer.U.grad)
    torch.testing.assert_close(gv, layer.V.grad)
    if layer.bias is not None:
        assert layer.bias.grad is None or layer.bias.grad.abs().sum() == 0


@pytest.mark.parametrize("index", range(4))
def test_gradients_match_closed_forms(index):
    """d/dU = coef U V V^T and d/dV = coef U^T U V in the matrix view; mapped back to
    the parameter layout by set_factor_matrices (a reshape/permutation)."""
    layer = make_layers()[index]
    coef = 0.4
    frobenius_decay(layer, coef).backward()
    with torch.no_grad():
        u, v = layer.factor_matrices()
        grad_u = coef * u @ v @ v.transpose(-2, -1)
        grad_v = coef * u.transpose(-2, -1) @ u @ v
        holder = make_layers()[index]
        holder.set_factor_matrices(grad_u, grad_v)
    torch.testing.assert_close(layer.U.grad, holder.U.detach())
    torch.testing.assert_close(layer.V.grad, holder.V.detach())


def test_gradient_step_shrinks_the_product():
    layer = make_layers()[1]
    before = layer.dense_weight().detach().norm()
    opt = torch.optim.SGD(layer.parameters(), lr=0.1)
    for _ in range(5):
        opt.zero_grad()
        frobenius_decay(layer, 1.0).backward()
        opt.step()
    assert layer.dense_weight().detach().norm() < 0.9 * before


# --------------------------------------------------------------------------- edge cases


@pytest.mark.parametrize("model", [nn.Sequential(nn.Linear(3, 3), nn.ReLU()), nn.ReLU(),
                                   nn.Conv2d(2, 2, 1)])
def test_zero_without_lowrank_layers_warns_naming_the_model(model):
    # the dense model passed instead of the factorized one: a silent 0 hides the mistake
    with pytest.warns(UserWarning, match=f"the model \\({type(model).__name__}\\) has no "
                      "low-rank layer.*pass the factorized model"):
        out = frobenius_decay(model, 0.1)
    assert out.shape == ()
    assert out.item() == 0.0
    loss = out + sum((p.sum() for p in model.parameters()), torch.zeros(()))
    if any(True for _ in model.parameters()):
        loss.backward()  # adding it to a loss works


def test_zero_coefficient():
    model = nn.Sequential(*make_layers())
    assert frobenius_decay(model, 0.0).item() == 0.0


@pytest.mark.parametrize("coef", [-1e-4, -1.0, float("nan"), float("inf"), -float("inf")])
def test_bad_coefficient(coef):
    with pytest.raises(ValueError, match=f"coef={coef}"):
        frobenius_decay(nn.Sequential(*make_layers()), coef)


@pytest.mark.parametrize("coef", ["1e-4", None, [1e-4], True])
def test_coefficient_of_the_wrong_type_is_a_type_error(coef):
    with pytest.raises(TypeError, match="coef must be a number"):
        frobenius_decay(nn.Sequential(*make_layers()), coef)


def test_regularizers_refuse_a_non_module():
    with pytest.raises(TypeError, match="model must be a Module"):
        frobenius_decay([LowRankLinear(4, 4, 2)], 1e-4)
    with pytest.raises(TypeError, match="model must be a Module"):
        param_groups("model", 1e-4)


def test_nested_and_wrapped_models():
    net = Net()
    names = [n for n, _ in lowrank_layers(net)]
    assert names == ["conv", "conv2", "block.0"]
    torch.testing.assert_close(frobenius_decay(net, 0.5), dense_decay(net, 0.5))


def test_under_torch_compile_aot_eager():
    net = Net()
    coef = 1e-2
    eager = frobenius_decay(net, coef)
    eager.backward()
    grads = {n: p.grad.clone() for n, p in net.named_parameters() if p.grad is not None}
    net.zero_grad(set_to_none=True)
    compiled = torch.compile(lambda m: frobenius_decay(m, coef), backend="aot_eager",
                             fullgraph=True)
    value = compiled(net)
    torch.testing.assert_close(value, eager)
    value.backward()
    got = {n: p.grad for n, p in net.named_parameters() if p.grad is not None}
    assert set(got) == set(grads) == {"conv.U", "conv.V", "conv2.U", "conv2.V", "block.0.U",
                                      "block.0.V"}
    for n in grads:
        torch.testing.assert_close(got[n], grads[n])


# --------------------------------------------------------------------------- param groups


def test_param_groups_split():
    net = Net()
    groups = param_groups(net, weight_decay=5e-4, lr=0.1)
    assert len(groups) == 2
    by_decay = {g["weight_decay"]: g for g in groups}
    assert set(by_decay) == {5e-4, 0.0}
    factor_ids = {id(p) for _, layer in lowrank_layers(net) for p in (layer.U, layer.V)}
    assert {id(p) for p in by_decay[0.0]["params"]} == factor_ids
    assert all(g["lr"] == 0.1 for g in groups)
    # every trainable parameter exactly once
    listed = [id(p) for g in groups for p in g["params"]]
    assert len(listed) == len(set(listed))
    assert set(listed) == {id(p) for p in net.parameters()}
    # biases and norm parameters are decayed
    decayed = {id(p) for p in by_decay[5e-4]["params"]}
    assert id(net.conv.bias) in decayed and id(net.norm.weight) in decayed


def test_param_groups_factor_decay_frozen_and_shared():
    net = Net()
    net.norm.weight.requires_grad_(False)
    shared = nn.Sequential(net, net.block)  # block appears twice
    groups = param_groups(shared, weight_decay=0.1, factor_weight_decay=0.01)
    listed = [id(p) for g in groups for p in g["params"]]
    assert len(listed) == len(set(listed))
    assert id(net.norm.weight) not in listed
    assert {g["weight_decay"] for g in groups} == {0.1, 0.01}


def test_param_groups_with_adamw_decays_only_dense_params():
    net = Net()
    groups = param_groups(net, weight_decay=0.5)
    opt = torch.optim.AdamW(groups, lr=0.1)
    before = {n: p.detach().clone() for n, p in net.named_parameters()}
    opt.zero_grad()
    for p in net.parameters():
        p.grad = torch.zeros_like(p)  # only the decoupled weight decay moves parameters
    opt.step()
    for n, p in net.named_parameters():
        if n.endswith((".U", ".V")):
            assert torch.equal(p, before[n]), n
        else:
            torch.testing.assert_close(p.detach(), before[n] * (1 - 0.1 * 0.5))


def test_param_groups_lowrank_only_model():
    model = nn.Sequential(LowRankLinear(4, 4, rank=2, bias=False))
    groups = param_groups(model, 1e-4)
    factors = [g for g in groups if g["weight_decay"] == 0.0]
    assert len(factors) == 1 and len(factors[0]["params"]) == 2
    torch.optim.AdamW(groups, lr=1e-3).step()  # empty dense group is accepted


def test_param_groups_dense_model_single_group():
    groups = param_groups(nn.Linear(3, 2), 1e-2)
    assert len(groups) == 1 and len(groups[0]["params"]) == 2


@pytest.mark.parametrize(("kwargs", "needle"), [({"weight_decay": -1.0}, "weight_decay=-1.0"),
                                                ({"factor_weight_decay": -0.5},
                                                 "factor_weight_decay=-0.5"),
                                                ({"weight_decay": float("nan")},
                                                 "weight_decay=nan")])
def test_param_groups_bad_decay(kwargs, needle):
    args = {"weight_decay": 0.1, **kwargs}
    with pytest.raises(ValueError, match=needle):
        param_groups(Net(), **args)


@pytest.mark.parametrize("kwargs", [{"weight_decay": "x"}, {"factor_weight_decay": "0"},
                                    {"weight_decay": None}])
def test_param_groups_decay_of_the_wrong_type(kwargs):
    args = {"weight_decay": 0.1, **kwargs}
    name = next(iter(kwargs))
    with pytest.raises(TypeError, match=f"{name} must be a number"):
        param_groups(Net(), **args)
