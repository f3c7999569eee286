"""Sequential, calibration-driven compression: forward order, the compressed
prefix's activations, activation detection, batch formats and bad input."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from compactnn import LowRankConv2d, LowRankLinear
from compactnn.init import ACTIVATIONS
from compactnn.lowrank import available_initializers, is_data_aware, lookup_initializer
from compactnn.surgery import compress_sequential, detect_activations


def gen(seed):
    return torch.Generator().manual_seed(seed)


def mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 16), nn.GELU(),
                         nn.Linear(16, 4))


def recorder(rank=3, init="nonlinear", log=None):
    """A build that records what it was given, then factorizes with ``init``."""

    def build(module, inputs=None, activation=None):
        if log is not None:
            log.append({"module": module, "activation": activation,
                        "inputs": torch.cat([x.reshape(-1, x.shape[-1]) for x in inputs])})
        extra = {"activation": activation} if lookup_initializer(init).activation_aware else {}
        return LowRankLinear.from_dense(module, rank, init=init, inputs=inputs, **extra)

    return build


def test_data_aware_inits_are_registered():
    assert available_initializers(data_aware=True) == ["asvd", "lstsq", "nonlinear", "whitened"]
    assert not is_data_aware("spectral") and not is_data_aware("default")
    assert set(available_initializers(data_aware=False)) >= {"default", "spectral"}
    assert {"relu", "identity", "gelu", "silu"} <= set(ACTIVATIONS)


def test_forward_order_and_compressed_prefix_inputs():
    model = mlp()
    dense = [model[0], model[2], model[4]]
    x = torch.randn(64, 8, generator=gen(1))
    log = []
    build = recorder(log=log)
    compress_sequential(model, [("4", build), ("0", build), ("2", build)], x)
    assert [e["module"] for e in log] == dense           # forward order, not list order
    assert [e["activation"] for e in log] == ["relu", "gelu", "identity"]
    assert all(isinstance(model[i], LowRankLinear) for i in (0, 2, 4))
    with torch.no_grad():
        want = F.relu(model[0](x))                        # compressed layer 0 + activation
        dense_path = F.relu(dense[0](x))
        assert torch.allclose(log[1]["inputs"], want, atol=1e-6)
        assert not torch.allclose(log[1]["inputs"], dense_path, atol=1e-3)
        assert torch.allclose(log[2]["inputs"], F.gelu(model[2](want)), atol=1e-6)
        assert torch.equal(log[0]["inputs"], x)


def test_sequential_nonlinear_beats_spectral_on_the_network_output():
    model = mlp()
    x = torch.randn(256, 8, generator=gen(2))
    with torch.no_grad():
        ref = model(x)
    spec = mlp()
    for name in ("0", "2", "4"):
        setattr(spec, name, LowRankLinear.from_dense(spec.get_submodule(name), 3))
    compress_sequential(model, [(n, recorder()) for n in ("0", "2", "4")], x)
    with torch.no_grad():
        assert (model(x) - ref).square().mean() < (spec(x) - ref).square().mean()


def test_batch_formats_tuples_dicts_loaders_and_streaming_agree():
    x = torch.randn(96, 8, generator=gen(3))
    y = torch.zeros(96)

    class KwModel(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = mlp()

        def forward(self, inputs):
            return self.net(inputs)

    results = []
    for calib, cache in [(x, 1 << 30), (list(x.split(32)), 0),
                         (DataLoader(TensorDataset(x, y), batch_size=32), 1 << 30),
                         ((b for b in x.split(40)), 1 << 30)]:
        model = mlp()
        compress_sequential(model, [(n, recorder(init="lstsq")) for n in ("0", "2")], calib,
                            cache_bytes=cache)
        results.append(model[2].dense_weight())
    kw = KwModel()
    compress_sequential(kw, [(n, recorder(init="lstsq")) for n in ("net.0", "net.2")],
                        [{"inputs": b} for b in x.split(48)])
    results.append(kw.net[2].dense_weight())
    for r in results[1:]:
        assert torch.allclose(r, results[0], atol=1e-4)


def test_user_activations_override_detection():
    model = mlp()
    log = []
    compress_sequential(model, [("0", recorder(log=log))], torch.randn(32, 8),
                        activations={"0": "identity"})
    assert log[0]["activation"] == "identity"


class Residual(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(6, 6)
        self.b = nn.Linear(6, 6)
        self.c = nn.Linear(6, 6)
        self.act = nn.SiLU()

    def forward(self, x):
        h = self.a(x)
        h = h + torch.relu(h)          # two consumers: the linear output matters
        g = F.gelu(self.b(h))           # functional activation
        return self.act(self.c(g))


class Untraceable(Residual):
    def forward(self, x):
        if float(x.sum()) > -1e9:       # data-dependent control flow defeats torch.fx
            h = torch.tanh(self.a(x))
            return self.act(self.c(nn.functional.relu(self.b(h))))
        return x


def test_detect_activations_by_tracing_and_by_hooks():
    names = ["a", "b", "c"]
    assert detect_activations(Residual(), names) == {"a": "identity", "b": "gelu",
                                                     "c": "silu"}
    # hooks see modules only: the functional relu after b is not visible
    got = detect_activations(Untraceable(), names, torch.randn(3, 6))
    assert got == {"a": "identity", "b": "identity", "c": "silu"}
    seq = nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.1), nn.Tanh(), nn.Linear(4, 4),
                        nn.Sigmoid())
    assert detect_activations(seq, ["0", "3"]) == {"0": "tanh", "3": "sigmoid"}


def test_shared_module_called_twice_sees_both_inputs():
    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(5, 5)

        def forward(self, x):
            return self.lin(torch.relu(self.lin(x)))

    model = Twice()
    x = torch.randn(20, 5, generator=gen(4))
    log = []
    compress_sequential(model, [("lin", recorder(rank=2, log=log))], x)
    assert log[0]["inputs"].shape[0] == 40


def test_conv_network_compresses_in_data_mode():
    torch.manual_seed(1)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3),
                          nn.ReLU(), nn.Flatten(), nn.Linear(8 * 6 * 6, 5))
    imgs = torch.randn(16, 3, 8, 8, generator=gen(5))

    def conv_build(module, **kw):
        return LowRankConv2d.from_dense(module, 2, init="nonlinear", steps=30, **kw)

    compress_sequential(model, [("0", conv_build), ("2", conv_build),
                                ("5", recorder(rank=2))], imgs)
    assert isinstance(model[0], LowRankConv2d) and isinstance(model[2], LowRankConv2d)
    assert model(imgs).shape == (16, 5)


# -- bad input: clear errors, model untouched ------------------------------------------------
def _state(model):
    return ({n: type(m) for n, m in model.named_modules()},
            {k: v.clone() for k, v in model.state_dict().items()})


def _assert_untouched(model, before):
    types, state = _state(model)
    assert types == before[0]
    assert state.keys() == before[1].keys()
    assert all(torch.equal(state[k], before[1][k]) for k in state)


@pytest.mark.parametrize("calib,err,match", [
    (torch.full((8, 8), float("nan")), ValueError, "non-finite"),
    (torch.empty(0, 8), ValueError, "empty"),
    ([], ValueError, "empty"),
    (torch.randn(8, 7), ValueError, "failed on the first calibration batch"),
    (None, ValueError, "required"),
    (3.0, TypeError, "calibration must be"),
])
def test_bad_calibration_raises_and_leaves_the_model_untouched(calib, err, match):
    model = mlp()
    before = _state(model)
    with pytest.raises(err, match=match):
        compress_sequential(model, [("0", recorder()), ("2", recorder())], calib)
    _assert_untouched(model, before)


def test_bad_targets_and_activations_are_named():
    model = mlp()
    before = _state(model)
    x = torch.randn(8, 8)
    with pytest.raises(ValueError, match="not a submodule"):
        compress_sequential(model, [("9", recorder())], x)
    with pytest.raises(ValueError, match="activation must be one of"):
        compress_sequential(model, [("0", recorder())], x, activations={"0": "softsign"})
    with pytest.raises(ValueError, match="not a target"):
        compress_sequential(model, [("0", recorder())], x, activations={"2": "relu"})
    _assert_untouched(model, before)

    class Unused(nn.Module):
        def __init__(self):
            super().__init__()
            self.used, self.spare = nn.Linear(8, 8), nn.Linear(8, 8)

        def forward(self, x):
            return self.used(x)

    other = Unused()
    before = _state(other)
    with pytest.raises(ValueError, match="never called"):
        compress_sequential(other, [("used", recorder()), ("spare", recorder())], x)
    _assert_untouched(other, before)


def test_failure_mid_way_restores_the_layers_already_replaced():
    model = mlp()
    before = _state(model)
    x = torch.randn(32, 8)
    # layer 4 (16 -> 4) has full rank 4: rank 6 fails after 0 and 2 were replaced
    with pytest.raises(ValueError, match="exceeds the full rank"):
        compress_sequential(model, [("0", recorder(rank=6)), ("2", recorder(rank=6)),
                                    ("4", recorder(rank=6))], x)
    _assert_untouched(model, before)
    assert model.training  # mode restored


def test_unsupported_conv_in_data_mode_restores_the_model():
    model = nn.Sequential(nn.Conv2d(4, 8, 3, groups=2), nn.ReLU())
    before = _state(model)

    def build(module, **kw):
        return LowRankConv2d.from_dense(module, 2, init="nonlinear", **kw)

    with pytest.raises(ValueError, match="groups=2"):
        compress_sequential(model, [("0", build)], torch.randn(2, 4, 6, 6))
    _assert_untouched(model, before)


def test_module_registered_twice_is_replaced_everywhere():
    lin = nn.Linear(5, 5)
    model = nn.Sequential(lin, nn.ReLU(), lin)
    compress_sequential(model, [("0", recorder(rank=2))], torch.randn(16, 5))
    assert isinstance(model[0], LowRankLinear) and model[2] is model[0]


class _CountingBatches:
    """A re-iterable of batches that counts how often it is read."""

    def __init__(self, batches):
        self.batches, self.passes = batches, 0

    def __iter__(self):  # counted once reading starts
        self.passes += 1
        yield from self.batches


@pytest.mark.parametrize("cache_bytes, passes", [(1 << 20, 1), (1000, 3)])
def test_layer_inputs_cache_the_first_full_pass(cache_bytes, passes):
    from compactnn.init import LayerInputs

    layer = LowRankConv2d(3, 4, 3, rank=2)
    src = _CountingBatches([torch.randn(2, 3, 6, 6), torch.randn(3, 3, 6, 6)])
    rows = LayerInputs(layer, src, max_patches=20, cache_bytes=cache_bytes)
    first = [r.clone() for r in rows]
    assert [r.shape for r in first] == [(20, 27), (20, 27)]  # 2*16 and 3*16 patches, subsampled
    for _ in range(2):  # later passes: same rows, read again only when not cached
        assert all(torch.equal(a, b) for a, b in zip(first, rows, strict=True))
    assert src.passes == passes


def test_calibration_progress_is_weighted_by_layer_cost(capsys):
    import torch
    from torch import nn

    from compactnn import factorize

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(),
                          nn.Linear(64, 2))
    x = torch.randn(64, 8)
    factorize(model, rank=2, init="whitened", calibration=x, progress=True)
    err = capsys.readouterr().err
    assert "compress" in err and "100%" in err and "s left" in err
    factorize(model, rank=2, init="whitened", calibration=x)  # not a terminal: silent
    assert capsys.readouterr().err == ""
