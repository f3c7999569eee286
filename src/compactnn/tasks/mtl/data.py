"""The data sets of ``compactnn mtl``: task names and loading, restricted to the
configured tasks and row limits."""

from __future__ import annotations

from compactnn.config import ConfigError
from compactnn.data.multitask import MultiTaskData
from compactnn.tasks.mtl.config import DataConfig

__all__ = ["known_tasks", "load_mtl_data"]


def known_tasks(cfg: DataConfig) -> list[str]:
    """The task names of the configured data set (without loading it)."""
    if cfg.name == "synthetic":
        return ["t0", "t1"]
    if cfg.name == "clustered":
        return [f"t{i}" for i in range(cfg.num_tasks)]
    if cfg.name == "multi_fashion_mnist":
        from compactnn.data.multi_fashion_mnist import MULTI_FASHION_TASKS

        return list(MULTI_FASHION_TASKS)
    if cfg.name == "census":
        from compactnn.data.census import CENSUS_TASKS

        return list(CENSUS_TASKS)
    from compactnn.data.movielens import MOVIELENS_TASKS

    return list(MOVIELENS_TASKS)


def load_mtl_data(cfg: DataConfig, seed: int) -> MultiTaskData:
    """The configured data set, restricted to ``cfg.tasks`` and the row limits."""
    known = known_tasks(cfg)
    unknown = [t for t in cfg.tasks if t not in known]
    if unknown:
        shown = known if len(known) <= 8 else [*known[:4], "...", known[-1]]
        raise ConfigError(f"data.tasks: unknown task {unknown[0]!r} for data.name="
                          f"{cfg.name}; known tasks: {', '.join(shown)}")
    s = cfg.seed if cfg.seed is not None else seed
    if cfg.name == "synthetic":
        from compactnn.data.synthetic import make_mmoe_synthetic

        data = make_mmoe_synthetic(cfg.n_train, cfg.n_val, cfg.n_test, cfg.input_dim or 100,
                                   cfg.correlation, noise_std=cfg.noise_std, seed=s)
    elif cfg.name == "clustered":
        from compactnn.data.synthetic import make_clustered_synthetic

        data = make_clustered_synthetic(cfg.num_tasks, cfg.num_clusters, cfg.n_train,
                                        cfg.n_val, cfg.n_test, cfg.input_dim,
                                        cfg.correlation, noise_std=cfg.noise_std, seed=s)
    elif cfg.name == "multi_fashion_mnist":
        from compactnn.data.multi_fashion_mnist import load_multi_fashion_mnist

        data = load_multi_fashion_mnist(cfg.root, cfg.val_size, seed=s,
                                        max_train=cfg.max_train, max_val=cfg.max_eval,
                                        max_test=cfg.max_eval)
    elif cfg.name == "census":
        from compactnn.data.census import load_census_income

        data = load_census_income(cfg.root, seed=s, max_train=cfg.max_train,
                                  max_eval=cfg.max_eval)
    else:
        from compactnn.data.movielens import load_movielens

        data = load_movielens(negatives=cfg.negatives, seed=s,
                              rating_threshold=cfg.rating_threshold,
                              max_train=cfg.max_train, max_eval=cfg.max_eval,
                              dataset=cfg.name)
    return data.select_tasks(cfg.tasks).limit(cfg.max_train, cfg.max_eval)
