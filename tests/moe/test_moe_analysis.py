"""Tests of the inspection helpers."""

from __future__ import annotations

import math
import subprocess
import sys

import pytest
import torch

from compactnn.moe import (
    DSelectKGate,
    MixtureOfExperts,
    MultiGateMoE,
    SoftmaxGate,
    gate_weights,
    mlp_experts,
    nonzeros_per_example,
    nonzeros_per_task,
    plot_task_expert_weights,
    selector_entropies,
    task_expert_weights,
)


def saturated(gate: DSelectKGate, codes: list[list[float]]) -> DSelectKGate:
    with torch.no_grad():
        gate.z_logits.copy_(torch.tensor(codes))
    return gate


def test_static_task_weights_and_nonzeros() -> None:
    experts = mlp_experts(4, 3, 5, 2)
    gates = [
        saturated(DSelectKGate(4, k=2), [[-1.0, 1.0], [1.0, 1.0]]),  # experts 1 and 3
        saturated(DSelectKGate(4, k=2), [[1.0, -1.0], [1.0, -1.0]]),  # expert 2 twice
    ]
    model = MultiGateMoE(experts, 2, gate=gates)
    matrix = task_expert_weights(model)
    assert matrix.shape == (2, 4)
    assert (matrix[0] > 0).tolist() == [False, True, False, True]
    assert (matrix[1] > 0).tolist() == [False, False, True, False]
    torch.testing.assert_close(matrix[1].sum(), torch.tensor(1.0))
    assert nonzeros_per_task(model).tolist() == [2, 1]
    x = torch.randn(5, 3)
    assert nonzeros_per_example(model, x).tolist() == [[2] * 5, [1] * 5]
    assert gate_weights(model, x).shape == (2, 5, 4)


def test_per_example_statistics() -> None:
    torch.manual_seed(0)
    gate = DSelectKGate(8, k=2, input_dim=3)
    with torch.no_grad():
        gate.z_proj.weight.zero_()
        gate.z_proj.bias.copy_(torch.tensor([1.0, 1.0, 1.0, -1.0, -1.0, -1.0]))  # 7 and 0
        gate.w_proj.weight.normal_()
    moe = MixtureOfExperts(mlp_experts(8, 3, 4, 2), gate)
    x = torch.randn(6, 3)
    assert nonzeros_per_example(moe, x).tolist() == [[2] * 6]
    assert nonzeros_per_task(moe, x).tolist() == [2]
    matrix = task_expert_weights(moe, x)
    torch.testing.assert_close(matrix.sum(), torch.tensor(1.0))
    assert (matrix[0, 1:7] == 0).all()
    with pytest.raises(ValueError, match="routing input"):
        task_expert_weights(moe)


def test_selector_entropies() -> None:
    gate = DSelectKGate(8, k=2)
    with torch.no_grad():
        gate.z_logits.copy_(torch.tensor([[0.0, 0.0, 0.0], [1.0, -1.0, 1.0]]))
    entropies = selector_entropies(gate)
    assert entropies.shape == (2,)
    assert entropies[0].item() == pytest.approx(math.log(8))  # uniform over 8 codes
    assert entropies[1].item() == 0.0  # one-hot
    per_example = DSelectKGate(8, k=3, input_dim=2)
    assert selector_entropies(per_example, torch.randn(4, 2)).shape == (4, 3)
    with pytest.raises(TypeError, match="DSelectKGate"):
        selector_entropies(SoftmaxGate(3))


def test_plot_task_expert_weights(tmp_path) -> None:
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    matrix = torch.tensor([[0.0, 0.7, 0.3], [1.0, 0.0, 0.0]])
    ax = plot_task_expert_weights(matrix, task_names=["a", "b"])
    assert [t.get_text() for t in ax.get_yticklabels()] == ["a", "b"]
    assert len(ax.texts) == 3  # nonzero cells annotated
    ax.figure.savefig(tmp_path / "weights.png")
    assert (tmp_path / "weights.png").stat().st_size > 0
    plt.close("all")
    with pytest.raises(ValueError, match="task names"):
        plot_task_expert_weights(matrix, task_names=["a"])


def test_matplotlib_is_imported_lazily() -> None:
    code = "import sys, compactnn.moe; print('matplotlib' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
