"""Shared fixtures. Triton kernels run on CPU tensors through Triton's interpreter when there is
no GPU; the variable must be set before triton is first imported."""
import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from fastdw import backend  # noqa: E402  (after TRITON_INTERPRET is decided)


def cpu_backends():
    """Every backend usable on CPU tensors here: the op matrix runs on each of them."""
    return [name for name, row in backend.info().items()
            if row["usable"] and "cpu" in row["devices"]]


def pytest_generate_tests(metafunc):
    if "backend_name" in metafunc.fixturenames:
        metafunc.parametrize("backend_name", cpu_backends())


@pytest.fixture(autouse=True)
def _seeded():
    torch.manual_seed(0)
