"""fastdw::inverted_residual: a whole MobileNetV2/V3 block in one op.

    h = act(expand_1x1(x) * expand_scale + expand_shift)       (skipped when expand_w is None)
    h = act(depthwise_kxk(h, stride) * dw_scale + dw_shift)     (padding (k-1)//2)
    h = h * hardsigmoid(fc2(relu(fc1(avgpool(h)))))             (only with squeeze-excite weights)
    y = project_1x1(h) * project_scale + project_shift  (+ x when residual)
"""
from typing import Optional

import torch
from torch import Tensor

from fastdw import backend as _backend
from fastdw.ops import _checks, _dispatch
from fastdw.ops._outputs import as_grad, empty_grad, empty_output

# Names of the op's tensor arguments, in schema order (the backward op returns their gradients).
_TENSOR_ARGS = ("x", "expand_w", "expand_scale", "expand_shift", "dw_w", "dw_scale", "dw_shift",
                "project_w", "project_scale", "project_shift", "se_w1", "se_b1", "se_w2", "se_b2")


def _tensor_args(op_args):
    """The tensor arguments out of the op's argument tuple: positions 0-9 and 12-15 (10 and 11
    are stride and act, 16 and 17 residual and backend)."""
    return (*op_args[:10], *op_args[12:16])


@torch.library.custom_op("fastdw::inverted_residual", mutates_args=())
def _inverted_residual(x: Tensor, expand_w: Optional[Tensor], expand_scale: Optional[Tensor],
                       expand_shift: Optional[Tensor], dw_w: Tensor, dw_scale: Tensor,
                       dw_shift: Tensor, project_w: Tensor, project_scale: Tensor,
                       project_shift: Tensor, stride: int, act: str, se_w1: Optional[Tensor],
                       se_b1: Optional[Tensor], se_w2: Optional[Tensor], se_b2: Optional[Tensor],
                       residual: bool, backend: str) -> Tensor:
    return _dispatch.run_kernel(backend, "inverted_residual",
        x, expand_w, expand_scale, expand_shift, dw_w, dw_scale, dw_shift, project_w,
        project_scale, project_shift, stride, act, se_w1, se_b1, se_w2, se_b2, residual)


@_inverted_residual.register_fake
def _(x, expand_w, expand_scale, expand_shift, dw_w, dw_scale, dw_shift, project_w,
      project_scale, project_shift, stride, act, se_w1, se_b1, se_w2, se_b2, residual, backend):
    k = dw_w.shape[-1]
    out = [(s + 2 * ((k - 1) // 2) - k) // stride + 1 for s in x.shape[2:]]
    return empty_output(x, project_w.shape[0], *out)


@torch.library.custom_op("fastdw::inverted_residual_backward", mutates_args=())
def _inverted_residual_backward(
        grad: Tensor, x: Tensor, expand_w: Optional[Tensor], expand_scale: Optional[Tensor],
        expand_shift: Optional[Tensor], dw_w: Tensor, dw_scale: Tensor, dw_shift: Tensor,
        project_w: Tensor, project_scale: Tensor, project_shift: Tensor, stride: int, act: str,
        se_w1: Optional[Tensor], se_b1: Optional[Tensor], se_w2: Optional[Tensor],
        se_b2: Optional[Tensor], residual: bool, backend: str) -> list[Tensor]:
    """Gradients of every tensor argument that is not None, in schema order."""
    grads = _dispatch.run_kernel(backend, "inverted_residual_backward",
        grad, x, expand_w, expand_scale, expand_shift, dw_w, dw_scale, dw_shift, project_w,
        project_scale, project_shift, stride, act, se_w1, se_b1, se_w2, se_b2, residual)
    present = [t for t in (x, expand_w, expand_scale, expand_shift, dw_w, dw_scale, dw_shift,
                           project_w, project_scale, project_shift, se_w1, se_b1, se_w2, se_b2)
               if t is not None]
    return [as_grad(g, t) for g, t in zip(grads, present)]


@_inverted_residual_backward.register_fake
def _(grad, *op_args):
    return [empty_grad(t) for t in _tensor_args(op_args) if t is not None]


def _setup_context(ctx, inputs, output):
    ctx.save_for_backward(*_tensor_args(inputs))
    ctx.config = (inputs[10], inputs[11], inputs[16], inputs[17])  # stride, act, residual, backend


def _backward(ctx, grad):
    t = ctx.saved_tensors
    stride, act, residual, backend = ctx.config
    grads = iter(torch.ops.fastdw.inverted_residual_backward(
        grad, *t[:10], stride, act, *t[10:], residual, backend))
    by_name = {name: next(grads) if tensor is not None else None
               for name, tensor in zip(_TENSOR_ARGS, t)}
    return (*(by_name[n] for n in _TENSOR_ARGS[:10]), None, None,
            *(by_name[n] for n in _TENSOR_ARGS[10:]), None, None)


_inverted_residual.register_autograd(_backward, setup_context=_setup_context)


def inverted_residual(x: Tensor, expand_w: Optional[Tensor], expand_scale: Optional[Tensor],
                      expand_shift: Optional[Tensor], dw_w: Tensor, dw_scale: Optional[Tensor],
                      dw_shift: Optional[Tensor], project_w: Tensor,
                      project_scale: Optional[Tensor], project_shift: Optional[Tensor], *,
                      stride: int = 1, act: str = "relu6", se_w1: Optional[Tensor] = None,
                      se_b1: Optional[Tensor] = None, se_w2: Optional[Tensor] = None,
                      se_b2: Optional[Tensor] = None, residual: bool = True,
                      backend: Optional[str] = None) -> Tensor:
    """A fused inverted-residual block (see the module docstring for the math).

    x: (N, C_in, H, W). expand_w: (hidden, C_in[, 1, 1]) or None for no expansion (hidden =
    C_in). dw_w: (hidden, 1, k, k). project_w: (C_out, hidden[, 1, 1]). Scales/shifts are
    per-channel vectors or None (1 / 0). Squeeze-excite: se_w1 (S, hidden[, 1, 1]), se_b1 (S,),
    se_w2 (hidden, S[, 1, 1]), se_b2 (hidden,), all four or none. `act` is the activation of the
    expand and depthwise stages; `residual` adds x when stride is 1 and C_in == C_out.
    """
    tensors = (x, expand_w, expand_scale, expand_shift, dw_w, dw_scale, dw_shift, project_w,
               project_scale, project_shift)
    se = (se_w1, se_b1, se_w2, se_b2)
    if (type(stride) is int and type(act) is str and type(residual) is bool
            and _dispatch.cpp_first(backend, (*tensors, *se))
            and all(t is not None for t in tensors[4:])
            and (expand_w is None or expand_scale is not None and expand_shift is not None)):
        ew, pw, w1, w2 = (None if w is None else _checks.matrix(w)
                          for w in (expand_w, project_w, se_w1, se_w2))
        # The op drops a residual that cannot be added; the kernel refuses it.
        add = residual and stride == 1 and pw.dim() == 2 and pw.shape[0] == x.shape[1]
        out = _dispatch.try_cpp("inverted_residual", (
            x, ew, expand_scale, expand_shift, dw_w, dw_scale, dw_shift, pw, project_scale,
            project_shift, stride, act, w1, se_b1, w2, se_b2, add))
        if out is not None:
            return out
    x, expand_w, dw_w, project_w, se_w1, se_w2 = _checks.autocast(
        x, expand_w, dw_w, project_w, se_w1, se_w2)
    _checks.feature_map(x)
    c_in = x.shape[1]
    if expand_w is None:
        for name, t in (("expand_scale", expand_scale), ("expand_shift", expand_shift)):
            if t is not None:
                raise ValueError(f"{name} is given but expand_w is None (no expansion)")
        hidden = c_in
    else:
        expand_w = _checks.one_by_one(expand_w, "expand_w", x, c_in)
        hidden = expand_w.shape[0]
        expand_scale = _checks.per_channel(expand_scale, "expand_scale", x, hidden, 1.0)
        expand_shift = _checks.per_channel(expand_shift, "expand_shift", x, hidden, 0.0)
    _checks.like_input(dw_w, "dw_w", x, (hidden, 1, None, None))
    k = dw_w.shape[-1]
    if dw_w.shape[-2] != k or k % 2 == 0:
        raise ValueError(f"dw_w must have an odd square k x k window, got {tuple(dw_w.shape)}")
    dw_scale = _checks.per_channel(dw_scale, "dw_scale", x, hidden, 1.0)
    dw_shift = _checks.per_channel(dw_shift, "dw_shift", x, hidden, 0.0)
    project_w = _checks.one_by_one(project_w, "project_w", x, hidden)
    c_out = project_w.shape[0]
    project_scale = _checks.per_channel(project_scale, "project_scale", x, c_out, 1.0)
    project_shift = _checks.per_channel(project_shift, "project_shift", x, c_out, 0.0)
    _checks.integer(stride, "stride", 1)
    _checks.activation(act)
    for size in x.shape[2:]:
        _checks.conv_output_size(size, k, stride, (k - 1) // 2, 1, "x")
    se = (se_w1, se_b1, se_w2, se_b2)
    if any(t is not None for t in se):
        if any(t is None for t in se):
            raise ValueError("squeeze-excite needs all of se_w1, se_b1, se_w2, se_b2, or none")
        se_w1 = _checks.one_by_one(se_w1, "se_w1", x, hidden)
        squeeze = se_w1.shape[0]
        se_b1 = _checks.per_channel(se_b1, "se_b1", x, squeeze, 0.0)
        se_w2 = _checks.one_by_one(se_w2, "se_w2", x, squeeze)
        _checks.like_input(se_w2, "se_w2", x, (hidden, squeeze))
        se_b2 = _checks.per_channel(se_b2, "se_b2", x, hidden, 0.0)
    if not isinstance(residual, bool):
        raise TypeError(f"residual must be a bool, got {type(residual).__name__}")
    residual = residual and stride == 1 and c_in == c_out
    tensors = (x, expand_w, expand_scale, expand_shift, dw_w, dw_scale, dw_shift, project_w,
               project_scale, project_shift)
    se = (se_w1, se_b1, se_w2, se_b2)
    return _dispatch.call(_inverted_residual, "inverted_residual", (*tensors, *se),
                          (*tensors, stride, act, *se, residual),
                          _backend.resolve(backend, x.device.type))
