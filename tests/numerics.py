"""How close a fastdw result must be to the truth, and why: the one tolerance table of the tests
(REL_TOL), the error measure it bounds (rel_err, assert_close) and the random BatchNorm state
the tests fold (randomize_bn).

Test modules import it by name (`import numerics`), as tests/ops imports op_oracle: there is no
tests/__init__.py, so pytest's default import mode puts the directory of each conftest.py and
test module on sys.path, tests/ (from tests/conftest.py) included.

How a result is checked
-----------------------
A fastdw output or gradient is compared with the same computation done by stock PyTorch (its own
conv, BatchNorm or folded per-channel affine, activation modules) in float64 on the same inputs,
upcast. float64 rounds at 1.1e-16, so that result stands for the exact one at every bound below.
The error is one number per tensor, rel_err = ||out - ref|| / ||ref|| (2-norms, in float64): it
does not depend on the tensor's size or scale, and one element far off still shows in it.

What makes a wrong kernel fail rather than pass by luck:
  * fresh random inputs of O(1), drawn in each test (tests/conftest.py seeds torch per test),
    never zeros or ones, which a kernel that drops a term or a channel can still get right;
  * BatchNorms with random affine parameters and running statistics (randomize_bn): a fresh BN
    folds to scale 1, shift 0, so a kernel that ignored the fold would pass;
  * poisoned outputs: the memory kernels allocate outputs and scratch from is NaN-filled
    (tests/ops/conftest.py, the `poisoned` fixture of tests/triton/conftest.py) and
    rel_err fails on a NaN, so an element a kernel forgets to write fails instead of passing
    with whatever the memory held.

The bounds, by the dtype the op computes in
-------------------------------------------
float16 1e-3, bfloat16 1e-2: the kernels accumulate in float32 and round once, when they store
the output, so fp16/bf16 outputs are one output rounding away from the fp32-accumulated result.
Rounding to nearest moves each element by at most the unit roundoff u relative to it, so the
whole tensor by at most u in rel_err: u = 2^-11 = 4.9e-4 for float16 (eps 9.8e-4) and
u = 2^-8 = 3.9e-3 for bfloat16 (eps 7.8e-3). The bound is about eps, twice u, rounded up to a
power of ten: room for the float32 accumulation beneath (below) and for the few further
roundings of results that pass through the dtype in between (gradients, blocks run stage by
stage). A wrong tap, channel, padding or activation is off by orders of magnitude more.

float32 1e-5: nothing is rounded to a narrower type; the error is a few ulps of the float32
accumulation over the k*k taps (depthwise) or the C_in terms (1x1), in whatever order the
kernel sums. Each addition rounds by up to u = 6.0e-8 (eps 1.2e-7) and the roundings add up
like the square root of the number of terms (n*u at worst): 5e-8 to 6e-7 measured on the op
shapes, C_in up to 960. 1e-5 holds that with a margin of 15x or more.
A float32 result compared with stock PyTorch's own float32 run of the same computation (fused
modules against their stock children or torchvision, compiled against eager, train-mode
forwards) uses this bound too: each side is that far from the float64 result, so they differ by
about as much.

float64 1e-12: the float64 path (fastdw hands float64 to stock ops) is the oracle's own
arithmetic up to summation order, ~1e-16 per operation; 1e-12 allows for the order and nothing
else.

A whole float32 model is held to the float32 bound as well (tests/triton/test_models_triton.py)
unless rounding through its ~50 layers takes stock float32 itself near it: tests/conftest.py's
_float32_bound then allows 4x stock's own error. Not this table: bit-exact comparisons of two
runs that must take the same path (rtol=0, atol=0), element-wise comparisons of two float32
runs (torch.testing.assert_close with an rtol and atol), and the few bounds a test derives
itself, explained next to it.
"""
import torch
from torch import nn

REL_TOL = {torch.float32: 1e-5, torch.float16: 1e-3, torch.bfloat16: 1e-2, torch.float64: 1e-12}


def rel_err(out, ref):
    """||out - ref|| / ||ref|| in float64; fails if out has a NaN (an unwritten element)."""
    assert not torch.isnan(out).any(), "output has NaN (an element left unwritten?)"
    ref = ref.double()
    return ((out.double() - ref).norm() / ref.norm()).item()


def assert_close(out, ref, dtype):
    """out, computed in dtype, is within REL_TOL[dtype] of ref (the float64 oracle's result)."""
    err = rel_err(out, ref)
    assert err < REL_TOL[dtype], f"relative error {err:.3g} >= {REL_TOL[dtype]:g} for {dtype}"


def randomize_bn(module, *, weight=(0.5, 1.5), bias=(-0.3, 0.3), running_mean=(-0.3, 0.3),
                 running_var=(0.5, 1.5), generator=None):
    """Draw every BatchNorm2d tensor of `module` (which may itself be one) uniformly from its
    (low, high) range; None leaves that tensor as it is, and so does a BN without it (no affine,
    no running statistics). Returns `module`.

    The defaults give a fold of scale around 1 and shift around 0, far enough from the identity
    that a kernel ignoring either shows. A test that needs other values (tiny variances, a
    larger shift) passes its own ranges."""
    ranges = {"weight": weight, "bias": bias, "running_mean": running_mean,
              "running_var": running_var}
    with torch.no_grad():
        for bn in module.modules():
            if not isinstance(bn, nn.BatchNorm2d):
                continue
            for name, span in ranges.items():
                tensor = getattr(bn, name)
                if span is not None and tensor is not None:
                    tensor.uniform_(*span, generator=generator)
    return module
