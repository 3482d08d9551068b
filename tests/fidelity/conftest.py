"""One intra-op thread for the fidelity tests.

The classifiers here train on matrices of at most a few thousand x 32: a second thread only adds
synchronisation. On a loaded 2-core machine the 500-step MLP fit took 40 s with two threads and 1.3 s
with one.
"""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
