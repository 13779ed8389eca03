"""Every malformed call raises TypeError/ValueError naming the argument, before any kernel runs."""
import pytest
import torch

import fastdw
from fastdw import ops

X = torch.randn(1, 8, 6, 6)
DW = torch.randn(8, 1, 3, 3)
PW = torch.randn(16, 8, 1, 1)
V8, V16 = torch.ones(8), torch.ones(16)
META = torch.device("meta")  # a second device that exists without a GPU


def dw_call(**overrides):
    kwargs = dict(x=X, weight=DW, scale=V8, shift=V8)
    kwargs.update(overrides)
    x, weight, scale, shift = (kwargs.pop(k) for k in ("x", "weight", "scale", "shift"))
    return lambda: ops.dwconv_bn_act(x, weight, scale, shift, **kwargs)


def pw_call(**overrides):
    kwargs = dict(x=X, weight=PW, scale=V16, shift=V16)
    kwargs.update(overrides)
    x, weight, scale, shift = (kwargs.pop(k) for k in ("x", "weight", "scale", "shift"))
    return lambda: ops.pwconv_bn_act(x, weight, scale, shift, **kwargs)


def ir_call(**overrides):
    # Every vector given (as a model passes them): on cpp such calls reach the kernel first.
    kwargs = dict(x=X, expand_w=torch.randn(24, 8), expand_scale=torch.ones(24),
                  expand_shift=torch.zeros(24), dw_w=torch.randn(24, 1, 3, 3),
                  dw_scale=torch.ones(24), dw_shift=torch.zeros(24),
                  project_w=torch.randn(8, 24), project_scale=V8, project_shift=V8)
    kwargs.update(overrides)
    positional = [kwargs.pop(k) for k in list(kwargs)[:10]]
    return lambda: ops.inverted_residual(*positional, **kwargs)


CASES = [
    # (call, exception, text the message must contain)
    (dw_call(x=torch.randn(8, 6, 6)), ValueError, "x must be 4-D"),
    (dw_call(x=torch.randn(1, 8, 6, 6, 1)), ValueError, "x must be 4-D"),
    (dw_call(x=torch.randn(1, 8, 0, 6)), ValueError, "x must have C, H and W >= 1"),
    (dw_call(x=torch.randint(0, 5, (1, 8, 6, 6))), TypeError, "x must be a floating"),
    (dw_call(x=[[1.0]]), TypeError, "x must be a torch.Tensor"),
    (dw_call(x=X.to_sparse()), TypeError, "x must be a dense (strided) tensor, got layout"),
    (dw_call(weight=DW.to_sparse()), TypeError, "weight must be a dense (strided) tensor"),
    (dw_call(x=torch.randn(1, 6, 6, 6)), ValueError, "multiple of the 6 input channels"),
    (dw_call(weight=torch.randn(8, 3, 3)), ValueError, "weight must have shape"),
    (dw_call(weight=torch.randn(8, 2, 3, 3)), ValueError, "weight must have shape"),
    (dw_call(weight=torch.randn(8, 1, 3, 5)), ValueError, "square"),
    (dw_call(weight=DW.double()), TypeError, "weight has dtype torch.float64"),
    (dw_call(weight=DW.to(META)), ValueError, "weight is on meta"),
    (dw_call(scale=torch.ones(8, device=META)), ValueError, "scale is on meta"),
    (dw_call(scale=torch.ones(7)), ValueError, "scale must have shape (8,)"),
    (dw_call(shift=torch.ones(8, dtype=torch.int32)), TypeError, "shift must be a floating"),
    (dw_call(act="gelu"), ValueError, "act must be one of"),
    (dw_call(act="gelu", backend=[]), ValueError, "act must be one of"),
    (dw_call(scale=1.0), TypeError, "scale must be a torch.Tensor, got float"),
    (dw_call(stride=-1), ValueError, "stride must be >= 1"),
    (dw_call(stride=0), ValueError, "stride must be >= 1"),
    (dw_call(stride=1.5), TypeError, "stride must be an int"),
    (dw_call(stride=True), TypeError, "stride must be an int, got bool"),
    (dw_call(padding=False), TypeError, "padding must be an int, got bool"),
    (dw_call(padding=-1), ValueError, "padding must be >= 0"),
    (dw_call(dilation=0), ValueError, "dilation must be >= 1"),
    (dw_call(x=torch.randn(1, 8, 2, 2), padding=0), ValueError, "too small"),
    (dw_call(backend="nope"), ValueError, "unknown backend 'nope'"),
    (dw_call(weight=torch.randn(8, 1, 0, 0)), ValueError, "weight must not be empty"),
    (dw_call(stride=2**40), ValueError, "stride must be >= 1 and < 2**31"),
    (dw_call(padding=2**31), ValueError, "padding must be >= 0 and < 2**31"),
    (dw_call(padding=2**30, dilation=1), ValueError, "(>= 2**31)"),
    (dw_call(dilation=2**33), ValueError, "dilation must be >= 1 and < 2**31"),
    (pw_call(x=torch.randn(1, 8, 6)), ValueError, "x must be 4-D"),
    (pw_call(x=X.to_sparse(2)), TypeError, "x must be a dense (strided) tensor"),
    (pw_call(residual=torch.randn(1, 16, 6, 6).to_sparse()), TypeError,
     "residual must be a dense (strided) tensor"),
    (pw_call(weight=torch.randn(16, 7, 1, 1)), ValueError, "weight must have shape"),
    (pw_call(weight=torch.randn(16, 8, 3, 3)), ValueError, "weight must have shape"),
    (pw_call(weight=PW.half()), TypeError, "weight has dtype"),
    (pw_call(residual=torch.randn(1, 8, 6, 6)), ValueError, "residual must have shape"),
    (pw_call(residual=torch.randn(1, 16, 6, 6, device=META)), ValueError, "residual is on meta"),
    (pw_call(shift=torch.ones(8)), ValueError, "shift must have shape (16,)"),
    (pw_call(act=None), ValueError, "act must be one of"),
    (pw_call(residual=[[1.0]]), TypeError, "residual must be a torch.Tensor, got list"),
    (pw_call(weight=torch.randn(0, 8, 1, 1)), ValueError, "weight must not be empty"),
    (ir_call(x=torch.randn(8, 6, 6)), ValueError, "x must be 4-D"),
    (ir_call(x=X.to_sparse()), TypeError, "x must be a dense (strided) tensor"),
    (ir_call(expand_w=torch.randn(24, 5)), ValueError, "expand_w must have shape"),
    (ir_call(dw_w=torch.randn(16, 1, 3, 3)), ValueError, "dw_w must have shape"),
    (ir_call(dw_w=torch.randn(24, 1, 4, 4)), ValueError, "odd square"),
    (ir_call(project_w=torch.randn(8, 16)), ValueError, "project_w must have shape"),
    (ir_call(dw_scale=torch.ones(8)), ValueError, "dw_scale must have shape (24,)"),
    (ir_call(expand_w=None, expand_shift=None), ValueError, "expand_scale is given"),
    (ir_call(se_w1=torch.randn(6, 24)), ValueError, "all of se_w1"),
    (ir_call(se_w1=torch.randn(6, 24), se_b1=torch.ones(6), se_w2=torch.randn(24, 5),
             se_b2=torch.ones(24)), ValueError, "se_w2 must have shape"),
    (ir_call(stride=0), ValueError, "stride must be >= 1"),
    (ir_call(expand_w=torch.randn(0, 8)), ValueError, "expand_w must not be empty"),
    (ir_call(se_w1=torch.randn(0, 24), se_b1=torch.ones(0), se_w2=torch.randn(24, 0),
             se_b2=torch.ones(24)), ValueError, "se_w1 must not be empty"),
    (ir_call(act="tanh"), ValueError, "act must be one of"),
    (ir_call(se_act="gelu"), ValueError, "se_act must be one of"),
    (ir_call(se_act=None), ValueError, "se_act must be one of"),
    (ir_call(se_gate="relu"), ValueError, "se_gate must be one of ['hardsigmoid', 'sigmoid']"),
    (ir_call(se_w1=torch.randn(6, 24), se_b1=torch.ones(6), se_w2=torch.randn(24, 6),
             se_b2=torch.ones(24), se_gate="tanh"), ValueError, "se_gate must be one of"),
    (ir_call(residual="yes"), TypeError, "residual must be a bool"),
    (ir_call(residual=1), TypeError, "residual must be a bool, got int"),
    (ir_call(project_w=[[1.0]]), TypeError, "project_w must be a torch.Tensor, got list"),
    (ir_call(stride=True), TypeError, "stride must be an int, got bool"),
    (ir_call(project_w=torch.randn(8, 24, device=META)), ValueError, "project_w is on meta"),
]


@pytest.mark.parametrize("call,error,text", CASES, ids=[c[2] for c in CASES])
def test_bad_input_names_the_argument(call, error, text, backend_name):
    # On cpp most of these calls reach the C++ kernel first (dispatch.try_cpp), which must
    # refuse them too, so that the Python checks run and name the argument.
    with fastdw.use_backend(backend_name), pytest.raises(error) as info:
        call()
    assert text in str(info.value)


def test_fold_bn_rejects_non_bn_and_missing_stats():
    with pytest.raises(TypeError, match="bn must be a BatchNorm"):
        ops.fold_bn(torch.nn.Conv2d(3, 3, 1))
    with pytest.raises(ValueError, match="no running statistics"):
        ops.fold_bn(torch.nn.BatchNorm2d(3, track_running_stats=False))
