"""Unstructured sparsity baselines at a parameter budget.

The baselines that low-rank models are compared with at equal parameter count:

* **Iterative magnitude pruning** (:class:`IterativeMagnitudePruning`), as a
  user runs it: train, prune the smallest-magnitude weights globally, then
  either *rewind* the surviving weights (and every other parameter and buffer)
  to a saved early state and retrain -- Frankle & Carbin, *The Lottery Ticket
  Hypothesis: Finding Sparse, Trainable Neural Networks*, ICLR 2019 (rewinding
  to initialization), and Frankle, Dziugaite, Roy & Carbin, *Linear Mode
  Connectivity and the Lottery Ticket Hypothesis*, ICML 2020 (rewinding to an
  early iteration) -- or keep the trained weights and *fine-tune* (Han, Pool,
  Tran & Dally 2015). Densities follow a geometric schedule over the rounds
  (each round keeps the same fraction of what the previous one kept) or the
  cubic schedule of Zhu & Gupta, *To prune, or not to prune*, 2017.
* **Iterative hard thresholding** (:class:`IterativeHardThresholding`), the
  sparse-training recipe of [IHT] (*A Recovery Guarantee for Sparse
  Neural Networks*): an ordinary (dense) gradient step on every weight, then the
  hard-thresholding operator ``H_s`` that keeps the ``s`` weights of largest
  magnitude (globally over the pruned layers) and sets the others to zero.
  Weights outside the support still get gradients, so the support can change
  at every step.

* **Fixed sparse connectivity** (:mod:`compactnn.sparse.fixed`): :class:`MaskedLinear`,
  a linear layer multiplied by a constant mask in every forward pass (so weights off
  the mask get zero gradient), with random, spatially local (a convolution's
  connectivity without weight sharing) masks at a given number of nonzeros;
  :class:`FixedSparseLinear`, the same function with only the connected weights as
  parameters (optimizer cost and parameter count in proportion to the connections); the
  structures compared in the deep-RL sparsity experiment (``minatar_sparse``).

Conventions shared by the two pruning baselines:

* Which weights are pruned: the ``weight`` of the ``nn.Linear``/``nn.Conv2d``
  modules chosen by ``include``/``exclude`` with exactly the name-pattern
  semantics of ``compactnn.factorize`` (a regex string matched against whole
  module names, or a list of names matched as the name or its dotted suffix);
  pass ``exclude=compactnn.surgery.dense_first_last_exclude(model)`` to
  keep the first and last layers dense. Biases, normalization parameters and
  excluded layers are never pruned.
* Budgets count parameters the way ``factorize`` does (``model.parameters()``,
  buffers not counted): a model "at param_ratio p" has
  ``floor(p * dense_params)`` parameters that are not pruned
  (:func:`target_keep_for_param_ratio`), every unpruned parameter counting as
  kept even where its value happens to be zero (a BatchNorm bias at init).
* Masks are global: one top-``keep`` over all pruned weights by ``|w|`` (ties
  broken by ``torch.topk``, the kept count is always exact).
* Both schedulers have ``after_step(model)``, to be called right after every
  ``optimizer.step()``. A ``DistributedDataParallel``/``DataParallel`` wrapper
  or a ``torch.compile`` module may be passed: names are those of the wrapped
  model. Under DDP every rank holds the same weights after a step, so each rank
  computes the same masks with no communication.
* They zero weights in place (under ``no_grad``) and leave the optimizer alone:
  pruned weights are re-zeroed after every step, so momentum or weight decay
  cannot revive them; after rewinding, build a fresh optimizer (and learning
  rate schedule) for the next round, as the lottery-ticket recipe does.
"""

from compactnn.sparse.fixed import (
    FixedSparseLinear,
    MaskedLinear,
    conv_connections,
    equal_dense_width,
    fixed_masks,
    local_mask,
    random_mask,
)
from compactnn.sparse.iht import IterativeHardThresholding
from compactnn.sparse.imp import SCHEDULES, IterativeMagnitudePruning, pruning_schedule
from compactnn.sparse.masks import (
    SCOPES,
    SparsityMasks,
    dense_params,
    magnitude_masks,
    prunable_weights,
    score_masks,
    target_keep_for_param_ratio,
    target_keep_for_params,
)

__all__ = [
    "SCHEDULES",
    "SCOPES",
    "IterativeHardThresholding",
    "IterativeMagnitudePruning",
    "FixedSparseLinear",
    "MaskedLinear",
    "SparsityMasks",
    "conv_connections",
    "equal_dense_width",
    "fixed_masks",
    "local_mask",
    "random_mask",
    "dense_params",
    "magnitude_masks",
    "prunable_weights",
    "pruning_schedule",
    "score_masks",
    "target_keep_for_param_ratio",
    "target_keep_for_params",
]
