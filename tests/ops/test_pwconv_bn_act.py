import pytest
import torch

import numerics
import op_oracle as oracle
from fastdw import ops

pytestmark = pytest.mark.pwconv_bn_act

# (N, C_in, H, W, C_out): MobileNet 1x1 layers at small spatial sizes, then odd sizes.
SHAPES = [
    pytest.param((1, 32, 8, 8, 16), id="v2-project-c32"),
    pytest.param((2, 24, 7, 7, 144), id="v2-expand-c24-batch2"),
    pytest.param((1, 96, 4, 4, 576), id="v3-small-expand"),
    pytest.param((1, 13, 5, 7, 21), id="odd"),
]


def make_case(shape, dtype, layout, with_residual):
    n, c_in, h, w, c_out = shape
    x = oracle.feature_map((n, c_in, h, w), dtype, layout)
    weight = oracle.conv_weight((c_out, c_in, 1, 1), dtype)
    scale, shift = oracle.random_affine(c_out)
    residual = oracle.feature_map((n, c_out, h, w), dtype, layout) if with_residual else None
    return x, weight, scale, shift, residual


@pytest.mark.parametrize("with_residual", [False, True], ids=["plain", "residual"])
@pytest.mark.parametrize("layout", oracle.LAYOUTS)
@pytest.mark.parametrize("dtype", oracle.DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_matches_float64_oracle(backend_name, shape, dtype, layout, with_residual):
    x, weight, scale, shift, residual = make_case(shape, dtype, layout, with_residual)
    act = "relu6" if with_residual else "none"
    out = ops.pwconv_bn_act(x, weight, scale, shift, act=act, residual=residual,
                            backend=backend_name)
    ref = oracle.pwconv_bn_act(x, weight, scale, shift, act, residual)
    assert out.shape == ref.shape and out.dtype == dtype
    fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    assert out.is_contiguous(memory_format=fmt)
    numerics.assert_close(out, ref, dtype)


@pytest.mark.parametrize("act", sorted(oracle.ACT_MODULES))
def test_every_activation_and_2d_weight(backend_name, act):
    x, weight, scale, shift, _ = make_case((2, 16, 5, 5, 24), torch.float32, "nchw", False)
    out = ops.pwconv_bn_act(x, weight.flatten(1), scale, shift, act=act, backend=backend_name)
    numerics.assert_close(out, oracle.pwconv_bn_act(x, weight, scale, shift, act), torch.float32)


@pytest.mark.parametrize("dtype", oracle.DTYPES)
def test_gradients_match_oracle(backend_name, dtype):
    tensors = make_case((2, 16, 5, 5, 24), dtype, "channels_last", True)
    inputs = [t.detach().requires_grad_() for t in tensors]
    out = ops.pwconv_bn_act(*inputs[:4], act="silu", residual=inputs[4], backend=backend_name)
    grad = torch.randn(out.shape).to(dtype)
    got = torch.autograd.grad(out, inputs, grad)
    ref_inputs = [t.detach().double().requires_grad_() for t in tensors]
    ref = oracle.pwconv_bn_act(*ref_inputs[:4], "silu", ref_inputs[4])
    want = torch.autograd.grad(ref, ref_inputs, grad.double())
    for name, g, w in zip(("x", "weight", "scale", "shift", "residual"), got, want):
        assert numerics.rel_err(g, w) < numerics.REL_TOL[dtype], name


@pytest.mark.parametrize("with_residual", [False, True], ids=["plain", "residual"])
def test_gradcheck_float64(backend_name, with_residual):
    tensors = make_case((1, 5, 3, 4, 6), torch.float64, "strided", with_residual)
    inputs = tuple(t.double().requires_grad_() for t in tensors if t is not None)

    def op(x, weight, scale, shift, residual=None):
        return ops.pwconv_bn_act(x, weight, scale, shift, act="hardswish", residual=residual,
                                 backend=backend_name)
    assert torch.autograd.gradcheck(op, inputs)


@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_opcheck(backend_name, layout):
    x, weight, scale, shift, residual = make_case((2, 8, 5, 5, 12), torch.float32, layout, True)
    args = [t.requires_grad_() for t in (x, weight.flatten(1), scale, shift)]
    torch.library.opcheck(torch.ops.fastdw.pwconv_bn_act.default,
                          (*args, "relu6", residual.requires_grad_(), backend_name))
    torch.library.opcheck(torch.ops.fastdw.pwconv_bn_act_backward.default,
                          (torch.randn(2, 12, 5, 5), *(t.detach() for t in args), "relu6",
                           backend_name))
