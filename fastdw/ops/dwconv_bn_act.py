"""fastdw::dwconv_bn_act = act(depthwise_conv2d(x, weight) * scale[c] + shift[c])."""
from typing import Optional

import torch
from torch import Tensor

from fastdw import backend as _backend
from fastdw.contract import conv_output_size, same_padding
from fastdw.ops import checks, dispatch
from fastdw.ops._outputs import as_grad, empty_grad, empty_output


@torch.library.custom_op("fastdw::dwconv_bn_act", mutates_args=())
def _dwconv_bn_act(x: Tensor, weight: Tensor, scale: Tensor, shift: Tensor, stride: int,
                   padding: int, dilation: int, act: str, backend: str) -> Tensor:
    return dispatch.run_kernel(backend, "dwconv_bn_act",
        x, weight, scale, shift, stride, padding, dilation, act)


@_dwconv_bn_act.register_fake
def _(x, weight, scale, shift, stride, padding, dilation, act, backend):
    out = [conv_output_size(s, weight.shape[-1], stride, padding, dilation) for s in x.shape[2:]]
    return empty_output(x, weight.shape[0], *out)


@torch.library.custom_op("fastdw::dwconv_bn_act_backward", mutates_args=())
def _dwconv_bn_act_backward(grad: Tensor, x: Tensor, weight: Tensor, scale: Tensor, shift: Tensor,
                            stride: int, padding: int, dilation: int, act: str,
                            backend: str) -> list[Tensor]:
    """Gradients of (x, weight, scale, shift)."""
    grads = dispatch.run_kernel(backend, "dwconv_bn_act_backward",
        grad, x, weight, scale, shift, stride, padding, dilation, act)
    return [as_grad(g, t) for g, t in zip(grads, (x, weight, scale, shift))]


@_dwconv_bn_act_backward.register_fake
def _(grad, x, weight, scale, shift, stride, padding, dilation, act, backend):
    return [empty_grad(t) for t in (x, weight, scale, shift)]


def _setup_context(ctx, inputs, output):
    ctx.save_for_backward(*inputs[:4])
    ctx.config = inputs[4:]


def _backward(ctx, grad):
    tensors = ctx.saved_tensors
    grads = dispatch.backward(
        "dwconv_bn_act", grad, tensors, (*tensors, *ctx.config[:-1]),
        lambda: torch.ops.fastdw.dwconv_bn_act_backward(grad, *tensors, *ctx.config))
    return (*grads, None, None, None, None, None)


_dwconv_bn_act.register_autograd(_backward, setup_context=_setup_context)


def dwconv_bn_act(x: Tensor, weight: Tensor, scale: Optional[Tensor] = None,
                  shift: Optional[Tensor] = None, *, stride: int = 1,
                  padding: Optional[int] = None, dilation: int = 1, act: str = "relu6",
                  backend: Optional[str] = None) -> Tensor:
    """Depthwise k x k convolution, per-channel affine (folded BatchNorm) and activation, fused.

    x: (N, C, H, W), NCHW or channels_last; the output keeps x's memory format.
    weight: (C*m, 1, k, k) for channel multiplier m; the output has C*m channels.
    scale, shift: (C*m,) or None (meaning 1 and 0). padding defaults to dilation*(k-1)//2.
    act: "none", "relu", "relu6", "hardswish", "hardsigmoid" or "silu".
    backend: a backend name or "auto"; None follows use_backend()/FASTDW_BACKEND.
    """
    if dispatch.cpp_direct("dwconv_bn_act", x, (weight, scale, shift), backend):
        args = cpp_args(x.shape[1], weight, scale, shift, stride=stride, padding=padding,
                        dilation=dilation, act=act)
        out = None if args is None else dispatch.try_cpp("dwconv_bn_act", x, *args)
        if out is not None:
            return out
    x, weight = checks.autocast(x, weight)
    checks.feature_map(x)
    c = x.shape[1]
    checks.like_input(weight, "weight", x, (None, 1, None, None))
    k = weight.shape[-1]
    if weight.shape[-2] != k:
        raise ValueError(f"weight must have a square k x k window, got {tuple(weight.shape)}")
    if weight.shape[0] % c:
        raise ValueError(f"weight has {weight.shape[0]} output channels, not a multiple of the "
                         f"{c} input channels of x (weight must be (C*m, 1, k, k))")
    checks.integer(stride, "stride", 1)
    checks.integer(dilation, "dilation", 1)
    padding = (same_padding(k, dilation) if padding is None
               else checks.integer(padding, "padding", 0))
    checks.activation(act)
    for size in x.shape[2:]:
        checks.conv_output_size(size, k, stride, padding, dilation, "x")
    scale = checks.per_channel(scale, "scale", x, weight.shape[0], 1.0)
    shift = checks.per_channel(shift, "shift", x, weight.shape[0], 0.0)
    return dispatch.run(_dwconv_bn_act, "dwconv_bn_act", (x, weight, scale, shift),
                        (x, weight, scale, shift, stride, padding, dilation, act),
                        _backend.resolve(backend, x.device.type, "dwconv_bn_act"))


def cpp_args(in_channels, weight, scale=None, shift=None, *, stride=1, padding=None,
             dilation=1, act="relu6"):
    """The C++ kernel's arguments after x for a call on inputs of `in_channels` channels, or
    None where the call is not the kernel's (options of other types than the op takes: torch.ops
    would take True for an int; absent vectors; a channel multiplier, which runs on reference).
    The kernel checks everything else itself (dispatch.cpp_direct)."""
    if not (type(stride) is int and type(dilation) is int and type(act) is str
            and (padding is None or type(padding) is int)
            and weight is not None and scale is not None and shift is not None
            and weight.dim() == 4 and weight.shape[0] == in_channels):
        return None
    pad = same_padding(weight.shape[-1], dilation) if padding is None else padding
    return weight, scale, shift, stride, pad, dilation, act
