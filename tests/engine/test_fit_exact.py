"""fit's task exactly: Nesterov exactly when there is momentum, the cosine schedule when
asked, the batch-size and no-data checks."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from compactnn.engine.distributed import DistInfo
from compactnn.engine.fit import FitConfig, TensorBatches, _FitTask


def test_sgd_is_nesterov_exactly_with_momentum_and_cosine_is_optional() -> None:
    for momentum, nesterov in ((0.9, True), (0.0, False)):
        task = _FitTask(nn.Linear(2, 2), [], FitConfig(optimizer="sgd", momentum=momentum,
                                                       cosine=False))
        _, opt, sched = task.build(DistInfo(), 5)
        assert isinstance(opt, torch.optim.SGD) and sched is None
        assert all(g["nesterov"] is nesterov and g["momentum"] == momentum
                   for g in opt.param_groups)
    _, opt, sched = _FitTask(nn.Linear(2, 2), [], FitConfig(epochs=2, lr=0.1)).build(
        DistInfo(), 5)
    assert isinstance(opt, torch.optim.AdamW) and sched is not None
    for _ in range(5):
        opt.step()
        sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(0.05, rel=1e-9)  # half way: cos(pi/2)


def test_batches_and_data_checks() -> None:
    x, y = torch.arange(3.0)[:, None], torch.arange(3)
    assert [b[1].tolist() for b in TensorBatches(x, y, 1)] == [[0], [1], [2]]
    with pytest.raises(ValueError, match=r"^batch_size must be >= 1, got batch_size=0$"):
        TensorBatches(x, y, 0)
    with pytest.raises(ValueError, match=r"^fit: the training data has no batches$"):
        _FitTask(nn.Linear(1, 2), [], FitConfig()).steps_per_epoch(1, DistInfo())


def test_config_limits_and_names() -> None:
    FitConfig(epochs=1).validate()
    with pytest.raises(ValueError, match=r"^epochs must be >= 1, got epochs=0$"):
        FitConfig(epochs=0).validate()
    with pytest.raises(ValueError, match=r"^lr must be > 0\.0, got lr=0\.0$"):
        FitConfig(lr=0.0).validate()


def test_config_errors_name_each_key() -> None:
    FitConfig(optimizer="sgd").validate()
    for key, bad, raised in (("optimizer", "adam", ValueError), ("momentum", 1.0, ValueError),
                             ("factor_weight_decay", -0.1, ValueError),
                             ("frobenius_decay", -0.1, ValueError),
                             ("cosine", 1, TypeError)):
        with pytest.raises(raised, match=f"^{key} must be"):
            FitConfig(**{key: bad}).validate()


def test_fit_shows_its_bar_on_request_in_a_single_process(capsys, monkeypatch) -> None:
    from compactnn.engine.fit import fit

    monkeypatch.setenv("RANK", "1")  # a torchrun variable: fit must not read the launch env
    x, y = torch.randn(4, 2), torch.tensor([0, 1, 0, 1])
    torch.manual_seed(0)
    rows = fit(nn.Linear(2, 2), TensorBatches(x, y, 2), FitConfig(epochs=1, progress=True,
                                                                   desc="fitbar"))
    assert [r["step"] for r in rows] == [2]
    assert "fitbar" in capsys.readouterr().err
    with pytest.raises(TypeError, match=r"^model must be a Module, got str$"):
        fit("m", TensorBatches(x, y, 2))
