"""Every tensor argument but x in a layout no kernel may assume: a strided slice (every other
element of a wider tensor) or, for the per-channel vectors, a stride-0 expansion of one value.
Each op on each backend must give the float64 oracle's result. x's own layouts are covered by
the op matrices (oracle.LAYOUTS)."""
import pytest
import torch

import numerics
import op_oracle as oracle
import test_dwconv_bn_act as dw_cases
import test_inverted_residual as ir_cases
import test_pwconv_bn_act as pw_cases


def sliced(t):
    """t's values in a view whose last dimension has stride 2."""
    if t is None:
        return None
    wide = torch.empty(*t.shape[:-1], 2 * t.shape[-1], dtype=t.dtype)
    wide[..., ::2] = t
    return wide[..., ::2]


def odd(t, kind):
    """t as `kind`: "sliced", or "expanded" (a 1-D vector becomes its first value broadcast
    with stride 0; anything else is sliced)."""
    if kind == "expanded" and t is not None and t.dim() == 1:
        return t[:1].expand(t.shape[0])
    return sliced(t)


KINDS = ["sliced", "expanded"]


@pytest.mark.dwconv_bn_act
@pytest.mark.parametrize("kind", KINDS)
def test_dwconv_bn_act(backend_name, kind):
    x, *tensors, cfg = dw_cases.make_case((2, 24, 9, 9, 3, 2, 1, 1), torch.float32, "nchw")
    weight, scale, shift = (odd(t, kind) for t in tensors)
    assert not (weight.is_contiguous() or scale.is_contiguous() or shift.is_contiguous())
    dw_cases.run_and_check(backend_name, x, weight, scale, shift, cfg, "hardswish",
                           torch.float32, "nchw")


@pytest.mark.pwconv_bn_act
@pytest.mark.parametrize("kind", KINDS)
def test_pwconv_bn_act(backend_name, kind):
    x, *tensors, residual = pw_cases.make_case((2, 24, 5, 7, 40), torch.float32, "nchw", True)
    weight, scale, shift = (odd(t, kind) for t in tensors)
    assert not (weight.is_contiguous() or scale.is_contiguous() or shift.is_contiguous())
    out = pw_cases.ops.pwconv_bn_act(x, weight, scale, shift, act="relu6", residual=residual,
                                     backend=backend_name)
    ref = oracle.pwconv_bn_act(x, weight, scale, shift, "relu6", residual)
    numerics.assert_close(out, ref, torch.float32)


@pytest.mark.inverted_residual
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("block", [ir_cases.BLOCKS[0], ir_cases.BLOCKS[3]])
def test_inverted_residual(backend_name, block, kind):
    x, expand, dw, project, se, stride, act = ir_cases.make_block(block, torch.float32)
    expand, dw, project, se = (None if group is None else tuple(odd(t, kind) for t in group)
                               for group in (expand, dw, project, se))
    out = ir_cases.call_op(x, expand, dw, project, se, stride, act, backend_name)
    ref = oracle.inverted_residual(x, expand, dw, project, se, stride, act)
    numerics.assert_close(out, ref, torch.float32)
