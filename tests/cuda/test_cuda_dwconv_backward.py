"""The CUDA dwconv_bn_act backward (csrc/cuda/dwconv_backward.cuh) run through the emulator,
through the cuda backend's function (fastdw/kernels/cuda.py): the gradients of x, weight, scale
and shift against float64 autograd through stock PyTorch (tests/ops/op_oracle.py) on fresh
random inputs, within tests/numerics.py's bounds (x's gradient is rounded to x's dtype; the
others are float32), bitwise identical from run to run whatever order the emulator runs the
threads and blocks in, with outputs poisoned. The cases cover kernel sizes 3 / 4 / 5, strides
1 to 3, dilation 2, channel groups cut at 32, several slices of 128 output pixels (the last
partial), each activation's derivative and an NCHW x."""
import pytest
import torch

import numerics
import op_oracle as oracle
from fastdw.kernels import cuda

DTYPES = (torch.float32, torch.float16, torch.bfloat16)
# (channels, k, stride, dilation, act)
CASES = [(12, 3, 1, 1, "relu6"), (40, 5, 2, 1, "hardswish"), (9, 3, 2, 2, "silu"),
         (8, 4, 3, 1, "hardsigmoid"), (6, 3, 1, 1, "relu"), (6, 3, 1, 1, "none")]


def gradients(dtype, channels, k, stride, dilation, act, layout="channels_last"):
    """(inputs and grad, the kernel's gradients, float64 autograd's)."""
    x = oracle.feature_map((2, channels, 9, 11), dtype, layout)
    weight = oracle.conv_weight((channels, 1, k, k), dtype)
    scale, shift = oracle.random_affine(channels)
    pad = dilation * (k - 1) // 2
    leaves = [t.double().requires_grad_() for t in (x, weight, scale, shift)]
    y = oracle.dwconv_bn_act(*leaves, stride, pad, dilation, act)
    grad = torch.randn(y.shape).to(dtype).to(memory_format=torch.channels_last)
    ref = torch.autograd.grad(y, leaves, grad.double())
    args = (grad, x, weight, scale, shift, stride, pad, dilation, act)
    return args, cuda.dwconv_bn_act_backward(*args), ref


@pytest.mark.usefixtures("poisoned_outputs")
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("channels, k, stride, dilation, act", CASES)
def test_gradients_match_float64(emulator, dtype, channels, k, stride, dilation, act):
    _, out, ref = gradients(dtype, channels, k, stride, dilation, act)
    assert "dw_backward_sum" in emulator.last_launch()
    for name, o, r, bound in zip(("x", "weight", "scale", "shift"), out, ref,
                                 (dtype, torch.float32, torch.float32, torch.float32)):
        assert o.shape == r.shape, name
        err = numerics.rel_err(o, r)
        assert err < numerics.REL_TOL[bound], f"{name}: relative error {err:.3g}"
    assert out[0].dtype == dtype and out[0].is_contiguous(memory_format=torch.channels_last)


@pytest.mark.usefixtures("poisoned_outputs")
@pytest.mark.parametrize("dtype", (torch.float32, torch.float16))
def test_nchw_runs_on_a_channels_last_copy(emulator, dtype):
    """An NCHW x goes through the channels_last kernels as a copy; x's gradient comes back
    NCHW."""
    _, out, ref = gradients(dtype, 6, 3, 2, 1, "relu6", layout="nchw")
    assert "dw_backward_sum" in emulator.last_launch()
    for name, o, r, bound in zip(("x", "weight", "scale", "shift"), out, ref,
                                 (dtype, torch.float32, torch.float32, torch.float32)):
        err = numerics.rel_err(o, r)
        assert err < numerics.REL_TOL[bound], f"{name}: relative error {err:.3g}"
    assert out[0].is_contiguous()


@pytest.mark.usefixtures("poisoned_outputs")
def test_bitwise_identical_run_to_run(emulator, monkeypatch):
    """The sums over pixels go through per-slice partials added in a fixed order, not atomics:
    other thread and block orders (emulator seeds) give the same bits; under the race detector
    the barriers order the in-block sums."""
    monkeypatch.setenv("FASTDW_CUDA_EMULATE_SEED", "1")
    args, first, _ = gradients(torch.float32, 40, 3, 1, 1, "silu")
    monkeypatch.setenv("FASTDW_CUDA_EMULATE_SEED", "2")
    monkeypatch.setenv("FASTDW_CUDA_EMULATE_RACECHECK", "1")
    second = cuda.dwconv_bn_act_backward(*args)
    for a, b in zip(first, second):
        assert torch.equal(a, b)


@pytest.mark.parametrize("grad, message", [
    (torch.randn(1, 4, 5, 5, dtype=torch.float16), "grad must have x's dtype"),
    (torch.randn(1, 4, 4, 5), r"grad must have y's shape \(1, 4, 5, 5\)"),
])
def test_bad_grad_is_named(emulator, grad, message):
    x = torch.randn(1, 4, 5, 5).to(memory_format=torch.channels_last)
    with pytest.raises(RuntimeError, match=message):
        emulator.dwconv_bn_act_backward(grad, x, torch.randn(4, 1, 3, 3), torch.rand(4),
                                        torch.rand(4), 1, 1, 1, "relu")


def test_the_backward_refuses_a_channel_multiplier(emulator):
    """The backward has no multiplier kernel (the backend sends those calls to reference)."""
    x = torch.randn(1, 4, 5, 5).to(memory_format=torch.channels_last)
    with pytest.raises(RuntimeError, match="for the backward"):
        emulator.dwconv_bn_act_backward(torch.randn(1, 8, 5, 5), x, torch.randn(8, 1, 3, 3),
                                        torch.rand(8), torch.rand(8), 1, 1, 1, "relu")
