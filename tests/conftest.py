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


CUDA = torch.cuda.is_available()
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not CUDA, reason="no CUDA device"))]


@pytest.fixture(params=DEVICES)
def device(request) -> torch.device:
    """The device a model, method, data or engine test runs on: the CPU always, CUDA when present.

    ``pytest -k cuda`` selects the CUDA variants (``benchmarks/gpu_check.py`` runs them); on a
    machine without CUDA they are skipped, so the CPU run is unchanged."""
    return torch.device(request.param)
