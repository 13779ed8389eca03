"""Inputs a demanding user passes that the op matrix does not: non-finite values where stock
PyTorch keeps results finite, against the float64 stock-PyTorch oracle (tests/ops/op_oracle.py),
under the interpreter's tiles and the GPU's (gpu_tiles=True)."""
import importlib
import threading
import os

import pytest
import torch

from numerics import assert_close

pytest.importorskip("fastdw.kernels.triton", reason="needs triton installed")

import op_oracle  # noqa: E402  (tests/triton/conftest.py puts tests/ops on sys.path)
from ir_blocks import block_weights  # noqa: E402

# By module path: the package attributes of these names are the kernel functions.
dw, ir = (importlib.import_module(f"fastdw.kernels.triton.{name}")
          for name in ("dwconv_bn_act", "inverted_residual"))

if os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip("forces launcher choices on CPU tensors under TRITON_INTERPRET=1",
                allow_module_level=True)


def assert_same_nonfinite(out, ref, dtype):
    """out has NaN and +-Inf exactly where the float64 ref has them, and is within the
    tolerance of ref on the rest."""
    ref = ref.to(out.dtype).double()
    out = out.double()
    for name, pick in (("NaN", torch.isnan), ("+Inf", torch.isposinf),
                       ("-Inf", torch.isneginf)):
        assert torch.equal(pick(out), pick(ref)), f"{name} at other elements than stock"
    finite = torch.isfinite(ref)
    assert_close(out[finite], ref[finite], dtype)


@pytest.mark.parametrize("gpu_tiles", [False, True], ids=["interpreter_tiles", "gpu_tiles"])
def test_fused_block_keeps_an_inf_input_out_of_the_padded_hidden_channels(gpu_tiles):
    # 24 hidden channels: the fused kernel pads them to a chunk of 16 or 32. An Inf input pixel
    # makes each real hidden channel +-Inf before relu6, which clamps it; a padding channel
    # (weights 0) would be Inf * 0 = NaN and reach every output channel of the window.
    x = op_oracle.feature_map((1, 8, 6, 6))
    x[0, 3, 2, 2] = float("inf")
    weights, (expand, dw, project, se) = block_weights(8, 24, 8, 3, torch.float32, False)
    out = ir.forward(x, weights, 1, "relu6", True, "relu", "hardsigmoid", gpu_tiles=gpu_tiles)
    ref = op_oracle.inverted_residual(x, expand, dw, project, se, 1, "relu6", True)
    assert_same_nonfinite(out, ref, torch.float32)


def test_threads_calling_the_backend_at_once():
    # Triton's interpreter patches triton.language for the duration of a launch and restores it
    # after, so two threads interpreting kernels at once broke each other's launches.
    from fastdw.ops.dwconv_bn_act import dwconv_bn_act
    c, threads = 8, 4
    weight = op_oracle.conv_weight((c, 1, 3, 3), torch.float32)
    scale, shift = op_oracle.random_affine(c)
    xs = [op_oracle.feature_map((1, c, 6, 6)) for _ in range(threads)]
    outs, errors = [None] * threads, []
    start = threading.Barrier(threads)

    def work(i):
        start.wait()
        try:
            for _ in range(3):  # a few launches each, so they overlap on every run
                outs[i] = dwconv_bn_act(xs[i], weight, scale, shift, act="hardswish",
                                        backend="triton")
        except Exception as e:  # noqa: BLE001  (reported below, in the test's thread)
            errors.append(e)

    pool = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    assert not errors, errors
    for x, out in zip(xs, outs):
        assert_close(out, op_oracle.dwconv_bn_act(x, weight, scale, shift, 1, 1, 1, "hardswish"),
                     torch.float32)


def test_dwconv_backward_ignores_pixels_no_output_reads():
    # Stride 2 without padding on an even map: stock never reads the last row and column, so an
    # Inf there leaves every gradient finite. The GPU tile's rows and columns past the output
    # map read it all the same, and silu' (Inf) * 0 = NaN reached the weight, scale and shift
    # gradients through their sums.
    c = 4
    x = op_oracle.feature_map((1, c, 6, 6))
    x[0, 1, 5, 5] = float("inf")
    weight = op_oracle.conv_weight((c, 1, 3, 3), torch.float32)
    scale, shift = op_oracle.random_affine(c)
    conv = (2, 0, 1, "silu")
    leaves = [t.double().requires_grad_() for t in (x, weight, scale, shift)]
    ref = op_oracle.dwconv_bn_act(*leaves, *conv)
    grad = torch.randn(ref.shape)
    grads = dw.backward(grad, x, weight, scale, shift, *conv, gpu_tiles=True)
    for name, g, r in zip(("x", "weight", "scale", "shift"), grads,
                          torch.autograd.grad(ref, leaves, grad.double())):
        assert torch.isfinite(r).all(), name
        assert_close(g, r, torch.float32)


@pytest.mark.parametrize("act", ["relu", "relu6", "hardswish", "hardsigmoid"])
def test_dwconv_backward_stops_an_inf_gradient_where_act_is_flat(act):
    # Channel 1's shift puts every u = z * scale + shift below -3, where these activations are
    # flat: autograd selects a zero gradient there (torch's threshold/hardtanh/hardsigmoid/
    # hardswish backward), so an Inf incoming gradient gives 0, where g * act'(u) = Inf * 0
    # gave NaN in every gradient of the channel.
    c = 3
    x = op_oracle.feature_map((1, c, 5, 6))
    weight = op_oracle.conv_weight((c, 1, 3, 3), torch.float32)
    scale, shift = op_oracle.random_affine(c)
    shift[1] = -100.0
    conv = (1, 1, 1, act)
    leaves = [t.double().requires_grad_() for t in (x, weight, scale, shift)]
    ref = op_oracle.dwconv_bn_act(*leaves, *conv)
    grad = torch.randn(ref.shape)
    grad[0, 1, 2, 3] = float("inf")
    grads = dw.backward(grad, x, weight, scale, shift, *conv)
    for name, g, r in zip(("x", "weight", "scale", "shift"), grads,
                          torch.autograd.grad(ref, leaves, grad.double())):
        assert torch.isfinite(r).all(), name
        assert_close(g, r, torch.float32)
