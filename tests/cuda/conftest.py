"""Fixtures of the CUDA backend's tests: the emulator extension (built on first use whatever
FASTDW_CUDA_EMULATE says: these tests call the backend module's functions directly) and the op
tests' float64 oracle (tests/ops/op_oracle.py, put on sys.path here as tests/ops/conftest.py's
directory would be)."""
import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "ops"))


@pytest.fixture(scope="session")
def emulator():
    """torch.ops.fastdw_cuda_emu, built from csrc/cuda/emulated.cpp."""
    from fastdw.kernels import cuda
    built, how = cuda.load_emulator()
    if not built and cuda.cuda_headers() is None:
        pytest.skip(how)  # the one missing thing the message names: CUDA's headers
    assert built, how
    return torch.ops.fastdw_cuda_emu


@pytest.fixture
def poisoned_outputs(monkeypatch):
    """Memory torch.empty returns (the ops' outputs) is NaN-filled, so an element a kernel does
    not write fails the comparison with the oracle."""
    monkeypatch.setattr(torch.utils.deterministic, "fill_uninitialized_memory", True)
    mode = (torch.are_deterministic_algorithms_enabled(),
            torch.is_deterministic_algorithms_warn_only_enabled())
    torch.use_deterministic_algorithms(True, warn_only=True)  # the filling needs the mode on
    yield
    torch.use_deterministic_algorithms(mode[0], warn_only=mode[1])
