"""Shared test settings.

Tests use tiny tensors, for which a second intra-op thread costs more in synchronisation than it
gains (and on a busy machine much more), so every test runs single-threaded.
"""

import pytest
import torch


@pytest.fixture(autouse=True)
def _single_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
