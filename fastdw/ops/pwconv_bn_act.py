"""fastdw::pwconv_bn_act = act(conv1x1(x, weight) * scale[c] + shift[c]) (+ residual)."""
from typing import Optional

import torch
from torch import Tensor

from fastdw import backend as _backend
from fastdw.ops import checks, dispatch
from fastdw.ops._outputs import as_grad, empty_grad, empty_output


@torch.library.custom_op("fastdw::pwconv_bn_act", mutates_args=())
def _pwconv_bn_act(x: Tensor, weight: Tensor, scale: Tensor, shift: Tensor, act: str,
                   residual: Optional[Tensor], backend: str) -> Tensor:
    return dispatch.run_kernel(backend, "pwconv_bn_act", x, weight, scale, shift, act, residual)


@_pwconv_bn_act.register_fake
def _(x, weight, scale, shift, act, residual, backend):
    return empty_output(x, weight.shape[0], *x.shape[2:])


@torch.library.custom_op("fastdw::pwconv_bn_act_backward", mutates_args=())
def _pwconv_bn_act_backward(grad: Tensor, x: Tensor, weight: Tensor, scale: Tensor,
                            shift: Tensor, act: str, backend: str) -> list[Tensor]:
    """Gradients of (x, weight, scale, shift); the residual's gradient is `grad` itself."""
    grads = dispatch.run_kernel(backend, "pwconv_bn_act_backward", grad, x, weight, scale,
                                 shift, act)
    return [as_grad(g, t) for g, t in zip(grads, (x, weight, scale, shift))]


@_pwconv_bn_act_backward.register_fake
def _(grad, x, weight, scale, shift, act, backend):
    return [empty_grad(t) for t in (x, weight, scale, shift)]


def _setup_context(ctx, inputs, output):
    x, weight, scale, shift, act, residual, backend = inputs
    ctx.save_for_backward(x, weight, scale, shift)
    ctx.act, ctx.backend, ctx.has_residual = act, backend, residual is not None


def _backward(ctx, grad):
    tensors = ctx.saved_tensors
    # The residual's gradient is grad itself, so the composite runs without it.
    grads = dispatch.backward(
        "pwconv_bn_act", grad, tensors, (*tensors, ctx.act, None),
        lambda: torch.ops.fastdw.pwconv_bn_act_backward(grad, *tensors, ctx.act, ctx.backend))
    return (*grads, None, grad if ctx.has_residual else None, None)


_pwconv_bn_act.register_autograd(_backward, setup_context=_setup_context)


def pwconv_bn_act(x: Tensor, weight: Tensor, scale: Optional[Tensor] = None,
                  shift: Optional[Tensor] = None, *, act: str = "none",
                  residual: Optional[Tensor] = None, backend: Optional[str] = None) -> Tensor:
    """1x1 convolution, per-channel affine and activation, then `+ residual`, fused.

    x: (N, C_in, H, W); weight: (C_out, C_in, 1, 1) or (C_out, C_in); scale, shift: (C_out,)
    or None; residual: None or a tensor of the output's shape (N, C_out, H, W).
    """
    if dispatch.cpp_direct("pwconv_bn_act", x, (weight, scale, shift, residual), backend):
        args = cpp_args(x.shape[1], weight, scale, shift, act=act, residual=residual)
        out = None if args is None else dispatch.try_cpp("pwconv_bn_act", x, *args)
        if out is not None:
            return out
    x, weight, residual = checks.autocast(x, weight, residual)
    checks.feature_map(x)
    weight = checks.one_by_one(weight, "weight", x, x.shape[1])
    checks.activation(act)
    c_out = weight.shape[0]
    if residual is not None:
        checks.like_input(residual, "residual", x, (x.shape[0], c_out, *x.shape[2:]))
    scale = checks.per_channel(scale, "scale", x, c_out, 1.0)
    shift = checks.per_channel(shift, "shift", x, c_out, 0.0)
    return dispatch.run(_pwconv_bn_act, "pwconv_bn_act", (x, weight, scale, shift, residual),
                        (x, weight, scale, shift, act, residual),
                        _backend.resolve(backend, x.device.type, "pwconv_bn_act"))


def cpp_args(in_channels, weight, scale=None, shift=None, *, act="none", residual=None):
    """The C++ kernel's arguments after x, or None where the call is not the kernel's (an act
    that is not a str, absent vectors); see dwconv_bn_act.cpp_args. The kernel takes the weight
    2-D or 4-D."""
    if not (type(act) is str and weight is not None and scale is not None
            and shift is not None):
        return None
    return weight, scale, shift, act, residual
