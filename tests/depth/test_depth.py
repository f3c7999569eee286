"""compactnn.depth: block scales, TRSP penalties, prune_layers."""

import copy

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from compactnn.depth import (
    LayerScales,
    RemovedBlock,
    prune_layers,
    removed_from_metadata,
)
from compactnn.models import ResNet, ResNetConfig


def resnet(shortcut="A", seed=0):
    torch.manual_seed(seed)
    model = ResNet(ResNetConfig(depth=14, widths=(4, 8, 8), shortcut=shortcut))
    # non-trivial BatchNorm statistics so eval mode is not the identity map
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    return model.eval()


def state_equal(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


X = torch.randn(3, 1, 10, 10)


@pytest.mark.parametrize("shortcut", ["A", "B"])
def test_scales_at_one_leave_model_unchanged(shortcut):
    model = resnet(shortcut)
    before = model(X)
    scales = LayerScales(model)
    assert scales.names == ["layer1.0", "layer1.1", "layer2.0", "layer2.1", "layer3.0",
                            "layer3.1"]
    assert torch.equal(model(X), before)
    scales.remove(fold=True)
    assert torch.equal(model(X), before)


@pytest.mark.parametrize("shortcut", ["A", "B"])
@pytest.mark.parametrize("block", ["layer1.1", "layer2.0", "layer3.0"])
def test_zero_scale_equals_removed_block_exactly(shortcut, block):
    """A block whose branch is scaled to 0 computes exactly what the pruned
    model computes, for identity and for downsampling shortcuts."""
    model = resnet(shortcut)
    scales = LayerScales(model)
    with torch.no_grad():
        scales.weight[scales.names.index(block)] = 0.0
    zeroed = model(X)
    scales.remove(fold=True)
    pruned, report = prune_layers(model, names=[block])
    assert report.removed == [block] and report.kinds == {block: "branch"}
    assert isinstance(pruned.get_submodule(block), RemovedBlock)
    assert torch.equal(pruned(X), zeroed)
    assert report.params_after < report.params_before


def test_fold_keeps_scaled_function_in_train_and_eval():
    model = resnet("B")
    scales = LayerScales(model)
    with torch.no_grad():
        scales.weight.copy_(torch.linspace(0.2, 1.7, len(scales.names)))
    ev = model.eval()(X)
    stats = copy.deepcopy(model.state_dict())
    tr = model.train()(X)  # batch statistics; the running stats move, so restore them
    model.load_state_dict(stats)
    scales.remove(fold=True)
    torch.testing.assert_close(model.eval()(X), ev, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(model.train()(X), tr, rtol=1e-5, atol=1e-6)


def test_l1_penalty_gradient_is_sign():
    model = resnet()
    scales = LayerScales(model)
    with torch.no_grad():
        scales.weight.copy_(torch.tensor([0.5, -0.3, 1.2, -2.0, 0.1, 0.7]))
    scales.l1_penalty(0.3).backward()
    torch.testing.assert_close(scales.weight.grad, 0.3 * scales.weight.detach().sign())


def test_difference_penalty_matches_reference_and_autograd():
    """The stage-2 penalty equals a reference computed by hand from the block's
    parts, and its gradient w.r.t. the scales matches finite differences."""
    model = resnet("B").double()
    x = X.double()
    plain = copy.deepcopy(model)  # no hooks: the reference applies the scales by hand
    scales = LayerScales(model)
    with torch.no_grad():
        scales.weight.copy_(torch.linspace(0.3, 1.2, 6, dtype=torch.float64))
    chosen = ["layer1.1", "layer2.0"]
    scales.track(chosen)
    model(x)
    pen = scales.difference_penalty(0.7)
    # reference: rerun each block's parts
    ref = 0.0
    acts = {}
    h = plain.stem_relu(plain.stem_bn(plain.stem(x)))
    for name in scales.names:
        blk = plain.get_submodule(name)
        a = scales.weight[scales.names.index(name)]
        branch = blk.bn2(blk.conv2(blk.relu1(blk.bn1(blk.conv1(h))))) * a
        out = blk.relu2(branch + blk.shortcut(h))
        acts[name] = (h, out)
        h = out
    for name in chosen:
        xin, out = acts[name]
        blk = plain.get_submodule(name)
        ref = ref + (out - blk.relu2(blk.shortcut(xin))).pow(2).mean()
    torch.testing.assert_close(pen, 0.7 * ref)

    def f(w):
        with torch.no_grad():
            scales.weight.copy_(w)
        model(x)
        return float(scales.difference_penalty(0.7).detach())

    w0 = scales.weight.detach().clone()
    scales.weight.grad = None
    model(x)
    scales.difference_penalty(0.7).backward()
    grad = scales.weight.grad.clone()
    eps = 1e-6
    for i in range(6):
        e = torch.zeros(6, dtype=torch.float64)
        e[i] = eps
        fd = (f(w0 + e) - f(w0 - e)) / (2 * eps)
        assert abs(fd - float(grad[i])) < 1e-6 * max(1.0, abs(fd))


def test_difference_penalty_zero_when_branch_zero():
    model = resnet()
    scales = LayerScales(model)
    with torch.no_grad():
        scales.weight[1] = 0.0
    scales.track(["layer1.1"])
    model(X)
    assert float(scales.difference_penalty(1.0).detach()) == 0.0


def test_plain_blocks_interpolate_and_prune_to_identity():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 5), nn.Sequential(nn.Linear(5, 5), nn.Tanh()),
                          nn.Sequential(nn.Linear(5, 5), nn.Tanh()), nn.Linear(5, 2))
    x = torch.randn(4, 5)
    before = model(x)
    scales = LayerScales(model, include=r"[12]")
    assert scales.kinds() == {"1": "plain", "2": "plain"}
    assert torch.equal(model(x), before)
    with torch.no_grad():
        scales.weight[0] = 0.0
    zeroed = model(x)
    expect = model[3](model[2](model[0](x)))
    torch.testing.assert_close(zeroed, expect)
    with pytest.raises(ValueError, match="cannot be folded"):
        scales.remove(fold=True)
    assert scales.attached  # a failing call changed nothing
    scales.remove(fold=False)
    pruned, report = prune_layers(model, scores={"1": 0.0, "2": 1.0}, num_layers=1)
    assert report.removed == ["1"] and report.kept == ["2"]
    torch.testing.assert_close(pruned(x), expect)
    assert torch.equal(model(x), before)  # not inplace: original untouched


def test_plain_block_shape_change_is_refused():
    model = nn.Sequential(nn.Linear(5, 3), nn.Linear(3, 2))
    with pytest.raises(ValueError, match="block '0' cannot be scaled .* maps width 5 to 3"):
        LayerScales(model, include=["0"])

    class Halve(nn.Module):  # a shape change no static rule can see: refused at forward
        def forward(self, x):
            return x[:, : x.shape[1] // 2]

    model = nn.Sequential(Halve(), nn.Linear(2, 2))
    LayerScales(model, include=["0"])
    with pytest.raises(ValueError, match="keep its input's shape"):
        model(torch.randn(2, 5))


def test_smallest_and_scores_order():
    model = resnet()
    scales = LayerScales(model)
    with torch.no_grad():
        scales.weight.copy_(torch.tensor([0.9, -0.1, 0.5, 0.05, 1.0, 0.5]))
    assert scales.smallest(3) == ["layer2.1", "layer1.1", "layer2.0"]
    assert scales.smallest(ratio=0.5) == ["layer2.1", "layer1.1", "layer2.0"]
    scales.remove(fold=True)
    _, report = prune_layers(model, num_layers=2, scores=scales)
    assert report.removed == ["layer2.1", "layer1.1"]
    assert len(report.kept) == 4


def test_bad_inputs_leave_model_untouched():
    model = resnet()
    snapshot = copy.deepcopy(model.state_dict())
    with pytest.raises(ValueError, match="matched no module"):
        LayerScales(model, include=r"nope\.\d")
    with pytest.raises(ValueError, match="matched no module"):
        LayerScales(model, exclude=["nope"])
    with pytest.raises(ValueError, match="nested"):
        LayerScales(model, include=["layer1", "layer1.0"])
    with pytest.raises(ValueError, match="no ResNet BasicBlock"):
        LayerScales(nn.Linear(3, 3))
    scores = {f"layer{s}.{i}": float(s + i) for s in (1, 2, 3) for i in (0, 1)}
    with pytest.raises(ValueError, match="exceeds"):
        prune_layers(model, num_layers=7, scores=scores)
    with pytest.raises(ValueError, match="exactly one"):
        prune_layers(model, num_layers=1, ratio=0.5, scores=scores)
    with pytest.raises(ValueError, match="finite"):
        prune_layers(model, num_layers=1, scores={**scores, "layer1.0": float("nan")})
    with pytest.raises(ValueError, match="not modules"):
        prune_layers(model, names=["layer9.0"])
    with pytest.raises(ValueError, match="give names="):
        prune_layers(model, num_layers=1)
    with pytest.raises(TypeError):
        prune_layers(model, num_layers=1.5, scores=scores)
    with pytest.raises(ValueError, match="ratio"):
        prune_layers(model, ratio=0.0, scores=scores)
    s = LayerScales(model)
    with pytest.raises(ValueError, match="finite"):
        s.l1_penalty(float("inf"))
    with pytest.raises(ValueError, match="already carry"):
        LayerScales(model)
    with pytest.raises(ValueError, match="attached LayerScales"):
        prune_layers(model, names=["layer1.0"])
    with pytest.raises(RuntimeError, match="track"):
        s.difference_penalty(1.0)
    with pytest.raises(ValueError, match="cannot track"):
        s.track(["stem"])
    s.remove(fold=True)
    assert state_equal_dict(model.state_dict(), snapshot)
    pruned, _ = prune_layers(model, names=["layer1.0"])
    with pytest.raises(ValueError, match="already removed"):
        prune_layers(pruned, names=["layer1.0"])


def state_equal_dict(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("shortcut", ["A", "B"])
def test_safetensors_round_trip_of_pruned_model(tmp_path, shortcut):
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    model = resnet(shortcut, seed=1)
    pruned, report = prune_layers(model, names=["layer2.0", "layer3.1"])
    path = tmp_path / "pruned.safetensors"
    save_file({k: v.contiguous() for k, v in pruned.state_dict().items()}, str(path),
              metadata=report.to_metadata())
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    removed = removed_from_metadata(meta)
    assert removed == ["layer2.0", "layer3.1"]
    fresh = resnet(shortcut, seed=2)
    fresh, _ = prune_layers(fresh, names=removed, inplace=True)
    fresh.load_state_dict(load_file(str(path)))
    fresh.eval()
    assert torch.equal(fresh(X), pruned(X))
    if shortcut == "B":  # the projection kept its name and its weights
        assert "layer2.0.shortcut.conv.weight" in fresh.state_dict()


def test_removed_from_metadata_rejects_garbage():
    assert removed_from_metadata({}) == []
    with pytest.raises(ValueError, match="JSON"):
        removed_from_metadata({"compactnn.depth.removed_blocks": "[oops"})
    with pytest.raises(ValueError, match="list of names"):
        removed_from_metadata({"compactnn.depth.removed_blocks": "{\"a\": 1}"})


@settings(max_examples=15, deadline=None)
@given(k=st.integers(0, 6), seed=st.integers(0, 10_000))
def test_prune_any_k_removes_smallest(k, seed):
    g = torch.Generator().manual_seed(seed)
    model = resnet()
    names = [f"layer{s}.{i}" for s in (1, 2, 3) for i in (0, 1)]
    vals = torch.rand(6, generator=g).tolist()
    pruned, report = prune_layers(model, num_layers=k, scores=dict(zip(names, vals, strict=True)))
    want = sorted(names, key=lambda n: vals[names.index(n)])[:k]
    assert report.removed == want
    assert sum(isinstance(m, RemovedBlock) for m in pruned.modules()) == k
    assert pruned(X).shape == (3, 10)


def test_copy_with_attached_scales_fails_loudly():
    model = resnet()
    LayerScales(model)
    twin = copy.deepcopy(model)
    with pytest.raises(RuntimeError, match="copy made while LayerScales were attached"):
        twin(X)
