"""Hostile use of surgery on tiny Hugging Face models: a model in train mode with one
block in eval mode gets every module's own mode back (and swapped-in layers their
parent's), a build failing or interrupted mid-way leaves the model exactly as it was,
gated options meant for another method warn, blocks that return neither a tensor nor
a tuple are refused with the model untouched."""

import sys
import warnings

import pytest
import torch
from surgery_models import assert_unchanged, snapshot
from test_transformers import ids as vocab_ids
from test_transformers import llama
from torch import nn

from compactnn import LowRankLinear, factorize, merge
from compactnn.surgery.blockwise import compress_blockwise, find_blocks

transformers = pytest.importorskip("transformers")
torch.set_num_threads(1)


factorize_module = sys.modules["compactnn.surgery.factorize"]


def ids():
    return vocab_ids(60)  # token ids of the tiny LLaMA's vocabulary


def mixed_modes(model):
    model.train()
    model.model.layers[1].eval()  # e.g. a frozen block inside a training model
    return model


OPTS = dict(param_ratio=0.6, budget_over="selected", init="whitened")


@pytest.mark.parametrize("sequential", [True, False])
def test_blockwise_calibration_gives_every_module_its_own_mode_back(sequential):
    model = mixed_modes(llama())
    out, _ = factorize(model, calibration=[ids()], sequential=sequential, inplace=True, **OPTS)
    assert out is model
    assert model.training and model.model.layers[0].training
    assert not model.model.layers[1].training
    # swapped-in layers take the mode of the block that holds them
    for i, want in ((0, True), (1, False)):
        layers = [m for m in model.model.layers[i].modules() if isinstance(m, LowRankLinear)]
        assert layers and all(m.training is want for m in layers)


@pytest.mark.parametrize("exc", [RuntimeError("boom"), KeyboardInterrupt()])
@pytest.mark.parametrize("sequential", [True, False])
def test_a_build_failing_mid_way_leaves_the_model_exactly_as_it_was(monkeypatch, exc,
                                                                     sequential):
    model = mixed_modes(llama())
    snap = snapshot(model)
    real, calls = factorize_module.to_lowrank, []

    def failing(*args, **kwargs):
        calls.append(1)
        if len(calls) == 5:  # inside the first block, after four layers were swapped
            raise exc
        return real(*args, **kwargs)

    monkeypatch.setattr(factorize_module, "to_lowrank", failing)
    with pytest.raises(type(exc)):
        factorize(model, calibration=[ids()], sequential=sequential, inplace=True, **OPTS)
    assert len(calls) == 5
    assert_unchanged(model, snap)


def test_an_interrupt_while_capturing_leaves_the_model_as_it_was():
    model = mixed_modes(llama())
    snap = snapshot(model)

    def interrupt(*_):
        raise KeyboardInterrupt

    handle = model.model.layers[1].register_forward_pre_hook(interrupt)
    with pytest.raises(KeyboardInterrupt):
        factorize(model, calibration=[ids()], inplace=True, **OPTS)
    handle.remove()
    assert_unchanged(model, snap)


def test_gated_options_meant_for_nonlinear_warn_with_another_method():
    model = llama()
    with pytest.warns(UserWarning, match=r"gated_steps ignored: .*init='whitened'"):
        factorize(model, rank=6, init="whitened", calibration=ids(), gated_steps=5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        factorize(model, rank=6, init="nonlinear", calibration=ids(), gated_steps=0)


class DictBlock(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(8, 8)

    def forward(self, x):
        return {"hidden": self.lin(x)}


class DictStack(nn.Module):
    def __init__(self):
        super().__init__()
        self.blocks = nn.ModuleList([DictBlock(), DictBlock()])

    def forward(self, x):
        for b in self.blocks:
            x = b(x)["hidden"]
        return x


def test_blocks_returning_a_dict_are_refused_and_the_model_is_untouched():
    torch.manual_seed(0)
    model = DictStack()
    snap = snapshot(model)
    assert find_blocks(model).name == "blocks"
    with pytest.raises(TypeError, match="a block returned dict"):
        factorize(model, rank=2, init="whitened", calibration=torch.randn(10, 8), inplace=True)
    assert_unchanged(model, snap)


def test_a_model_without_repeated_blocks_is_calibrated_layer_by_layer():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 8))
    assert find_blocks(model) is None
    out, _ = factorize(model, rank=2, init="whitened", calibration=torch.randn(10, 8))
    assert isinstance(out[0], LowRankLinear) and isinstance(out[2], LowRankLinear)


@pytest.mark.parametrize("calibrate", [False, True])
def test_swapped_layers_keep_the_mode_of_an_eval_model(calibrate):
    model = llama()  # eval mode
    data = dict(init="whitened", calibration=[ids()]) if calibrate else {}
    out, _ = factorize(model, rank=6, **data)
    layers = [m for m in out.modules() if isinstance(m, LowRankLinear)]
    assert layers and not any(m.training for m in out.modules())
    dense = merge(out)
    assert not any(m.training for m in dense.modules())


def test_compress_blockwise_names_each_bad_argument():
    model = llama()
    stack = find_blocks(model)
    good = [("model.layers.0.mlp.up_proj", lambda dense, **_: dense)]
    bad = [
        (dict(stack="model.layers"), TypeError, "stack must be a BlockStack"),
        (dict(targets=["model.layers.0.mlp.up_proj"]), TypeError, "targets must be a list"),
        (dict(sequential=1), TypeError, "sequential must be a bool"),
        (dict(dense_targets="yes"), TypeError, "dense_targets must be a bool"),
        (dict(progress="yes"), TypeError, "progress must be a bool"),
        (dict(after_group=3), TypeError, "after_group must be callable"),
        (dict(timings=[]), TypeError, "timings must be a dict"),
    ]
    for change, exc, message in bad:
        args = {"stack": stack, "targets": good, **change}
        with pytest.raises(exc, match=message):
            compress_blockwise(model, args.pop("stack"), args.pop("targets"), [ids()], **args)
    with pytest.raises(TypeError, match="model must be"):
        find_blocks("model")


def dense_inputs(model, name, x):
    got = []
    hook = model.get_submodule(name).register_forward_pre_hook(
        lambda _m, a: got.append(a[0].reshape(-1, a[0].shape[-1])))
    with torch.no_grad():
        model(x)
    hook.remove()
    return got[0]


@pytest.mark.parametrize("first_block_compressed", [False, True])
def test_dense_targets_are_the_dense_models_inputs_row_for_row(first_block_compressed):
    from compactnn.lowrank import to_lowrank

    model, x = llama(), ids()
    name = "model.layers.1.mlp.down_proj"
    reference = dense_inputs(model, name, x)
    seen = {}

    def build(dense, inputs, activation, target_inputs=None):
        if dense is model.get_submodule(name):
            seen["inputs"], seen["targets"] = inputs.rows, target_inputs.rows
        return to_lowrank(dense, 2)

    targets = [(name, build)]
    if first_block_compressed:
        targets.insert(0, ("model.layers.0.mlp.down_proj", build))
    compress_blockwise(model, find_blocks(model), targets, [x], dense_targets=True)
    torch.testing.assert_close(seen["targets"], reference)
    # the compressed model's own inputs differ from the dense ones once block 0 is compressed
    assert torch.equal(seen["inputs"], seen["targets"]) is not first_block_compressed
