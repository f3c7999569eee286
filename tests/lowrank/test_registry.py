"""The initializer registry and its data-aware / activation-aware flags."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from compactnn import LowRankLinear
from compactnn.lowrank import (
    available_initializers,
    get_initializer,
    is_data_aware,
    lookup_initializer,
    register_initializer,
)
from compactnn.lowrank import registry as registry_mod


def test_builtin_flags():
    assert available_initializers(data_aware=True) == ["asvd", "lstsq", "nonlinear", "whitened"]
    assert lookup_initializer("nonlinear").activation_aware
    assert not lookup_initializer("whitened").activation_aware
    assert not lookup_initializer("lstsq").activation_aware
    assert not is_data_aware("spectral") and not is_data_aware("default")
    assert is_data_aware(get_initializer("lstsq"))  # by function too


def test_register_and_use_by_name(monkeypatch):
    monkeypatch.setattr(registry_mod, "_INITIALIZERS", dict(registry_mod._INITIALIZERS))

    @register_initializer("zeros_for_test", data_aware=True)
    def zeros_(layer, weight=None, bias=None, inputs=None):
        with torch.no_grad():
            layer.U.zero_()
            layer.V.zero_()
        return layer

    assert "zeros_for_test" in available_initializers(data_aware=True)
    assert lookup_initializer(zeros_).name == "zeros_for_test"
    layer = LowRankLinear.from_dense(nn.Linear(4, 4), 2, init="zeros_for_test")
    assert torch.count_nonzero(layer.dense_weight()) == 0


def test_unregistered_callables_describe_themselves():
    def plain(layer, weight=None, bias=None):
        return layer

    def aware(layer, weight=None, bias=None, inputs=None):
        return layer

    aware.data_aware = True
    assert not is_data_aware(plain)
    assert is_data_aware(aware) and not lookup_initializer(aware).activation_aware
    aware.data_aware = "yes"  # only a real True counts
    assert not is_data_aware(aware)


@pytest.mark.parametrize(("call", "exc", "needle"), [
    (lambda: get_initializer("bogus"), ValueError, "unknown init='bogus'"),
    (lambda: lookup_initializer(3), TypeError, "init must be"),
    (lambda: register_initializer(""), TypeError, "non-empty"),
    (lambda: register_initializer("x", data_aware="no"), TypeError, "data_aware must be a bool"),
    (lambda: register_initializer("x", activation_aware=True), ValueError, "needs data_aware"),
    (lambda: available_initializers(data_aware=1), TypeError, "data_aware must be a bool"),
])
def test_bad_registry_calls(call, exc, needle):
    with pytest.raises(exc) as info:
        call()
    assert needle in str(info.value)
