"""Suite-wide settings: one intra-op thread per test process.

The suite runs on 2 pytest-xdist workers on a 2-core machine; letting each use
two OpenMP threads oversubscribes the cores and spinning threads then slow
small ops by orders of magnitude.
"""

import torch

torch.set_num_threads(1)
