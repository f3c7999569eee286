"""Multi-task learning with mixtures of experts: the ``compactnn mtl`` trainer, its typed
config, the [MMoE]-style model with DSelect-k / Top-k / softmax gates, and metrics of
prediction and expert selection. See docs/mtl.md."""

from compactnn.mtl.config import (
    DataConfig,
    ExpertConfig,
    GateConfig,
    LossConfig,
    MTLConfig,
    OptimConfig,
    TowerConfig,
)
from compactnn.mtl.metrics import (
    expert_selection_ari,
    experts_per_task,
    paired_test,
    roc_auc,
    selection_labels,
    task_loss,
    task_metrics,
)
from compactnn.mtl.model import ConvExpert, MTLModel, build_gate
from compactnn.mtl.trainer import evaluate_part, known_tasks, load_mtl_data, train_mtl

__all__ = [
    "ConvExpert",
    "DataConfig",
    "ExpertConfig",
    "GateConfig",
    "LossConfig",
    "MTLConfig",
    "MTLModel",
    "OptimConfig",
    "TowerConfig",
    "build_gate",
    "evaluate_part",
    "expert_selection_ari",
    "experts_per_task",
    "known_tasks",
    "load_mtl_data",
    "paired_test",
    "roc_auc",
    "selection_labels",
    "task_loss",
    "task_metrics",
    "train_mtl",
]
