"""factorize with calibration data: the data-aware initializers get the captured
inputs, the activations (detected or given) and their own keyword arguments;
the others warn that the data is not used."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from compactnn import LowRankLinear, factorize


def mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(),
                         nn.Linear(16, 4))


CALIB = torch.randn(64, 12, generator=torch.Generator().manual_seed(1))


def direct(model: nn.Module, **kwargs) -> LowRankLinear:
    """The first layer factorized by hand: its inputs are the calibration data."""
    return LowRankLinear.from_dense(model[0], 3, init="nonlinear", inputs=CALIB, **kwargs)


def test_first_layer_is_exactly_the_direct_fit_with_the_detected_activation():
    model = mlp()
    out, _ = factorize(model, rank=3, init="nonlinear", calibration=CALIB, steps=15)
    ref = direct(model, activation="relu", steps=15)
    assert torch.equal(out[0].dense_weight(), ref.dense_weight())
    assert torch.equal(out[0].bias, ref.bias)


def test_activations_override_reaches_the_initializer():
    model = mlp()
    detected, _ = factorize(model, rank=3, init="nonlinear", calibration=CALIB, steps=15)
    given, _ = factorize(model, rank=3, init="nonlinear", calibration=CALIB, steps=15,
                         activations={"0": "identity", "2": "tanh"})
    ref = direct(model, activation="identity", steps=15)
    assert torch.equal(given[0].dense_weight(), ref.dense_weight())
    # the override changes what is fitted, measurably, in both overridden layers
    for i in (0, 2):
        gap = (given[i].dense_weight() - detected[i].dense_weight()).abs().max()
        assert gap > 1e-3
    # the layer without an override sees another prefix but the same objective
    assert isinstance(given[4], LowRankLinear)


def test_init_kwargs_reach_the_initializer_on_the_calibration_path():
    model = mlp()
    short, _ = factorize(model, rank=3, init="nonlinear", calibration=CALIB, steps=3)
    longer, _ = factorize(model, rank=3, init="nonlinear", calibration=CALIB, steps=40)
    assert torch.equal(short[0].dense_weight(), direct(model, steps=3).dense_weight())
    assert torch.equal(longer[0].dense_weight(), direct(model, steps=40).dense_weight())
    assert not torch.equal(short[0].dense_weight(), longer[0].dense_weight())
    kept, _ = factorize(model, rank=3, init="nonlinear", calibration=CALIB, steps=3,
                        fit_bias=False)
    for i in (0, 2, 4):  # fit_bias=False keeps every dense bias exactly
        assert torch.equal(kept[i].bias, model[i].bias)
    assert not torch.equal(short[0].bias, model[0].bias)


def test_unknown_init_kwarg_is_refused_before_anything_changes():
    model = mlp()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(TypeError, match="unknown option.*stepz"):
        factorize(model, rank=3, init="nonlinear", calibration=CALIB, stepz=3, inplace=True)
    assert all(type(m) is not LowRankLinear for m in model)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_linear_output_inits_get_no_activation_and_say_so():
    model = mlp()
    with pytest.warns(UserWarning, match="activations are ignored: init='whitened'"):
        out, _ = factorize(model, rank=3, init="whitened", calibration=CALIB,
                           activations={"0": "relu"})
    ref = LowRankLinear.from_dense(model[0], 3, init="whitened", inputs=CALIB)
    assert torch.equal(out[0].dense_weight(), ref.dense_weight())


def test_activations_without_calibration_warn():
    with pytest.warns(UserWarning, match="only with calibration data"):
        factorize(mlp(), rank=3, init="nonlinear", activations={"0": "relu"})


def test_a_custom_data_aware_callable_gets_the_inputs():
    seen = []

    def init(layer, weight=None, bias=None, inputs=None, tag=None):
        seen.append((tag, sum(x.shape[0] for x in inputs)))
        return layer

    init.data_aware = True
    factorize(mlp(), rank=3, init=init, calibration=CALIB, tag="t")
    assert seen == [("t", 64)] * 3


def test_a_plain_callable_with_calibration_warns():
    def init(layer, weight=None, bias=None):
        return layer

    with pytest.warns(UserWarning, match="calibration is ignored: init='init'"):
        factorize(mlp(), rank=3, init=init, calibration=CALIB)
