"""NaN and Inf go through every op, activation and backend as they go through stock PyTorch: a
NaN or infinite pre-activation is not clamped away (relu(NaN) is NaN, relu6(inf) is 6,
hardswish(-inf) is NaN), and gradients at those points are autograd's.

Non-finite values enter through the per-channel shift (so each reaches the activation exactly,
after a finite conv) and through one input pixel (so they also pass through the convs). The
oracle is stock PyTorch in float64 (tests/ops/op_oracle.py); outputs must have NaN and +-Inf at
exactly the oracle's places and be within the float32 bound elsewhere."""
import pytest
import torch

import numerics
import op_oracle as oracle
from fastdw import ops
from fastdw.contract import ACTIVATIONS

NONFINITE = (float("nan"), float("inf"), -float("inf"))


def shift_with_nonfinite(channels):
    """A shift vector whose first three channels are NaN, +inf and -inf."""
    shift = torch.empty(channels).uniform_(-0.5, 0.5)
    shift[:3] = torch.tensor(NONFINITE)
    return shift


def x_with_nonfinite(shape):
    x = torch.randn(shape)
    x[0, :, 1, 1] = float("nan")
    x[-1, -1, -1, -1] = float("inf")
    return x


def assert_same_nonfinite(out, ref):
    out, ref = out.double(), ref.double()
    assert torch.equal(out.isnan(), ref.isnan()), "NaN at other places than stock PyTorch"
    assert torch.equal(out.isposinf(), ref.isposinf()), "+inf at other places"
    assert torch.equal(out.isneginf(), ref.isneginf()), "-inf at other places"
    finite = ref.isfinite()
    if finite.any():
        assert numerics.rel_err(out[finite], ref[finite]) < numerics.REL_TOL[torch.float32]


@pytest.mark.parametrize("act", ACTIVATIONS)
@pytest.mark.parametrize("source", ["shift", "x"])
def test_dwconv_bn_act(backend_name, act, source):
    c = 8
    x = x_with_nonfinite((2, c, 7, 6)) if source == "x" else torch.randn(2, c, 7, 6)
    weight, scale = oracle.conv_weight((c, 1, 3, 3), torch.float32), torch.rand(c) + 0.5
    shift = shift_with_nonfinite(c) if source == "shift" else torch.randn(c)
    with torch.no_grad():
        out = ops.dwconv_bn_act(x, weight, scale, shift, act=act, backend=backend_name)
    assert_same_nonfinite(out, oracle.dwconv_bn_act(x, weight, scale, shift, 1, 1, 1, act))


@pytest.mark.parametrize("act", ACTIVATIONS)
@pytest.mark.parametrize("source", ["shift", "x"])
def test_pwconv_bn_act(backend_name, act, source):
    c_in, c_out = 8, 16
    x = x_with_nonfinite((2, c_in, 5, 5)) if source == "x" else torch.randn(2, c_in, 5, 5)
    weight, scale = oracle.conv_weight((c_out, c_in), torch.float32), torch.rand(c_out) + 0.5
    shift = shift_with_nonfinite(c_out) if source == "shift" else torch.randn(c_out)
    with torch.no_grad():
        out = ops.pwconv_bn_act(x, weight, scale, shift, act=act, backend=backend_name)
    assert_same_nonfinite(out, oracle.pwconv_bn_act(x, weight, scale, shift, act))


@pytest.mark.parametrize("act", ACTIVATIONS)
@pytest.mark.parametrize("se", [False, True], ids=["plain", "se"])
@pytest.mark.parametrize("where", ["expand", "dw", "project"])
def test_inverted_residual(backend_name, act, se, where):
    """Non-finite shifts in one stage: through the expand or depthwise activation (a NaN
    hidden channel makes every output of its pixels NaN, an activation that clamped it would
    not), or added after the project conv."""
    c, hidden = 8, 24
    x = torch.randn(1, c, 6, 6)

    def stage(name, c_out, c_in, k=None):
        shape = (c_out, 1, k, k) if k else (c_out, c_in)
        shift = shift_with_nonfinite(c_out) if name == where else torch.randn(c_out) * 0.3
        return oracle.conv_weight(shape, torch.float32), torch.rand(c_out) + 0.5, shift

    expand, dw = stage("expand", hidden, c), stage("dw", hidden, hidden, 3)
    project = stage("project", c, hidden)
    se_args = ((oracle.conv_weight((8, hidden), torch.float32), torch.randn(8),
                oracle.conv_weight((hidden, 8), torch.float32), torch.randn(hidden))
               if se else None)
    se_kwargs = dict(zip(("se_w1", "se_b1", "se_w2", "se_b2"), se_args or ()))
    with torch.no_grad():
        out = ops.inverted_residual(x, *expand, *dw, *project, act=act, backend=backend_name,
                                    **se_kwargs)
    assert_same_nonfinite(out, oracle.inverted_residual(x, expand, dw, project, se_args, 1,
                                                        act))


@pytest.mark.parametrize("act", ACTIVATIONS)
def test_dwconv_bn_act_gradients_at_nonfinite_points(backend_name, act):
    """The shift's gradient sums the activation's derivative over each channel, so a backend
    whose derivative at a NaN or infinite pre-activation differs from autograd's shows there.
    (Autograd's CPU kernels answer differently at NaN in their vectorised body and their
    scalar tail; 2*8*6*6 elements leave no tail, so the oracle is the vectorised answer.)"""
    c = 8
    x, weight = torch.randn(2, c, 6, 6), oracle.conv_weight((c, 1, 3, 3), torch.float32)
    scale, shift = torch.rand(c) + 0.5, shift_with_nonfinite(c)
    leaves = [t.clone().requires_grad_() for t in (x, weight, scale, shift)]
    ops.dwconv_bn_act(*leaves, act=act, backend=backend_name).backward(
        torch.ones(2, c, 6, 6))
    ref_leaves = [t.double().requires_grad_() for t in (x, weight, scale, shift)]
    oracle.dwconv_bn_act(*ref_leaves, 1, 1, 1, act).backward(torch.ones(2, c, 6, 6).double())
    for leaf, ref in zip(leaves, ref_leaves):
        assert_same_nonfinite(leaf.grad, ref.grad)
