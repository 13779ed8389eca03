"""The CUDA pwconv_bn_act backward (csrc/cuda/pwconv_backward.cuh) run through the emulator,
through the cuda backend's function (fastdw/kernels/cuda.py): the gradients of x, weight, scale
and shift against float64 autograd through stock PyTorch (tests/ops/op_oracle.py) on fresh
random inputs, within tests/numerics.py's bounds (x's gradient is rounded to x's dtype; the
others are float32), bitwise identical from run to run whatever order the emulator runs the
threads and blocks in, with outputs poisoned. The cases cover the recompute on the FFMA kernel
(float32, and float16 with a channel count that is not a multiple of 8) and on the tensor-core
kernel (float16, bfloat16), more than one slice of 256 pixels (the last partial), more than one
64-channel tile of the weight's gradient each way and each activation's derivative."""
import pytest
import torch

import numerics
import op_oracle as oracle
from fastdw.kernels import cuda

DTYPES = (torch.float32, torch.float16, torch.bfloat16)
# (N, C_in, H, W), C_out, act. C_in 16 and 8 recompute float16/bfloat16 on the tensor-core
# kernel (C_in % 8 == 0, as the forward's launcher picks it), 70, 12 and 13 on the FFMA kernel.
CASES = [((2, 16, 9, 15), 24, "relu6"), ((1, 70, 5, 4), 66, "hardswish"),
         ((1, 12, 4, 3), 8, "silu"), ((1, 13, 3, 3), 5, "hardsigmoid"),
         ((1, 8, 3, 5), 6, "relu"), ((1, 8, 3, 5), 6, "none")]


def gradients(dtype, shape, c_out, act):
    """(inputs and grad, the kernel's gradients, float64 autograd's)."""
    x = oracle.feature_map(shape, dtype, "channels_last")
    weight = oracle.conv_weight((c_out, shape[1]), dtype)
    scale, shift = oracle.random_affine(c_out)
    leaves = [t.double().requires_grad_() for t in (x, weight, scale, shift)]
    y = oracle.pwconv_bn_act(*leaves, act)
    grad = torch.randn(y.shape).to(dtype).to(memory_format=torch.channels_last)
    ref = torch.autograd.grad(y, leaves, grad.double())
    args = (grad, x, weight, scale, shift, act)
    return args, cuda.pwconv_bn_act_backward(*args), ref


def check(out, ref, dtype):
    for name, o, r, bound in zip(("x", "weight", "scale", "shift"), out, ref,
                                 (dtype, torch.float32, torch.float32, torch.float32)):
        assert o.shape == r.shape, name
        err = numerics.rel_err(o, r)
        assert err < numerics.REL_TOL[bound], f"{name}: relative error {err:.3g}"
    assert out[0].dtype == dtype


@pytest.mark.usefixtures("poisoned_outputs")
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape, c_out, act", CASES)
def test_gradients_match_float64(emulator, dtype, shape, c_out, act):
    _, out, ref = gradients(dtype, shape, c_out, act)
    assert "dw_backward_sum" in emulator.last_launch()
    check(out, ref, dtype)
    assert out[0].is_contiguous(memory_format=torch.channels_last)


@pytest.mark.usefixtures("poisoned_outputs")
def test_bitwise_identical_run_to_run(emulator, monkeypatch):
    """The sums over pixels go through per-slice partials added in a fixed order, not atomics:
    other thread and block orders (emulator seeds) give the same bits; under the race detector
    the barriers order the shared-memory tiles."""
    monkeypatch.setenv("FASTDW_CUDA_EMULATE_SEED", "1")
    args, first, _ = gradients(torch.float16, (2, 16, 9, 15), 24, "silu")
    monkeypatch.setenv("FASTDW_CUDA_EMULATE_SEED", "2")
    monkeypatch.setenv("FASTDW_CUDA_EMULATE_RACECHECK", "1")
    second = cuda.pwconv_bn_act_backward(*args)
    for a, b in zip(first, second):
        assert torch.equal(a, b)


@pytest.mark.parametrize("grad, message", [
    (torch.randn(1, 6, 5, 5, dtype=torch.float16), "grad must have x's dtype"),
    (torch.randn(1, 4, 5, 5), r"grad must have y's shape \(1, 6, 5, 5\)"),
])
def test_bad_grad_is_named(emulator, grad, message):
    x = torch.randn(1, 4, 5, 5).to(memory_format=torch.channels_last)
    with pytest.raises(RuntimeError, match=message):
        emulator.pwconv_bn_act_backward(grad, x, torch.randn(6, 4), torch.rand(6),
                                        torch.rand(6), "relu")
