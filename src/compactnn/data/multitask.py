"""A common container for multi-task data sets: inputs, one target per task, task specs.

Every multi-task loader (:mod:`~compactnn.data.synthetic`,
:mod:`~compactnn.data.multi_fashion_mnist`, :mod:`~compactnn.data.census`,
:mod:`~compactnn.data.movielens`) returns a :class:`MultiTaskData`: three
:class:`MultiTaskPart` s (train / val / test), each holding

- ``x``: float32 inputs, ``(N, features)`` or images ``(N, C, H, W)``;
- ``x_cat``: optional int64 categorical codes ``(N, columns)``, code ``j`` of
  column ``c`` in ``[0, cat_cardinalities[c])`` (models embed them);
- ``targets``: one tensor ``(N,)`` per task, in the order of ``tasks``.

Target conventions, by :class:`TaskSpec` ``kind``:

- ``"binary"``: float32 in ``{0, 1}``;
- ``"multiclass"``: int64 in ``[0, num_classes)``;
- ``"regression"``: float32, finite.

A *missing* target (a task with no label for that row, e.g. the rating of a
movie that was never watched) is ``NaN`` for float targets and ``-1`` for
multiclass targets; losses and metrics skip it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

__all__ = ["MultiTaskData", "MultiTaskPart", "TaskKind", "TaskSpec", "check_targets",
           "missing_mask", "regression_data"]

TaskKind = Literal["binary", "multiclass", "regression"]
_KINDS = ("binary", "multiclass", "regression")


@dataclass(frozen=True)
class TaskSpec:
    """One task: its name, its kind and (multiclass) its number of classes."""

    name: str
    kind: TaskKind
    num_classes: int | None = None  # multiclass only (binary tasks are 2-class implicitly)

    def __post_init__(self) -> None:
        if self.kind not in _KINDS:
            raise ValueError(f"task {self.name!r}: kind must be one of {_KINDS}, "
                             f"got {self.kind!r}")
        if self.kind == "multiclass" and (self.num_classes is None or self.num_classes < 2):
            raise ValueError(f"task {self.name!r}: a multiclass task needs num_classes >= 2, "
                             f"got {self.num_classes!r}")

    @property
    def output_dim(self) -> int:
        """Width of the model output for this task (logits or the regression value)."""
        return int(self.num_classes) if self.kind == "multiclass" else 1


def missing_mask(spec: TaskSpec, y: Tensor) -> Tensor:
    """Boolean mask of the rows whose target for ``spec`` is missing."""
    if spec.kind == "multiclass":
        return y == -1
    return torch.isnan(y)


def check_targets(spec: TaskSpec, y: Tensor, where: str = "") -> None:
    """Raise a one-line ``ValueError`` when ``y`` has the wrong type or range for ``spec``."""
    at = f" ({where})" if where else ""
    if not isinstance(y, Tensor) or y.ndim != 1:
        raise ValueError(f"task {spec.name!r}{at}: targets must be a 1-D tensor, got "
                         f"{getattr(y, 'shape', type(y).__name__)}")
    present = y[~missing_mask(spec, y)] if len(y) else y
    if spec.kind == "multiclass":
        if y.dtype != torch.int64:
            raise ValueError(f"task {spec.name!r}{at}: multiclass labels must be int64 class "
                             f"indices, got {y.dtype}")
        if len(present) and (int(present.min()) < 0 or int(present.max()) >= spec.num_classes):
            raise ValueError(f"task {spec.name!r}{at}: labels must be in [0, {spec.num_classes})"
                             f" (or -1 for missing), got range [{int(present.min())}, "
                             f"{int(present.max())}]")
        return
    if not y.is_floating_point():
        raise ValueError(f"task {spec.name!r}{at}: {spec.kind} targets must be float, got "
                         f"{y.dtype}")
    if len(present) and not bool(torch.isfinite(present).all()):
        raise ValueError(f"task {spec.name!r}{at}: targets must be finite (NaN marks missing)")
    if spec.kind == "binary" and len(present):
        bad = present[(present != 0) & (present != 1)]
        if len(bad):
            raise ValueError(f"task {spec.name!r}{at}: binary targets must be 0 or 1, got "
                             f"{float(bad[0])}")


@dataclass
class MultiTaskPart:
    """One split of a multi-task data set (see the module docstring)."""

    x: Tensor
    targets: list[Tensor]
    x_cat: Tensor | None = None

    def __len__(self) -> int:
        return len(self.x)

    def index(self, idx: Tensor) -> MultiTaskPart:
        """The rows ``idx`` (a 1-D index tensor)."""
        return MultiTaskPart(self.x[idx], [y[idx] for y in self.targets],
                             None if self.x_cat is None else self.x_cat[idx])

    def head(self, n: int | None) -> MultiTaskPart:
        """The first ``n`` rows (all when ``n`` is None)."""
        if n is None or n >= len(self):
            return self
        return self.index(torch.arange(n))


@dataclass
class MultiTaskData:
    """A multi-task data set: train / val / test parts, task specs and metadata.

    ``meta`` carries what a data set knows beyond its rows (e.g. the planted task
    clusters and task weight vectors of the synthetic generators).
    """

    train: MultiTaskPart
    val: MultiTaskPart
    test: MultiTaskPart
    tasks: tuple[TaskSpec, ...]
    cat_cardinalities: tuple[int, ...] = ()
    feature_names: tuple[str, ...] = ()
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def task_names(self) -> list[str]:
        return [t.name for t in self.tasks]

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one example of ``x`` (without the batch dimension)."""
        return tuple(self.train.x.shape[1:])

    def parts(self) -> dict[str, MultiTaskPart]:
        return {"train": self.train, "val": self.val, "test": self.test}

    def validate(self) -> MultiTaskData:
        """Check shapes, target types and ranges; raise a one-line ``ValueError``."""
        names = self.task_names
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate task names: {names}")
        for pname, part in self.parts().items():
            if len(part.targets) != len(self.tasks):
                raise ValueError(f"{pname}: {len(part.targets)} target tensors for "
                                 f"{len(self.tasks)} tasks")
            for spec, y in zip(self.tasks, part.targets, strict=True):
                if len(y) != len(part.x):
                    raise ValueError(f"task {spec.name!r} ({pname}): {len(y)} targets for "
                                     f"{len(part.x)} rows")
                check_targets(spec, y, pname)
            if not part.x.is_floating_point():
                raise ValueError(f"{pname}: inputs x must be float, got {part.x.dtype}")
            if (part.x_cat is None) != (not self.cat_cardinalities):
                raise ValueError(f"{pname}: x_cat and cat_cardinalities must be given together")
            if part.x_cat is not None:
                if part.x_cat.dtype != torch.int64 or part.x_cat.shape != (
                        len(part.x), len(self.cat_cardinalities)):
                    raise ValueError(f"{pname}: x_cat must be int64 of shape (N, "
                                     f"{len(self.cat_cardinalities)})")
                card = torch.tensor(self.cat_cardinalities)
                if len(part.x_cat) and (bool((part.x_cat < 0).any())
                                        or bool((part.x_cat >= card).any())):
                    raise ValueError(f"{pname}: a categorical code is outside [0, cardinality)")
        return self

    def select_tasks(self, names: Sequence[str] | None) -> MultiTaskData:
        """Keep only the tasks ``names`` (in that order); ``None`` or empty keeps all.
        Unknown names raise a one-line ``ValueError`` listing the known ones."""
        if not names:
            return self
        known = self.task_names
        unknown = [n for n in names if n not in known]
        if unknown:
            raise ValueError(f"unknown task {unknown[0]!r}; this data set has tasks: "
                             f"{', '.join(known)}")
        if len(set(names)) != len(names):
            raise ValueError(f"task names repeated in {list(names)}")
        idx = [known.index(n) for n in names]

        def pick(part: MultiTaskPart) -> MultiTaskPart:
            return replace(part, targets=[part.targets[i] for i in idx])

        meta = dict(self.meta)
        meta["task_index"] = [self.meta.get("task_index", list(range(len(known))))[i]
                              for i in idx]
        return replace(self, train=pick(self.train), val=pick(self.val), test=pick(self.test),
                       tasks=tuple(self.tasks[i] for i in idx), meta=meta)

    def limit(self, max_train: int | None = None, max_eval: int | None = None) -> MultiTaskData:
        """The first ``max_train`` training rows and ``max_eval`` validation and test rows
        (loaders shuffle their rows, so the first rows are a random subset)."""
        return replace(self, train=self.train.head(max_train), val=self.val.head(max_eval),
                       test=self.test.head(max_eval))

    def summary(self) -> str:
        tasks = ", ".join(f"{t.name} ({t.kind}{f', {t.num_classes}' if t.num_classes else ''})"
                          for t in self.tasks[:6])
        if len(self.tasks) > 6:
            tasks += f", ... ({len(self.tasks)} tasks)"
        return (f"{len(self.train)} train / {len(self.val)} val / {len(self.test)} test rows, "
                f"input {self.input_shape}, {len(self.cat_cardinalities)} categorical columns; "
                f"tasks: {tasks}")


def regression_data(x: np.ndarray, y: np.ndarray, n_train: int, n_val: int,
                    standardize_targets: bool, meta: dict[str, Any]) -> MultiTaskData:
    """Regression tasks from arrays ``x`` (N, d) and ``y`` (N, T), split in order into
    train / val / test (the rest); with ``standardize_targets`` each task is scaled to
    zero mean and unit variance on the training rows only (no test statistics leak in).
    ``meta`` gains ``target_mean`` and ``target_std``."""
    num_tasks = y.shape[1]
    mean, std = np.zeros(num_tasks), np.ones(num_tasks)
    if standardize_targets:
        mean, std = y[:n_train].mean(0), y[:n_train].std(0)
        std = np.where(std > 0, std, 1.0)
        y = (y - mean) / std
    xt = torch.from_numpy(x.astype(np.float32))
    yt = torch.from_numpy(y.astype(np.float32))

    def part(a: int, b: int) -> MultiTaskPart:
        return MultiTaskPart(xt[a:b], [yt[a:b, t].clone() for t in range(num_tasks)])

    n = len(x)
    tasks = tuple(TaskSpec(f"t{t}", "regression") for t in range(num_tasks))
    return MultiTaskData(part(0, n_train), part(n_train, n_train + n_val),
                         part(n_train + n_val, n), tasks,
                         feature_names=tuple(f"x{i}" for i in range(x.shape[1])),
                         meta={**meta, "target_mean": mean, "target_std": std}).validate()

