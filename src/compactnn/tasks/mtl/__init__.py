"""Multi-task learning with mixtures of experts: the ``compactnn mtl`` trainer, its typed
config, the [MMoE]-style model with DSelect-k / Top-k / softmax gates, and metrics of
prediction and expert selection. See docs/mtl.md."""

from compactnn.tasks.mtl.config import (
    DataConfig,
    ExpertConfig,
    GateConfig,
    LossConfig,
    MTLConfig,
    OptimConfig,
    TowerConfig,
)
from compactnn.tasks.mtl.data import known_tasks, load_mtl_data
from compactnn.tasks.mtl.metrics import (
    expert_selection_ari,
    experts_per_task,
    paired_test,
    roc_auc,
    selection_labels,
    task_loss,
    task_losses,
    task_metrics,
)
from compactnn.tasks.mtl.model import ConvExpert, LeNetExpert, MTLModel, build_gate
from compactnn.tasks.mtl.task import MTLTask, evaluate_part, gate_report, train_mtl

__all__ = [
    "ConvExpert",
    "LeNetExpert",
    "DataConfig",
    "ExpertConfig",
    "GateConfig",
    "LossConfig",
    "MTLConfig",
    "MTLModel",
    "MTLTask",
    "OptimConfig",
    "TowerConfig",
    "build_gate",
    "evaluate_part",
    "expert_selection_ari",
    "experts_per_task",
    "gate_report",
    "known_tasks",
    "load_mtl_data",
    "paired_test",
    "roc_auc",
    "selection_labels",
    "task_loss",
    "task_losses",
    "task_metrics",
    "train_mtl",
]
