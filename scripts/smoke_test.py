"""A smoke test of the core install (no extras): layers, factorize, save/load,
progress bars and gates. scripts/smoke_other_torch.sh runs it in a fresh venv
holding another torch release; it imports nothing outside the core dependencies."""

import sys
import tempfile
from pathlib import Path

import torch
from torch import nn

import compactnn as cn
from compactnn.moe import DSelectKGate, MultiGateMoE, mlp_experts


def main() -> int:
    torch.manual_seed(0)
    layer = cn.LowRankLinear(64, 32, rank=8)
    assert layer(torch.randn(5, 64)).shape == (5, 32)
    conv = cn.LowRankConv2d(8, 16, 3, rank=4, padding=1, scheme="channel")
    assert conv(torch.randn(2, 8, 10, 10)).shape == (2, 16, 10, 10)
    dense = nn.Linear(64, 32)
    lr = cn.LowRankLinear.from_dense(dense, rank=32, init="spectral")
    x = torch.randn(7, 64)
    assert torch.allclose(lr(x), dense(x), atol=1e-4), "full-rank spectral must be exact"

    model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(),
                          nn.Linear(64, 10))
    small, report = cn.factorize(model, rank=8, exclude=["4"], progress=True)
    assert isinstance(small[0], cn.LowRankLinear) and isinstance(small[4], nn.Linear)
    calibrated, _ = cn.factorize(model, rank=8, exclude=["4"], init="whitened",
                                 calibration=torch.randn(128, 64))
    assert isinstance(calibrated[2], cn.LowRankLinear)
    decay = cn.frobenius_decay(small, coef=1e-4)
    assert decay.item() > 0
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "small.safetensors"
        cn.save_model(small, path)
        fresh = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(),
                              nn.Linear(64, 10))
        restored = cn.load_model(fresh, path)
        assert torch.equal(restored(x), small(x)), "save/load must round-trip exactly"
    merged = cn.merge(small)
    assert torch.allclose(merged(x), small(x), atol=1e-5)

    experts = mlp_experts(4, in_features=16, hidden_features=32, out_features=8)
    moe = MultiGateMoE(experts, num_tasks=2, gate=DSelectKGate(num_experts=4, k=2,
                                                               input_dim=16))
    outputs, aux = moe(torch.randn(12, 16))
    assert len(outputs) == 2 and outputs[0].shape == (12, 8) and aux.ndim == 0
    (outputs[0].sum() + outputs[1].sum() + aux).backward()
    assert (Path(cn.__file__).parent / "py.typed").exists(), "py.typed is not installed"
    print(f"smoke test passed: compactnn {cn.__version__}, torch {torch.__version__}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
