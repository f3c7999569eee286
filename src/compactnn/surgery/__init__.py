"""Model surgery: choose layers (:mod:`~compactnn.surgery.select`), cost them and
allocate ranks (:mod:`~compactnn.surgery.budget`), swap them for low-rank layers
and back (:mod:`~compactnn.surgery.factorize`), layer by layer on calibration data
when the initializer uses it (:mod:`~compactnn.surgery.sequential`, with the
structure read by :mod:`~compactnn.surgery.detect`), and report what was done
(:mod:`~compactnn.surgery.report`)."""

from compactnn.surgery.budget import ALLOCATIONS, count_macs
from compactnn.surgery.detect import detect_activations, detect_norms
from compactnn.surgery.factorize import factorize, merge, unique_params
from compactnn.surgery.report import FactorizeReport, LayerReport
from compactnn.surgery.select import Patterns, dense_first_last_exclude, select_layers
from compactnn.surgery.sequential import compress_sequential

__all__ = [
    "ALLOCATIONS",
    "FactorizeReport",
    "LayerReport",
    "Patterns",
    "compress_sequential",
    "count_macs",
    "dense_first_last_exclude",
    "detect_activations",
    "detect_norms",
    "factorize",
    "merge",
    "select_layers",
    "unique_params",
]
