import pytest
import torch

import numerics
import op_oracle as oracle
from fastdw import ops

pytestmark = pytest.mark.dwconv_bn_act

# (N, C, H, W, k, stride, dilation, channel multiplier): MobileNetV1/V2/V3 depthwise layers at
# small spatial sizes, then the edge cases the op contract promises.
SHAPES = [
    pytest.param((1, 32, 16, 16, 3, 1, 1, 1), id="v2-c32-s1"),
    pytest.param((2, 144, 14, 14, 3, 2, 1, 1), id="v2-c144-s2-batch2"),
    pytest.param((1, 72, 10, 10, 5, 2, 1, 1), id="v3-c72-k5-s2"),
    pytest.param((1, 240, 7, 7, 5, 1, 1, 1), id="v3-c240-k5"),
    pytest.param((1, 1024, 4, 4, 3, 1, 1, 1), id="v1-c1024"),
    pytest.param((1, 96, 9, 9, 3, 2, 1, 1), id="odd-hw-s2"),
    pytest.param((1, 40, 7, 7, 7, 1, 1, 1), id="k7"),
    pytest.param((2, 20, 11, 13, 3, 1, 2, 1), id="dilation2-c20-odd"),
    pytest.param((1, 13, 8, 9, 3, 2, 1, 2), id="multiplier2-c13-s2"),
]


def make_case(cfg, dtype, layout):
    n, c, h, w, k, stride, dilation, m = cfg
    x = oracle.feature_map((n, c, h, w), dtype, layout)
    weight = oracle.conv_weight((c * m, 1, k, k), dtype)
    scale, shift = oracle.random_affine(c * m)
    return x, weight, scale, shift, dict(stride=stride, dilation=dilation)


def expected_format(layout):
    return torch.channels_last if layout == "channels_last" else torch.contiguous_format


def run_and_check(backend_name, x, weight, scale, shift, cfg, act, dtype, layout):
    k = weight.shape[-1]
    out = ops.dwconv_bn_act(x, weight, scale, shift, act=act, backend=backend_name, **cfg)
    ref = oracle.dwconv_bn_act(x, weight, scale, shift, cfg["stride"],
                               cfg["dilation"] * (k - 1) // 2, cfg["dilation"], act)
    assert out.shape == ref.shape and out.dtype == dtype
    assert out.is_contiguous(memory_format=expected_format(layout))
    numerics.assert_close(out, ref, dtype)


@pytest.mark.parametrize("layout", oracle.LAYOUTS)
@pytest.mark.parametrize("dtype", oracle.DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_matches_float64_oracle(backend_name, shape, dtype, layout):
    x, weight, scale, shift, cfg = make_case(shape, dtype, layout)
    run_and_check(backend_name, x, weight, scale, shift, cfg, "relu6", dtype, layout)


@pytest.mark.parametrize("dtype", oracle.DTYPES)
@pytest.mark.parametrize("act", sorted(oracle.ACT_MODULES))
def test_every_activation(backend_name, act, dtype):
    x, weight, scale, shift, cfg = make_case((2, 24, 9, 9, 3, 1, 1, 1), dtype, "channels_last")
    run_and_check(backend_name, x, weight, scale, shift, cfg, act, dtype, "channels_last")


def test_silu_element_by_element_over_the_float32_range(backend_name):
    """silu's exponential (the cpp backend computes it lane-wise, not through libm) is accurate
    to float32 rounding in every element, wherever silu is a normal float: pre-activations
    drawn across [-87, 88] through the shift, 67 channels so vector tails run too."""
    c = 67
    x = oracle.feature_map((2, c, 6, 5), torch.float32, "channels_last")
    weight = oracle.conv_weight((c, 1, 3, 3), torch.float32)
    scale = torch.rand(c) * 1e-3
    shift = torch.empty(c).uniform_(-87.0, 88.0)
    out = ops.dwconv_bn_act(x, weight, scale, shift, act="silu", backend=backend_name)
    ref = oracle.dwconv_bn_act(x, weight, scale, shift, 1, 1, 1, "silu")
    normal = ref.abs() >= torch.finfo(torch.float32).tiny
    err = ((out.double() - ref).abs() / ref.abs())[normal]
    # float32 rounding of the pre-activation (|v| <= 88) alone moves e^v by up to 88 * 2**-24
    assert err.max() < numerics.REL_TOL[torch.float32], err.max()


def test_defaults_and_explicit_padding(backend_name):
    x = oracle.feature_map((1, 16, 8, 8))
    weight = oracle.conv_weight((16, 1, 3, 3), torch.float32)
    ones, zeros = torch.ones(16), torch.zeros(16)
    out = ops.dwconv_bn_act(x, weight, padding=0, backend=backend_name)  # scale/shift None = 1/0
    numerics.assert_close(out, oracle.dwconv_bn_act(x, weight, ones, zeros, 1, 0, 1, "relu6"),
                          torch.float32)
    assert out.shape == (1, 16, 6, 6)


@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("dtype", oracle.DTYPES)
def test_gradients_match_oracle(backend_name, dtype, layout):
    x, weight, scale, shift, cfg = make_case((2, 24, 9, 9, 5, 2, 1, 1), dtype, layout)
    inputs = [t.detach().requires_grad_() for t in (x, weight, scale, shift)]
    out = ops.dwconv_bn_act(*inputs, act="hardswish", backend=backend_name, **cfg)
    grad = torch.randn(out.shape).to(dtype)
    got = torch.autograd.grad(out, inputs, grad)
    ref_inputs = [t.detach().double().requires_grad_() for t in (x, weight, scale, shift)]
    ref = oracle.dwconv_bn_act(*ref_inputs, cfg["stride"], 2, 1, "hardswish")
    want = torch.autograd.grad(ref, ref_inputs, grad.double())
    for name, g, w, t in zip(("x", "weight", "scale", "shift"), got, want, inputs):
        assert g.shape == t.shape, name
        assert numerics.rel_err(g, w) < numerics.REL_TOL[dtype], name


@pytest.mark.parametrize("cfg", [((1, 4, 7, 6), 3, 2, 1, 1, "hardswish", "nchw"),
                                 ((1, 3, 6, 6), 3, 1, 2, 2, "relu6", "channels_last"),
                                 ((2, 2, 5, 5), 5, 1, 1, 1, "silu", "strided")],
                         ids=["s2-odd", "dilation2-multiplier2", "k5-strided"])
def test_gradcheck_float64(backend_name, cfg):
    shape, k, stride, dilation, m, act, layout = cfg
    x = oracle.feature_map(shape, torch.float64, layout).requires_grad_()
    weight = oracle.conv_weight((shape[1] * m, 1, k, k), torch.float64).requires_grad_()
    scale, shift = (t.double().requires_grad_() for t in oracle.random_affine(shape[1] * m))

    def op(*args):
        return ops.dwconv_bn_act(*args, stride=stride, dilation=dilation, act=act,
                                 backend=backend_name)
    assert torch.autograd.gradcheck(op, (x, weight, scale, shift))


@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_opcheck(backend_name, layout):
    x = oracle.feature_map((2, 8, 7, 7), torch.float32, layout).requires_grad_()
    weight = oracle.conv_weight((8, 1, 3, 3), torch.float32).requires_grad_()
    scale, shift = (t.requires_grad_() for t in oracle.random_affine(8))
    torch.library.opcheck(torch.ops.fastdw.dwconv_bn_act.default,
                          (x, weight, scale, shift, 2, 1, 1, "hardswish", backend_name))
    grad = torch.randn(2, 8, 4, 4)
    torch.library.opcheck(torch.ops.fastdw.dwconv_bn_act_backward.default,
                          (grad, x.detach(), weight.detach(), scale.detach(), shift.detach(),
                           2, 1, 1, "hardswish", backend_name))
