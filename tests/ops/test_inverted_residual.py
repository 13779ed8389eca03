import pytest
import torch

import numerics
import op_oracle as oracle
from fastdw import ops
from fastdw.contract import BlockWeights

pytestmark = pytest.mark.inverted_residual

# (N, C_in, hidden or None for no expansion, C_out, k, stride, act, squeeze channels or None, H, W)
BLOCKS = [
    pytest.param((1, 24, 144, 24, 3, 1, "relu6", None, 8, 8), id="v2-t6-residual"),
    pytest.param((2, 16, 96, 24, 3, 2, "relu6", None, 9, 9), id="v2-t6-s2-odd-batch2"),
    pytest.param((1, 32, None, 16, 3, 1, "relu6", None, 8, 8), id="v2-t1-no-expand"),
    pytest.param((1, 40, 240, 40, 5, 1, "hardswish", 64, 7, 7), id="v3-k5-se-hardswish"),
    pytest.param((1, 16, None, 16, 3, 2, "relu", 8, 12, 12), id="v3-small-first-se-s2"),
    pytest.param((1, 13, 39, 13, 3, 1, "silu", 10, 5, 7), id="c13-se-odd"),
]
# Every layout in float32; the reduced-precision dtypes on the fast layout.
DTYPE_LAYOUTS = [(torch.float32, layout) for layout in oracle.LAYOUTS] + [
    (torch.float16, "channels_last"), (torch.bfloat16, "channels_last"),
    (torch.bfloat16, "nchw")]


def make_block(cfg, dtype, layout="nchw"):
    """(x, op arguments as a dict of tensors, oracle stage triples, SE tuple, stride, act)."""
    n, c_in, hidden, c_out, k, stride, act, squeeze, h, w = cfg
    x = oracle.feature_map((n, c_in, h, w), dtype, layout)
    expand = None
    if hidden is not None:
        expand = (oracle.conv_weight((hidden, c_in, 1, 1), dtype), *oracle.random_affine(hidden))
    else:
        hidden = c_in
    dw = (oracle.conv_weight((hidden, 1, k, k), dtype), *oracle.random_affine(hidden))
    project = (oracle.conv_weight((c_out, hidden, 1, 1), dtype), *oracle.random_affine(c_out))
    se = None
    if squeeze is not None:
        se = (oracle.conv_weight((squeeze, hidden, 1, 1), dtype), torch.randn(squeeze) * 0.1,
              oracle.conv_weight((hidden, squeeze, 1, 1), dtype), torch.randn(hidden) * 0.1)
    return x, expand, dw, project, se, stride, act


def call_op(x, expand, dw, project, se, stride, act, backend_name, residual=True, **se_kind):
    """The op on make_block's arguments; se_kind: se_act and se_gate, where not the defaults."""
    se_kwargs = {} if se is None else dict(zip(("se_w1", "se_b1", "se_w2", "se_b2"), se))
    return ops.inverted_residual(x, *(expand or (None, None, None)), *dw, *project,
                                 stride=stride, act=act, residual=residual, backend=backend_name,
                                 **se_kwargs, **se_kind)


@pytest.mark.parametrize("dtype,layout", DTYPE_LAYOUTS,
                         ids=[f"{d}-{l}".replace("torch.", "") for d, l in DTYPE_LAYOUTS])
@pytest.mark.parametrize("block", BLOCKS)
def test_matches_float64_oracle(backend_name, block, dtype, layout):
    args = make_block(block, dtype, layout)
    out = call_op(*args, backend_name)
    ref = oracle.inverted_residual(*args)
    assert out.shape == ref.shape and out.dtype == dtype
    fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    assert out.is_contiguous(memory_format=fmt)
    numerics.assert_close(out, ref, dtype)


def test_residual_false_drops_the_skip(backend_name):
    args = make_block(BLOCKS[0].values[0], torch.float32)
    out = call_op(*args, backend_name, residual=False)
    numerics.assert_close(out, oracle.inverted_residual(*args, residual=False), torch.float32)
    with_skip = oracle.inverted_residual(*args, residual=True)
    assert numerics.rel_err(out, with_skip) > 0.1  # the skip is a large part of the output


def _flat_inputs(x, expand, dw, project, se):
    return [x, *(expand or ()), *dw, *project, *(se or ())]


def _unflatten(flat, has_expand, has_se):
    it = iter(flat)
    x = next(it)
    expand = tuple(next(it) for _ in range(3)) if has_expand else None
    dw, project = tuple(next(it) for _ in range(3)), tuple(next(it) for _ in range(3))
    se = tuple(next(it) for _ in range(4)) if has_se else None
    return x, expand, dw, project, se


@pytest.mark.parametrize("dtype", oracle.DTYPES)
@pytest.mark.parametrize("block", [BLOCKS[1], BLOCKS[3], BLOCKS[4]])
def test_gradients_match_oracle(backend_name, block, dtype):
    x, expand, dw, project, se, stride, act = make_block(block, dtype, "channels_last")
    flat = _flat_inputs(x, expand, dw, project, se)
    inputs = [t.detach().requires_grad_() for t in flat]
    out = call_op(*_unflatten(inputs, expand is not None, se is not None), stride, act,
                  backend_name)
    grad = torch.randn(out.shape).to(dtype)
    got = torch.autograd.grad(out, inputs, grad)
    ref_inputs = [t.detach().double().requires_grad_() for t in flat]
    ref = oracle.inverted_residual(*_unflatten(ref_inputs, expand is not None, se is not None),
                                   stride, act)
    want = torch.autograd.grad(ref, ref_inputs, grad.double())
    for i, (g, w, t) in enumerate(zip(got, want, inputs)):
        assert g.shape == t.shape, i
        assert numerics.rel_err(g, w) < numerics.REL_TOL[dtype], f"input {i}"


# The squeeze-excite's (inner activation, gate): MobileNetV3's (the defaults), EfficientNet's
# and the two mixed.
SE_KINDS = [("relu", "hardsigmoid"), ("relu", "sigmoid"), ("silu", "hardsigmoid"),
            ("silu", "sigmoid")]


@pytest.mark.parametrize("block", [(1, 4, 8, 4, 3, 2, "hardswish", 2, 5, 5),
                                   (1, 4, None, 4, 3, 1, "relu6", None, 4, 5)],
                         ids=["expand-se-s2", "no-expand-residual"])
def test_gradcheck_float64(backend_name, block):
    x, expand, dw, project, se, stride, act = make_block(block, torch.float64)
    flat = [t.double().requires_grad_() for t in _flat_inputs(x, expand, dw, project, se)]

    def op(*tensors):
        return call_op(*_unflatten(tensors, expand is not None, se is not None), stride, act,
                       backend_name)
    assert torch.autograd.gradcheck(op, flat)


@pytest.mark.parametrize("se_act, se_gate", SE_KINDS, ids=["-".join(k) for k in SE_KINDS])
def test_squeeze_excite_act_and_gate(backend_name, se_act, se_gate):
    """Each SE inner activation and gate against float64 stock PyTorch: the forward (under
    no_grad the C++ kernel's direct route, with autograd the custom op) and the gradients of
    every input. Batch 2, residual, hidden 36 (no whole SIMD vector)."""
    x, expand, dw, project, se, stride, act = make_block(
        (2, 12, 36, 12, 3, 1, "hardswish", 10, 6, 7), torch.float32, "channels_last")
    flat = _flat_inputs(x, expand, dw, project, se)
    ref_inputs = [t.detach().double().requires_grad_() for t in flat]
    ref = oracle.inverted_residual(*_unflatten(ref_inputs, True, True), stride, act,
                                   se_act=se_act, se_gate=se_gate)
    if (se_act, se_gate) != SE_KINDS[0]:  # the case tells the kinds apart
        assert numerics.rel_err(ref, oracle.inverted_residual(x, expand, dw, project, se,
                                                               stride, act)) > 1e-3
    with torch.no_grad():
        out = call_op(x, expand, dw, project, se, stride, act, backend_name, se_act=se_act,
                      se_gate=se_gate)
    numerics.assert_close(out, ref.detach(), torch.float32)
    inputs = [t.detach().requires_grad_() for t in flat]
    out = call_op(*_unflatten(inputs, True, True), stride, act, backend_name, se_act=se_act,
                  se_gate=se_gate)
    numerics.assert_close(out.detach(), ref.detach(), torch.float32)
    grad = torch.randn(out.shape)
    got = torch.autograd.grad(out, inputs, grad)
    want = torch.autograd.grad(ref, ref_inputs, grad.double())
    for i, (g, w) in enumerate(zip(got, want)):
        assert numerics.rel_err(g, w) < numerics.REL_TOL[torch.float32], f"input {i}"


@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_opcheck(backend_name, layout):
    x, expand, dw, project, se, stride, act = make_block(BLOCKS[3].values[0], torch.float32,
                                                         layout)
    flat = [t.requires_grad_() for t in _flat_inputs(x, expand, dw, project, se)]
    x, expand, dw, project, se = _unflatten(flat, True, True)
    two_d = lambda w: w.flatten(1)  # noqa: E731  the kernel contract takes 1x1 weights as 2-D
    block = BlockWeights(two_d(expand[0]), *expand[1:], *dw, two_d(project[0]), *project[1:],
                         two_d(se[0]), se[1], two_d(se[2]), se[3])
    args = (x, *block, stride, act, True, "silu", "sigmoid", backend_name)
    torch.library.opcheck(torch.ops.fastdw.inverted_residual.default, args)
    grad = torch.randn(1, 40, 7, 7)
    detached = tuple(a.detach() if isinstance(a, torch.Tensor) else a for a in args)
    torch.library.opcheck(torch.ops.fastdw.inverted_residual_backward.default, (grad, *detached))
