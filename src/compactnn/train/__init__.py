"""Training utilities shared by the experiments."""

from compactnn.train.loop import FitConfig, evaluate, fit, measure_latency, seed_everything

__all__ = ["FitConfig", "evaluate", "fit", "measure_latency", "seed_everything"]
