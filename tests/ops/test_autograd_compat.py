"""The ops under every autograd path stock PyTorch offers (torch.func transforms, forward-mode
AD, double backward) and on an empty batch, against the float64 stock oracle (op_oracle) on
fresh random inputs."""
import pytest
import torch
import torch.autograd.forward_ad as fwAD

import numerics
import op_oracle as oracle
from fastdw import ops

F32 = torch.float32


def dw_case(n=2):
    x = oracle.feature_map((n, 8, 6, 5))
    return (x, oracle.conv_weight((8, 1, 3, 3), F32), *oracle.random_affine(8)), \
        dict(stride=2, act="silu")


def pw_case(n=2):
    x = oracle.feature_map((n, 8, 4, 5))
    return (x, oracle.conv_weight((6, 8, 1, 1), F32), *oracle.random_affine(6),
            oracle.feature_map((n, 6, 4, 5))), dict(act="hardswish")


def ir_case(n=1):
    x = oracle.feature_map((n, 8, 5, 5))
    return (x, oracle.conv_weight((16, 8, 1, 1), F32), *oracle.random_affine(16),
            oracle.conv_weight((16, 1, 3, 3), F32), *oracle.random_affine(16),
            oracle.conv_weight((8, 16, 1, 1), F32), *oracle.random_affine(8)), dict(act="silu")


# op name -> (case(n): (tensors, options), fastdw call, float64 stock oracle): both calls take
# the case's tensors positionally and its options by keyword.
OPS = {
    "dwconv_bn_act": (
        dw_case,
        lambda x, w, s, b, backend=None, **o: ops.dwconv_bn_act(x, w, s, b, backend=backend, **o),
        lambda x, w, s, b, stride, act: oracle.dwconv_bn_act(x, w, s, b, stride, 1, 1, act)),
    "pwconv_bn_act": (
        pw_case,
        lambda x, w, s, b, r, backend=None, **o: ops.pwconv_bn_act(x, w, s, b, residual=r,
                                                                   backend=backend, **o),
        lambda x, w, s, b, r, act: oracle.pwconv_bn_act(x, w, s, b, act, r)),
    "inverted_residual": (
        ir_case,
        lambda x, *t, backend=None, **o: ops.inverted_residual(x, *t, backend=backend, **o),
        lambda x, *t, act: oracle.inverted_residual(x, t[0:3], t[3:6], t[6:9], None, 1, act)),
}


def setup(name, backend_name, n=None):
    """(float32 tensors, fastdw function of them, float64 oracle function of them)."""
    case, call, stock = OPS[name]
    tensors, options = case() if n is None else case(n)
    return (tensors, lambda *t: call(*t, backend=backend_name, **options),
            lambda *t: stock(*(u.double() for u in t), **options))


def assert_all_close(got, want, dtype=F32):
    for i, (g, w) in enumerate(zip(got, want, strict=True)):
        assert g.shape == w.shape, i
        assert numerics.rel_err(g, w) < numerics.REL_TOL[dtype], f"tensor {i}"


@pytest.mark.parametrize("name", OPS)
def test_func_transforms_match_the_oracle(backend_name, name):
    tensors, op, stock = setup(name, backend_name)
    argnums = tuple(range(len(tensors)))
    out, vjp_fn = torch.func.vjp(op, *tensors)
    cotangent = torch.randn(out.shape)
    ref, ref_vjp_fn = torch.func.vjp(stock, *tensors)
    numerics.assert_close(out, ref, F32)
    want = ref_vjp_fn(cotangent.double())
    assert_all_close(vjp_fn(cotangent), want)
    grads = torch.func.grad(lambda *t: (op(*t) * cotangent).sum(), argnums)(*tensors)
    assert_all_close(grads, want)
    # jacrev: vmap over the backward's cotangents
    assert_all_close(torch.func.jacrev(op, argnums)(*tensors),
                     torch.func.jacrev(stock, argnums)(*tensors))
    tangents = tuple(torch.randn(t.shape) for t in tensors)
    _, jvp_out = torch.func.jvp(op, tensors, tangents)
    _, jvp_want = torch.func.jvp(stock, tensors, tangents)
    numerics.assert_close(jvp_out, jvp_want, F32)


@pytest.mark.parametrize("name", OPS)
def test_forward_mode_ad_matches_the_oracle(backend_name, name):
    # Dual tensors outside functorch (torch.autograd.forward_ad) carry their tangents too.
    tensors, op, stock = setup(name, backend_name)
    tangents = [torch.randn(t.shape) for t in tensors]
    with fwAD.dual_level():
        out = op(*(fwAD.make_dual(t, d) for t, d in zip(tensors, tangents)))
        tangent = fwAD.unpack_dual(out).tangent
    _, want = torch.func.jvp(stock, tuple(tensors), tuple(tangents))
    numerics.assert_close(tangent, want, F32)


@pytest.mark.parametrize("name", OPS)
def test_double_backward_matches_the_oracle(backend_name, name):
    tensors, op, stock = setup(name, backend_name)
    cotangent, direction = None, [torch.randn(t.shape) for t in tensors]

    def second_order(fn, inputs):
        """(gradients with create_graph=True, then the gradients of <gradients, direction>)."""
        nonlocal cotangent
        out = fn(*inputs)
        cotangent = torch.randn(out.shape) if cotangent is None else cotangent
        first = torch.autograd.grad(out, inputs, cotangent.to(out.dtype), create_graph=True)
        dot = sum((g * d.to(g.dtype)).sum() for g, d in zip(first, direction))
        return first, torch.autograd.grad(dot, inputs, allow_unused=True)

    got = second_order(op, [t.clone().requires_grad_() for t in tensors])
    want = second_order(stock, [t.double().requires_grad_() for t in tensors])
    assert_all_close(got[0], want[0])
    # A gradient that does not depend on an input (the residual's) is None on both sides.
    assert [g is None for g in got[1]] == [w is None for w in want[1]]
    assert_all_close([g for g in got[1] if g is not None], [w for w in want[1] if w is not None])


def test_double_backward_of_hardsigmoid_fails_like_stock(backend_name):
    # Stock PyTorch has no second derivative of hardsigmoid (the squeeze-excite gate and the
    # activation): the second backward raises as it does for a stock model, never a wrong value.
    (x, w, s, b), _ = dw_case()
    x.requires_grad_()
    for fn in (torch.nn.functional.hardsigmoid,
               lambda t: ops.dwconv_bn_act(t, w, s, b, act="hardsigmoid", backend=backend_name)):
        grad, = torch.autograd.grad(fn(x).sum(), x, create_graph=True)
        with pytest.raises(RuntimeError, match="hardsigmoid_backward is not implemented"):
            grad.sum().backward()


@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("name", OPS)
def test_empty_batch_gives_empty_outputs_and_zero_weight_gradients(backend_name, name, layout):
    tensors, op, stock = setup(name, backend_name, n=0)
    if layout == "channels_last":
        tensors = tuple(t.to(memory_format=torch.channels_last) if t.dim() == 4 else t
                        for t in tensors)
    with torch.no_grad():  # the kernel-first route (dispatch.cpp_direct) on cpp
        assert op(*tensors).shape == stock(*tensors).shape
    inputs = [t.clone().requires_grad_() for t in tensors]
    out = op(*inputs)
    ref_inputs = [t.double().requires_grad_() for t in tensors]
    ref = stock(*ref_inputs)
    assert out.shape == ref.shape and out.shape[0] == 0 and out.dtype == F32
    got = torch.autograd.grad(out.sum(), inputs)
    want = torch.autograd.grad(ref.sum(), ref_inputs)
    for g, w in zip(got, want, strict=True):  # empty, or zeros: exactly the oracle's
        torch.testing.assert_close(g, w.float(), rtol=0, atol=0)
