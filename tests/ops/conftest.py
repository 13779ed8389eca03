import pytest
import torch


@pytest.fixture(autouse=True)
def poisoned_outputs():
    """torch.empty (which kernels allocate their outputs with) returns NaN-filled memory here, so
    an element a kernel forgets to write fails the test instead of passing by luck."""
    was_enabled = torch.are_deterministic_algorithms_enabled()
    was_warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    was_filling = torch.utils.deterministic.fill_uninitialized_memory
    torch.use_deterministic_algorithms(True, warn_only=True)  # filling needs this mode on
    torch.utils.deterministic.fill_uninitialized_memory = True
    yield
    torch.use_deterministic_algorithms(was_enabled, warn_only=was_warn_only)
    torch.utils.deterministic.fill_uninitialized_memory = was_filling
