"""The README's examples as a user script, checked by ``mypy --strict`` in
``make test`` (the public API's annotations must let a typed user program pass).
Also run by tests/test_newcomer.py."""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch
from torch import nn

import compactnn as cn
from compactnn.moe import DSelectKGate, MultiGateMoE, mlp_experts


def layers() -> tuple[cn.LowRankLinear, cn.LowRankConv2d, nn.Module]:
    layer = cn.LowRankLinear(1024, 1024, rank=64)
    conv = cn.LowRankConv2d(64, 128, 3, rank=32, padding=1, scheme="channel")
    lr = cn.LowRankLinear.from_dense(nn.Linear(512, 256), rank=32, init="spectral")
    dense_again: nn.Module = lr.to_dense()
    return layer, conv, dense_again


def mlp() -> nn.Sequential:
    return nn.Sequential(nn.Linear(784, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU(),
                         nn.Linear(512, 10))


def surgery_and_training(folder: Path) -> nn.Module:
    model = mlp()
    small, report = cn.factorize(model, param_ratio=0.3, exclude=["4"])
    text: str = str(report)
    assert text
    merged: nn.Module = cn.merge(small)
    assert isinstance(merged, nn.Module)
    opt = torch.optim.SGD(cn.param_groups(small, weight_decay=1e-4), lr=0.1, momentum=0.9)
    x, y = torch.randn(32, 784), torch.randint(0, 10, (32,))
    loss = nn.functional.cross_entropy(small(x), y) + cn.frobenius_decay(small, coef=1e-4)
    loss.backward()
    opt.step()
    path = folder / "small.safetensors"
    cn.save_model(small, path)
    restored: nn.Module = cn.load_model(mlp(), path)
    return restored


def data_aware() -> nn.Module:
    lr = cn.LowRankLinear.from_dense(nn.Linear(1024, 1024), rank=8, init="nonlinear")
    assert lr.rank == 8
    calib = torch.randn(256, 784)
    small, report = cn.factorize(mlp(), param_ratio=0.5, exclude=["4"], init="nonlinear",
                                 calibration=calib)
    assert report.params_after < report.params_before
    return small


def mixture() -> list[torch.Tensor]:
    experts = mlp_experts(8, in_features=32, hidden_features=64, out_features=16)
    moe = MultiGateMoE(experts, num_tasks=2,
                       gate=DSelectKGate(num_experts=8, k=2, input_dim=32))
    outputs, aux_loss = moe(torch.randn(128, 32))
    assert aux_loss.ndim == 0
    return list(outputs)


def main() -> None:
    layers()
    with tempfile.TemporaryDirectory() as folder:
        surgery_and_training(Path(folder))
    data_aware()
    assert len(mixture()) == 2


if __name__ == "__main__":
    main()
