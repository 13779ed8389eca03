import pytest
import torch
import torch.nn as nn

import numerics
import op_oracle as oracle
from fastdw import ops


@pytest.mark.parametrize("affine", [True, False])
def test_fold_bn_equals_eval_batchnorm(affine):
    bn = nn.BatchNorm2d(12, eps=1e-3, affine=affine).eval()
    numerics.randomize_bn(bn, bias=(-1, 1), running_mean=(-1, 1), running_var=(0.1, 3))
    bn = bn.double()
    x = torch.randn(2, 12, 5, 5, dtype=torch.float64)
    scale, shift = ops.fold_bn(bn)
    torch.testing.assert_close(x * scale[:, None, None] + shift[:, None, None], bn(x),
                               rtol=1e-12, atol=1e-12)


def test_fold_bn_of_a_half_precision_bn_is_fp32():
    bn = nn.BatchNorm2d(4).eval()
    # tiny variances (eps is 1% to 9% of var + eps) and weight 1: the scale is rsqrt(var + eps)
    numerics.randomize_bn(bn, weight=None, bias=None, running_mean=None,
                          running_var=(1e-4, 1e-3))
    scale, shift = ops.fold_bn(bn.half())
    assert scale.dtype == shift.dtype == torch.float32
    want = torch.rsqrt(bn.running_var.double() + bn.eps)
    assert numerics.rel_err(scale, want) < 1e-6


def block(x, params, backend_name):
    """A MobileNetV3-style stretch: dw+BN+hardswish, pw+BN, then a fused SE block."""
    dw_w, dw_s, dw_b, pw_w, pw_s, pw_b, ir = params
    h = ops.dwconv_bn_act(x, dw_w, dw_s, dw_b, act="hardswish", backend=backend_name)
    h = ops.pwconv_bn_act(h, pw_w, pw_s, pw_b, residual=x, backend=backend_name)
    return ops.inverted_residual(h, *ir, stride=2, act="hardswish", backend=backend_name)


def make_params(c=16, hidden=32):
    def triple(shape):
        return (oracle.conv_weight(shape, torch.float32), *oracle.random_affine(shape[0]))
    return (*triple((c, 1, 3, 3)), *triple((c, c, 1, 1)),
            (*triple((hidden, c, 1, 1)), *triple((hidden, 1, 5, 5)), *triple((c, hidden, 1, 1))))


@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_compile_fullgraph_forward_and_backward(backend_name, layout):
    params = make_params()
    x = oracle.feature_map((2, 16, 8, 8), torch.float32, layout)
    torch._dynamo.reset()
    compiled = torch.compile(block, fullgraph=True)  # fullgraph: any graph break raises
    x_eager, x_comp = x.clone().requires_grad_(), x.clone().requires_grad_()
    eager = block(x_eager, params, backend_name)
    out = compiled(x_comp, params, backend_name)
    torch.testing.assert_close(out, eager, rtol=1e-5, atol=1e-5)
    assert out.is_contiguous(memory_format=torch.channels_last) == (layout == "channels_last")
    grad = torch.randn(out.shape)
    eager.backward(grad)
    out.backward(grad)
    torch.testing.assert_close(x_comp.grad, x_eager.grad, rtol=1e-5, atol=1e-5)
