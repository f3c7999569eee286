"""Suite-wide settings: one intra-op thread per test process.

The suite runs on 2 pytest-xdist workers on a 2-core machine; letting each use
two OpenMP threads oversubscribes the cores and spinning threads then slow
small ops by orders of magnitude.
"""

import pytest
import torch

torch.set_num_threads(1)


def _state(x) -> dict[str, torch.Tensor]:
    sd = x.state_dict() if isinstance(x, torch.nn.Module) else x
    return {k: v.detach().clone() for k, v in sd.items()}


def _assert_same_state(a, b, exact: bool = True) -> None:
    """Two modules (or state dicts) hold the same tensors: bit for bit, or (``exact=False``)
    up to float32 summation order."""
    a, b = _state(a), _state(b)
    assert a.keys() == b.keys()
    for k in a:
        if exact:
            assert torch.equal(a[k], b[k]), k
        else:
            torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6, msg=k)


@pytest.fixture
def assert_same_state():
    """``assert_same_state(a, b, exact=True)`` for modules or state dicts."""
    return _assert_same_state
